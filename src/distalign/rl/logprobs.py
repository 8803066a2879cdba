"""Log-probabilities of sampled reply tokens, in one teacher-forced pass, memory-lean.

The k replies of a prompt share the prompt's computation (``build_shared_rows``: one row
``prompt + y_1 + … + y_k`` with a block mask), and the LM head is applied only where a reply
token is predicted, in chunks: a (B, T, V) fp32 log-softmax is never materialised (for
SmolLM2, V = 49,152: 32 replies × 256 tokens would be 1.6 GB per copy).

Some models change the head's logits inside their forward: Gemma 2 caps them (tanh), Cohere,
Granite, HyperCLOVA X or MiniCPM3 scale them. The sampler reads the forward's logits, so the
teacher-forced pass must too: ``logit_transform`` finds the model's transform once, by
comparing the two on a fixed input, and falls back to the forward's own logits (all positions
at once, more memory) when it recognises none.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch

from distalign.data.pairs import build_shared_rows
from distalign.distributed import sharding
from distalign.models.load import attention_mask_for, recurrent_layer_types, unwrap

CHUNK_TOKENS = 512  # rows of logits materialised at once: 512 × 49,152 fp32 ≈ 100 MB

# config keys (of the model's config or its text_config) through which transformers' causal-LM
# forwards cap or scale the head's logits; a scale is tried as a factor and as a divisor
# (Granite divides by logits_scaling, HyperCLOVA X multiplies)
SOFTCAP_KEYS = ("final_logit_softcapping",)
SCALE_KEYS = ("logit_scale", "logits_scaling", "lm_head_multiplier")
PROBE_TOKENS = 16
_TRANSFORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _softcap(cap: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.tanh(x / cap) * cap


def _candidates(config):
    """(name, transform) pairs the model's forward may apply to head(h), identity first."""
    yield "none", _identity
    text = getattr(config, "text_config", None)
    for c in [config] if text is None or text is config else [config, text]:
        for key in SOFTCAP_KEYS:
            v = getattr(c, key, None)
            if isinstance(v, int | float) and v > 0:
                yield f"{key} soft cap {v}", _softcap(float(v))
        for key in SCALE_KEYS:
            v = getattr(c, key, None)
            if isinstance(v, int | float) and v not in (0, 1):
                yield f"× {key} {v}", lambda x, v=v: x * v
                yield f"÷ {key} {v}", lambda x, v=v: x / v


@torch.no_grad()
def logit_transform(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What ``model``'s forward does to its head's logits: a function of head(h), or None when
    no known transform reproduces the forward (then ``reply_logprobs`` reads the forward's own
    logits).

    Found once per model by comparing ``head(backbone(x))`` with ``model(x).logits`` on a fixed
    16-token input (ids spread over the vocabulary) in eval mode, over candidates from the
    config (``SOFTCAP_KEYS``, ``SCALE_KEYS``) and none: the candidate nearest the forward, if it
    agrees to a few units of the logits' rounding (float32: 1e-5 of the largest logit; TF32
    matmuls: 0.2 %; bfloat16: 2 %).
    """
    inner = unwrap(model)
    if inner in _TRANSFORMS:
        return _TRANSFORMS[inner][1]
    vocab = inner.config.get_text_config().vocab_size
    device = next(model.parameters()).device  # (sharded weights may read as empty outside a pass)
    ids = (torch.arange(1, PROBE_TOKENS + 1, device=device) * (vocab // (PROBE_TOKENS + 1)))[None]
    with eval_mode(inner):
        hidden = getattr(inner, inner.base_model_prefix)(input_ids=ids).last_hidden_state
        base = inner.get_output_embeddings()(hidden)
        want = inner(input_ids=ids).logits.float()
    scale = want.abs().max().clamp_min(1e-6)
    tf32 = torch.get_float32_matmul_precision() != "highest" or (
        device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    )
    eps = 2.0**-10 if base.dtype == torch.float32 and tf32 else torch.finfo(base.dtype).eps
    tol = max(64 * torch.finfo(torch.float32).eps, 2 * eps)
    errors = [
        (((f(base).float() - want).abs().max() / scale).item(), name, f)
        for name, f in _candidates(inner.config)
    ]
    error, name, f = min(errors, key=lambda e: e[0])  # the first of equals: none before a cap
    found = (name, f) if error <= tol else ("unrecognised", None)
    if found[1] is None:
        warnings.warn(
            f"{type(inner).__name__}'s forward changes its head's logits in a way distalign does "
            "not recognise: teacher-forced log-probs read the forward's own logits for every "
            "position (more memory)",
            stacklevel=2,
        )
    _TRANSFORMS[inner] = found
    return found[1]


def gather_logprobs(
    hidden: torch.Tensor,
    head,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = CHUNK_TOKENS,
    transform: Callable[[torch.Tensor], torch.Tensor] = _identity,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(transform(head(h)) / T)[token] for N hidden states, chunk by chunk.

    Args:
        hidden: (N, H) states that predict ``tokens`` (N,).
        head: the LM head (H -> V).
        transform: what the model's forward does to the head's logits (``logit_transform``).
        entropy_grad: the entropies with their gradient (an entropy bonus), which keeps each
            chunk's softmax (n, V) for the backward pass besides what the log-probs keep.
    Returns:
        (log-probs (N,) with grad, entropies (N,), detached unless ``entropy_grad``).
    """
    logps, ents = [], []
    for s in range(0, hidden.shape[0], chunk):
        logits = transform(head(hidden[s : s + chunk])).float() / temperature  # (n, V), a chunk
        lse = torch.logsumexp(logits, dim=-1)
        logps.append(logits.gather(-1, tokens[s : s + chunk, None]).squeeze(-1) - lse)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            # H = log Σ e^z − Σ softmax(z)·z
            ents.append(lse - (torch.softmax(logits, -1) * logits).sum(-1))
    if not logps:
        return hidden.new_zeros(0), hidden.new_zeros(0)
    return torch.cat(logps), torch.cat(ents)


def reply_logprobs(
    model,
    prompt_ids: Sequence[Sequence[int]],
    replies: Sequence[Sequence[Sequence[int]]],
    pad_token_id: int,
    temperature: float = 1.0,
    prefix_sharing: bool = True,
    chunk: int = CHUNK_TOKENS,
    entropy_grad: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per reply: log π(y_t | x, y_<t) (L,) and the policy entropy at each step (L,), with
    its gradient where ``entropy_grad`` (``gather_logprobs``).

    Args:
        prompt_ids: per prompt, its token ids.
        replies: per prompt, its replies' token ids (each non-empty).
        prefix_sharing: one row per prompt with all its replies (exact); else one row per reply
            (always so for a model with recurrent layers, ``recurrent_layer_types``).
    Returns:
        lists over all replies (prompt-major) of (L_i,) log-probs (with grad) and entropies.
    """
    inner = unwrap(model)  # the LM inside DDP / PEFT: its body and head are called apart
    prefix_sharing = prefix_sharing and not recurrent_layer_types(inner)
    if prefix_sharing:
        groups = [(p, rs) for p, rs in zip(prompt_ids, replies, strict=True)]
    else:
        groups = [(p, [r]) for p, rs in zip(prompt_ids, replies, strict=True) for r in rs]
    rows = build_shared_rows(groups, pad_token_id)
    n_replies = sum(len(rs) for _, rs in groups)
    # ZeRO-3 fetches the head's weights at each call of it, a collective: the head is called
    # once per forward, as the model's own forward does, where a chunk count would differ
    # between processes
    transform = None if sharding(inner) == "zero3" else logit_transform(inner)
    device = next(model.parameters()).device
    position_ids = rows["position_ids"].to(device)
    inputs = dict(
        input_ids=rows["input_ids"].to(device),
        attention_mask=attention_mask_for(
            inner, rows["attention_mask"].to(device), position_ids, shared=len(groups) < n_replies
        ),
        position_ids=position_ids,
    )
    if transform is None:  # the forward's own logits, (R, T, V) at once
        head, transform, hidden = torch.nn.Identity(), _identity, inner(**inputs).logits
    else:
        head = inner.get_output_embeddings()
        hidden = getattr(inner, inner.base_model_prefix)(**inputs).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])  # (R·T, H), or (R·T, V) logits
    ids = rows["input_ids"].reshape(-1)
    # token t of a reply is predicted by the state before it: the prompt's last token for t = 0
    prompt_of_reply = torch.repeat_interleave(
        rows["prompt_last"], torch.tensor([len(rs) if prefix_sharing else 1 for _, rs in groups])
    )
    pred, target, lengths = [], [], rows["reply_length"].tolist()
    for start, n, p_last in zip(
        rows["reply_start"].tolist(), lengths, prompt_of_reply.tolist(), strict=True
    ):
        pred += [p_last, *range(start, start + n - 1)]
        target += range(start, start + n)
    pred_t = torch.tensor(pred, device=device)
    logp, ent = gather_logprobs(
        flat[pred_t],
        head,
        ids[torch.tensor(target)].to(device),
        temperature,
        chunk,
        transform,
        entropy_grad,
    )
    return list(logp.split(lengths)), list(ent.split(lengths))


class ReplyLogprobs(torch.nn.Module):
    """The policy with ``reply_logprobs`` as its forward, so DDP/FSDP gradient hooks and
    accelerate's autocast apply to the teacher-forced pass. Train this; sample and save
    ``.policy``."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    @property
    def wrapped(self):
        """The policy inside (what ``models.load.unwrap`` looks through)."""
        return self.policy

    @property
    def config(self):
        """The policy's: accelerate fills a DeepSpeed config's size-dependent "auto" values
        (ZeRO's bucket sizes) from the prepared model's ``config.hidden_size``."""
        return self.policy.config

    def forward(self, prompt_ids, replies, pad_token_id, temperature=1.0, prefix_sharing=True,
                entropy_grad=False):  # fmt: skip
        return reply_logprobs(
            self.policy,
            prompt_ids,
            replies,
            pad_token_id,
            temperature,
            prefix_sharing,
            entropy_grad=entropy_grad,
        )


@contextmanager
def eval_mode(model):
    """``model`` in eval mode inside (dropout off), each submodule's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def reference_mode(model, ref_model=None):
    """The frozen SFT policy: a separate reference model, or (LoRA) the same model with its
    adapters disabled — no second copy of the weights. In eval mode either way: with dropout
    on (the policy is in train mode between steps), reference log-probs would be a fresh random
    function on every call, not the SFT policy's."""
    if ref_model is not None:
        with eval_mode(ref_model):
            yield ref_model
        return
    inner = model.module if hasattr(model, "module") else model
    if not hasattr(inner, "disable_adapter"):
        raise ValueError("no reference model given and the policy has no adapters to disable")
    with inner.disable_adapter(), eval_mode(model):
        yield model


def pad_reply_tensors(values: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (L_i,) tensors -> right-padded (B, T) values and (B, T) float mask."""
    width = max((v.numel() for v in values), default=0)
    out = values[0].new_zeros((len(values), width)) if values else torch.zeros(0, 0)
    mask = torch.zeros((len(values), width), device=out.device)
    for i, v in enumerate(values):
        out[i, : v.numel()] = v
        mask[i, : v.numel()] = 1
    return out, mask
