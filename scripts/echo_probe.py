"""Does a backbone read how well a reply fits its prompt better when it reads the prompt again?

    python scripts/echo_probe.py --model smollm2-135m-instruct --out runs/full/echo_base
    python scripts/pooling_probe.py fit runs/full/echo_base \\
        --out docs/results/level2/echo_probe_base.json

A causal model's prompt tokens never see the reply: only the reply's own tokens can compare
the two, and relevance (the judge's most weighted attribute, the one whose reading costs the
reward models most: "More labels, or better reading?" in ``docs/results/README.md``) is such a
comparison. Repeating the input after itself lets every token of the repeat attend to all of
it ("echo embeddings", Springer et al. 2024, arXiv 2402.15449). Here the prompt's text comes
again as a new user turn after the reply, ``<|im_start|>user\\n PROMPT <|im_end|>\\n``, and the
backbone is read on that repeat. One forward pass per reply gives, in ``pooling_probe.py
extract``'s format (``fit`` and ``attribute_probe.py`` read them):

- ``last``: the reply's last token, final layer (what a reward model's head sees; the repeat
  comes after it, so a causal model computes it exactly as without the repeat);
- ``echo_last``: the repeat's last token, final layer;
- ``echo_mean_mid`` / ``echo_mean``: the mean over the repeat's tokens, middle / final layer;
- ``last_and_echo_last``, ``last_and_echo_mean_mid``: ``last`` beside each;
- ``last_and_mean_mid``: ``last`` beside the reply's mean at the middle layer, the best
  reading of ``pooling_probe.py`` (its reference, recomputed here);
- ``last_mean_mid_echo_mean_mid``: the three vectors.

``fit`` then trains a linear Bradley–Terry head on each reading from the 2,400 training labels
and compares each with ``last`` on the 800 test pairs, against the truth.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from pooling_probe import (  # scripts/, beside this one
    backbone_of,
    benchmark_replies,
    hidden_states,
    save_readings,
)


def echo_ids(tokenizer, text: str) -> list[int]:
    """The prompt's text again, as a new user turn of the chat (SmolLM2's ChatML)."""
    return tokenizer.encode(f"<|im_start|>user\n{text}<|im_end|>\n", add_special_tokens=False)


@torch.no_grad()
def readings(backbone, tokenizer, prompts, replies, max_length, max_prompt_length, batch_size=8):
    from distalign.models.reward_model import scored_tokens

    seqs, bounds = [], []
    for text, reply in zip(prompts, replies, strict=True):
        p, r = scored_tokens(
            tokenizer, [{"role": "user", "content": text}], reply, max_length, max_prompt_length
        )
        e = echo_ids(tokenizer, text)[: max_prompt_length or max_length // 2]
        seqs.append(p + r + e)
        bounds.append((len(p), len(p) + len(r)))
    mid = backbone.config.num_hidden_layers // 2
    keys = ("last", "echo_last", "echo_mean", "echo_mean_mid", "mean_reply_mid")
    out = {k: [None] * len(seqs) for k in keys}
    for idx, hs in hidden_states(backbone, tokenizer.pad_token_id, seqs, batch_size):
        for row, i in enumerate(idx):  # right padding: real tokens 0 .. n-1
            p, end = bounds[i]
            n = len(seqs[i])
            out["last"][i] = hs[-1][row, end - 1]
            out["mean_reply_mid"][i] = hs[mid][row, p:end].mean(0)
            out["echo_last"][i] = hs[-1][row, n - 1]
            out["echo_mean"][i] = hs[-1][row, end:n].mean(0)
            out["echo_mean_mid"][i] = hs[mid][row, end:n].mean(0)
    feats = {k: torch.stack(v).float().numpy() for k, v in out.items()}
    both = {
        "last_and_echo_last": ("last", "echo_last"),
        "last_and_echo_mean_mid": ("last", "echo_mean_mid"),
        "last_and_mean_mid": ("last", "mean_reply_mid"),
        "last_mean_mid_echo_mean_mid": ("last", "mean_reply_mid", "echo_mean_mid"),
    }
    for name, parts in both.items():
        feats[name] = np.concatenate([feats[k] for k in parts], 1)
    del feats["mean_reply_mid"]  # alone it is pooling_probe's reading, not this question
    return feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", type=Path, required=True, help="folder for the .npz files")
    args = ap.parse_args()
    backbone, tokenizer, max_length, max_prompt_length = backbone_of(args.model)
    backbone.eval()
    prompts, replies = benchmark_replies()
    t0 = time.perf_counter()
    feats = readings(
        backbone, tokenizer, [prompts[r["prompt_id"]] for r in replies],
        [r["text"] for r in replies], max_length, max_prompt_length,
    )  # fmt: skip
    save_readings(args.out, feats, replies, args.model)
    print(f"{len(replies)} replies, {time.perf_counter() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
