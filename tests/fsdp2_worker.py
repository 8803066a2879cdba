"""Run by ``tests/test_distributed.py`` in two CPU processes (torchrun, gloo): a tiny Llama
(and a LoRA one) sharded with FSDP2 against the same model unsharded."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from distalign.checkpoint import load_checkpoint, save_checkpoint
from distalign.distributed import (
    full_optimizer_state,
    full_parameters,
    full_state_dict,
    sharding,
)
from distalign.models.generate import SamplingConfig, sample_token_ids
from distalign.models.lora import add_lora


class Wrapper(torch.nn.Module):  # as the training loops wrap the policy (``policy.`` keys)
    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, ids):
        return self.policy(input_ids=ids).logits


def build(model_dir: str, lora: bool, mesh=None):
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    if lora:
        policy = add_lora(policy, "CAUSAL_LM", 4, 8, 0.0)
    wrapper = Wrapper(policy)
    if mesh is not None:
        for layer in policy.get_base_model().model.layers if lora else policy.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(wrapper, mesh=mesh)
    trainable = [p for p in wrapper.parameters() if p.requires_grad]
    return wrapper, torch.optim.AdamW(trainable, lr=1e-2)


def train_step(wrapper, optimizer, ids):
    wrapper(ids).float().logsumexp(-1).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def main(model_dir: str, out: str, lora: bool) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    sharded, opt = build(model_dir, lora, mesh)
    plain, plain_opt = build(model_dir, lora)
    assert sharding(sharded) == "fsdp2" and sharding(plain) == "none"
    ids = torch.randint(3, 100, (2, 6), generator=torch.Generator().manual_seed(1))
    train_step(sharded, opt, ids)  # the same update on both (same data on every rank: the
    train_step(plain, plain_opt, ids)  # sharded gradient is the mean of equal ones)

    # sampling: every rank a different number of prompts and replies of different lengths,
    # which would hang if each forward still all-gathered
    cfg = SamplingConfig(max_completion_length=5 + 3 * rank, temperature=1.0, seed=7)
    prompts = [[5, 6, 7], [8, 9]][: rank + 1]
    with full_parameters(sharded):
        got = sample_token_ids(sharded.policy, prompts, 2, cfg, [2], 0)
    want = sample_token_ids(plain.policy, prompts, 2, cfg, [2], 0)
    assert got[0] == want[0], (got[0], want[0])
    assert all(isinstance(p, torch.distributed.tensor.DTensor) for p in sharded.parameters())

    # saving: the whole weights, on rank 0, as the unsharded model would save them
    weights = full_state_dict(sharded, "policy.")
    optim = full_optimizer_state(sharded.policy, opt)
    if rank == 0:
        mine = plain.policy.state_dict()
        assert set(weights) == set(mine), set(weights) ^ set(mine)
        for k, v in mine.items():
            torch.testing.assert_close(weights[k], v, msg=k)
        save_checkpoint(Path(out), plain.policy, None, None, None, {"step": 1}, weights, optim)
    dist.barrier()

    # resume: a fresh sharded model loads the checkpoint and goes on exactly as before
    again, again_opt = build(model_dir, lora, mesh)
    load_checkpoint(out, again.policy, again_opt)
    train_step(sharded, opt, ids)
    train_step(again, again_opt, ids)
    a, b = full_state_dict(sharded, "policy."), full_state_dict(again, "policy.")
    if rank == 0:
        for k in a:
            torch.testing.assert_close(a[k], b[k], msg=k)
        print("FSDP2 OK", "lora" if lora else "full", flush=True)
    dist.barrier()  # neither process leaves while the other still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "lora")
