"""Reward model = a causal-LM backbone + a linear head read at the last real token.

The model *is* a Hugging Face ``*ForSequenceClassification`` (``score`` head, ``num_labels``
outputs), so it saves with ``save_pretrained`` and loads back with ``load_reward_model`` or
``AutoModelForSequenceClassification``; a LoRA one is the adapter and the trained head, which
PEFT's ``AutoPeftModelForSequenceClassification`` loads given ``num_labels`` and the saved
tokenizer's ``pad_token_id``. A ``distalign_rm.json`` beside the weights records the head
type and the training config.

Where the reward is read. distalign finds the last real token from the attention mask
(``last_token_index``), never by searching for the pad id: SmolLM2 pads with ``<|im_end|>``,
which also closes every chat turn. Hugging Face's own pooling picks "the rightmost token that
is not ``config.pad_token_id``"; a reply closes with ``<|im_end|>`` (and, in SmolLM2's
template, a line break), so with pad == eos a template without that line break would have it
read the token *before* the end of turn, and every turn's ``<|im_end|>`` would count as padding.
We therefore give the reward model a pad token that differs from EOS (SmolLM2:
``<|endoftext|>``, which no chat rendering contains) — then HF's pooling and ours pick the same
token, and a plain ``AutoModelForSequenceClassification`` call on
``apply_chat_template(prompt + [reply])`` gives our scores.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distalign.distributed import full_parameters
from distalign.models.load import (
    _from_pretrained,
    _load_settings,
    _placed,
    adapter_base,
    attention_mask_for,
    is_adapter,
    load_tokenizer,
    resolve_model,
    unwrap,
)

log = logging.getLogger(__name__)

META_FILE = "distalign_rm.json"
# How replies were rendered for training: every token the chat template writes. Reward models
# saved without this key read their score at the reply's end-of-turn token, one token earlier.
REPLY_RENDERING = "chat_template"
HEADS = ("scalar", "categorical", "ordinal", "mixture")


def head_outputs(head: str, n_bins: int, n_components: int = 2) -> int:
    """Outputs of the ``score`` layer: 1 (scalar), n_bins (categorical), 2 (ordinal: location
    and log-scale), n_components (mixture: one reward per component)."""
    sizes = {"scalar": 1, "categorical": n_bins, "ordinal": 2, "mixture": n_components}
    if head not in sizes:
        raise ValueError(f"head must be one of {list(HEADS)}, got {head!r}")
    return sizes[head]


def output_labels(head: str, n_outputs: int) -> dict[int, str]:
    """What each output of the ``score`` layer is, as ``config.id2label`` names it: a model
    loaded by ``AutoModelForSequenceClassification`` or a ``pipeline`` then says what it
    returns (``LABEL_0``, ``LABEL_1`` would read as two classes)."""
    if head == "scalar":
        return {0: "reward"}
    if head == "ordinal":
        return {0: "location", 1: "log_scale"}
    if head == "mixture":
        return {i: f"reward_component_{i}" for i in range(n_outputs)}
    return {i: f"score_bin_{i + 1}_logit" for i in range(n_outputs)}  # categorical


def distinct_pad_token(tokenizer) -> str:
    """A pad token different from EOS that chat renderings never contain; added if needed."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer.pad_token
    from jinja2.exceptions import TemplateError

    turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    try:  # every kind of turn the template writes, where it takes them
        rendered = tokenizer.apply_chat_template(
            [{"role": "system", "content": "s"}, *turn, *turn], tokenize=False
        )
    except TemplateError:  # plain text: one turn
        rendered = tokenizer.apply_chat_template(turn, tokenize=False)
    named = (tokenizer.unk_token, "<|endoftext|>", "<|finetune_right_pad_id|>", "<|padding|>")
    # then any other special token of the vocabulary (a base model's unused chat markers):
    # adding a token would grow the embedding past what the base model's own loaders expect
    for candidate in (*named, *tokenizer.all_special_tokens):
        if (
            candidate
            and candidate not in (tokenizer.eos_token, tokenizer.bos_token)
            and candidate in tokenizer.get_vocab()
            and candidate not in rendered
        ):
            return candidate
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return "<|pad|>"


def build_reward_model(
    backbone: str,
    head: str = "scalar",
    n_bins: int = 10,
    n_components: int = 2,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    revision: str | None = None,
    init_kwargs: dict | None = None,
    chat_template: str | None = None,
):
    """A reward model to train on a backbone (alias, folder or hub id) + its tokenizer, on the
    CPU (the training loop places it). ``revision`` (a hub model's branch, tag or commit) and
    ``init_kwargs`` go to ``from_pretrained``; ``chat_template`` replaces the tokenizer's
    (``models.load.read_chat_template``).

    The head: a causal LM gets a new one, small so that the first rewards are near 0. A reward
    model as the backbone keeps its head when it is of the asked kind and size (training
    goes on from it). A scalar reward model under ``head="mixture"`` warm-starts the mixture:
    each component begins at its scalar head, plus noise of 0.1 × the head's RMS so that the
    components can part; this is the one-component fit the mixture likelihood then improves
    on. Any other head is replaced by a new one (logged)."""
    _, kwargs = _load_settings(
        None, dtype, attn_implementation, trust_remote_code, revision, init_kwargs
    )
    path = resolve_model(backbone)
    folder = Path(path)
    if is_adapter(folder):
        from distalign.config import ConfigError  # a user's to fix: said without a traceback

        raise ConfigError(
            f"{path} is a LoRA adapter: train from its base model, or merge it first "
            "(load_reward_model(path)[0].merge_and_unload().save_pretrained(folder), with the "
            "tokenizer and distalign_rm.json beside it) and train from that folder"
        )
    tokenizer = load_tokenizer(backbone, trust_remote_code=trust_remote_code, revision=revision,
                               chat_template=chat_template)  # fmt: skip
    tokenizer.pad_token = distinct_pad_token(tokenizer)
    saved = saved_head(path)
    model = _from_pretrained(
        AutoModelForSequenceClassification,
        path,
        new_weights=("score.",),
        num_labels=head_outputs(head, n_bins, n_components),
        ignore_mismatched_sizes=True,  # a reward model's head of another size: handled below
        **kwargs,
    )
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    score = unwrap(model).score
    weight = score.weight
    saved_kind = None
    if saved is not None:  # a plain Hugging Face reward model with 1 label is a scalar one
        meta = Path(path) / META_FILE
        plain = "scalar" if saved.shape[0] == 1 else f"{saved.shape[0]}-output"
        saved_kind = read_meta(path).get("head", plain) if meta.is_file() else plain
    # under DeepSpeed ZeRO-3 from_pretrained loads the weights in shards: the head is gathered
    with torch.no_grad(), full_parameters(score, modify=True):
        if saved_kind == head and saved.shape == weight.shape:
            weight.copy_(saved)
            log.info("%s: training goes on from its %s head", path, head)
        elif head == "mixture" and saved_kind == "scalar" and saved.shape[0] == 1:
            weight.copy_(components_from_scalar(saved[0].to(weight.dtype), len(weight)))
            log.info("%s: %d mixture components start from its scalar head", path, len(weight))
        else:
            if saved is not None:
                log.info("%s: its %s head is replaced by a new %s head", path, saved_kind, head)
            weight.normal_(0.0, 1.0 / (model.config.hidden_size + 1) ** 0.5)
    return model, tokenizer


def components_from_scalar(head: torch.Tensor, k: int) -> torch.Tensor:
    """K mixture components (K, H) warm-started from a scalar reward head (H,): each is the
    head plus Gaussian noise of 0.1 × the head's RMS (torch's global generator), so the
    components begin at the one-component fit and can part."""
    noise = torch.randn(k, head.numel(), dtype=head.dtype, device=head.device)
    return head + noise * 0.1 * head.pow(2).mean().sqrt()


def saved_head(path: str | Path) -> torch.Tensor | None:
    """The ``score.weight`` of a sequence-classification checkpoint (a folder or a hub id; one
    safetensors file or an index of shards), or None when it has none (a causal LM)."""
    from safetensors import safe_open
    from transformers.utils import cached_file

    def find(name: str) -> str | None:
        try:
            return cached_file(
                str(path),
                name,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except OSError:  # not a folder nor a valid hub id: loading the model says so
            return None

    index = find("model.safetensors.index.json")
    if index:
        shard = json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].get(
            "score.weight"
        )
        file = find(shard) if shard else None
    else:
        file = find("model.safetensors")
    if not file:
        return None
    with safe_open(str(file), framework="pt") as f:
        names = f.keys()
        return f.get_tensor("score.weight") if "score.weight" in names else None


class PairScorer(torch.nn.Module):
    """The reward model with pair scoring as its ``forward``.

    Our pooling calls the backbone and head directly; wrapped in this module, that call *is*
    a forward, so DDP/FSDP (gradient all-reduce hooks) and accelerate's autocast (mixed
    precision) apply to it. Train ``PairScorer(model)``; save ``model``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def wrapped(self):
        """The reward model inside (what ``models.load.unwrap`` looks through)."""
        return self.model

    @property
    def config(self):
        """The reward model's: accelerate fills a DeepSpeed config's size-dependent "auto"
        values (ZeRO's bucket sizes) from the prepared model's ``config.hidden_size``."""
        return self.model.config

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return _pair_scores(self.model, batch)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row of a (B, T) mask, left or right padded -> (B,)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.bool()).argmax(-1)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Head outputs at the last real token of each row: (B, T) -> (B, num_labels)."""
    inner = unwrap(model)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = last_token_index(attention_mask)  # (B,)
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    # the head sees only the picked states: no (B, T, num_labels) tensor
    return inner.score(picked.to(inner.score.weight.dtype))


def shared_pair_scores(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected head outputs from prefix-shared rows (see ``SharedPrefixCollator``).

    ``batch``: ``input_ids`` (R, T), ``attention_mask`` (R, 1, T, T) bool, ``position_ids``
    (R, T), ``chosen_index`` and ``rejected_index`` (N,) flat indices into R·T.
    Returns two (N, num_labels) tensors.
    """
    inner = unwrap(model)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(
        input_ids=batch["input_ids"],
        attention_mask=attention_mask_for(inner, batch["attention_mask"], batch["position_ids"]),
        position_ids=batch["position_ids"],
    ).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])  # (R·T, H)
    picked = flat[torch.cat([batch["chosen_index"], batch["rejected_index"]])]  # (2N, H)
    scores = inner.score(picked.to(inner.score.weight.dtype))
    n = batch["chosen_index"].shape[0]
    return scores[:n], scores[n:]


def pair_scores(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected outputs (N, num_labels) for a batch from either collator.

    ``model``: a reward model, or a (DDP-wrapped) ``PairScorer``, called through its forward.
    """
    inner = model.module if hasattr(model, "module") else model
    if isinstance(inner, PairScorer):
        return model(batch)
    return _pair_scores(model, batch)


def _pair_scores(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if batch["attention_mask"].dim() == 4:
        return shared_pair_scores(model, batch)
    scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
    n = scores.shape[0] // 2  # PairCollator: the N chosen rows, then the N rejected rows
    return scores[:n], scores[n:]


def save_reward_model(
    model, tokenizer, out_dir: str | Path, meta: dict[str, Any], state_dict=None
) -> Path:
    """``save_pretrained`` of weights (or LoRA adapter) and tokenizer, plus the metadata file;
    ``state_dict``: the weights gathered from a sharded model (``distalign.distributed``)."""
    out = Path(out_dir)
    model_marks = ("config.json", "adapter_config.json", META_FILE)
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in model_marks):
        raise FileExistsError(f"{out} holds files that are not a model's: not replaced")
    from distalign.checkpoint import swap_in

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # of a save that was killed
    tmp.mkdir()  # whole or nothing: written aside, then swapped in (the umask's mode)
    try:
        name_outputs(model, meta.get("head", "scalar"))
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / META_FILE).write_text(reward_meta_text(meta), encoding="utf-8")
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def reward_meta_text(meta: dict[str, Any]) -> str:
    """The text of ``META_FILE``: what a distalign reward model is (head, bins, lengths)."""
    return json.dumps({**meta, "reply_rendering": REPLY_RENDERING}, indent=2, default=str) + "\n"


def name_outputs(model, head: str) -> None:
    """Name the ``score`` layer's outputs in the model's config (``output_labels``), on the
    base model of a PEFT one too (its ``config.json`` is what a merged model saves)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    labels = output_labels(head, config.num_labels)
    config.id2label = labels
    config.label2id = {v: k for k, v in labels.items()}


def read_meta(path: str | Path) -> dict[str, Any]:
    file = Path(path) / META_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a distalign reward model (no {META_FILE})")
    return json.loads(file.read_text())


def load_reward_model(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
):
    """(model, tokenizer, meta) from a folder written by ``save_reward_model``, in eval mode.

    ``device`` and ``dtype`` as ``resolve_device_dtype`` reads them; ``device=None`` leaves
    the model on the CPU."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("reply_rendering") != REPLY_RENDERING:
        log.warning(
            "%s was trained with its score read at the reply's end-of-turn token; replies now "
            "keep every token the chat template writes, so its scores come one token later "
            "and shift a little (retrain it to remove the shift)",
            path,
        )
    place, kwargs = _load_settings(device, dtype, attn_implementation, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if (path / "adapter_config.json").is_file():
        # LoRA: the base model with a head of the right size, then the adapter (and the
        # trained head, saved with it) on top: what PEFT's users do by hand.
        from peft import PeftModel

        base = adapter_base(
            AutoModelForSequenceClassification,
            json.loads((path / "adapter_config.json").read_text()),
            kwargs,
            new_weights=("score.",),  # the adapter brings the trained head
            num_labels=head_outputs(
                meta["head"], meta.get("n_bins", 10), meta.get("n_components", 2)
            ),
            # a base that is itself a reward model may have another head size (a mixture
            # warm-started from a scalar one); the adapter's head replaces it either way
            ignore_mismatched_sizes=True,
        )
        if len(tokenizer) > base.get_input_embeddings().num_embeddings:
            base.resize_token_embeddings(len(tokenizer))  # the pad token training added
        base.config.pad_token_id = tokenizer.pad_token_id  # after: an embedding checks it
        model = PeftModel.from_pretrained(base, path)
    else:
        model = _from_pretrained(AutoModelForSequenceClassification, path, **kwargs)
    model.eval()
    return _placed(model, place), tokenizer, meta


@torch.no_grad()
def scored_tokens(
    tokenizer, prompt: list[dict[str, str]], reply: str, max_length: int,
    max_prompt_length: int | None = None, template_kwargs: dict | None = None,
) -> tuple[list[int], list[int]]:  # fmt: skip
    """(prompt ids, reply ids) as a reward model reads one reply, fitted to ``max_length``
    by the rule it was trained with (``data.pairs.fit_replies``): rendered by the chat
    template, the oldest turns dropped first, then the prompt cut from the left to
    ``max_prompt_length`` (default half of ``max_length``) and the reply to what is left."""
    from distalign.data.pairs import fit_replies

    p, (r,), _ = fit_replies(
        tokenizer, prompt, [reply], max_length, max_prompt_length, template_kwargs
    )
    return p, r


def score_replies(
    model,
    tokenizer,
    prompts: list[list[dict[str, str]]],
    replies: list[str],
    max_length: int = 512,
    max_prompt_length: int | None = None,
    batch_size: int = 16,
    template_kwargs: dict | None = None,
) -> torch.Tensor:
    """Head outputs (N, num_labels) for chat prompts and reply texts, in length-sorted batches.

    Text is rendered with the reward model's own tokenizer, so a policy with another
    tokenizer is scored correctly (decode, then re-encode here).
    """
    from distalign.data.pairs import pad_sequences

    seqs = []
    for prompt, reply in zip(prompts, replies, strict=True):
        p, r = scored_tokens(
            tokenizer, prompt, reply, max_length, max_prompt_length, template_kwargs
        )
        seqs.append(p + r)
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [None] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_sequences([seqs[i] for i in idx], tokenizer.pad_token_id)
        scores = sequence_scores(
            model, batch["input_ids"].to(device), batch["attention_mask"].to(device)
        )
        for i, s in zip(idx, scores.float().cpu(), strict=True):
            out[i] = s
    return torch.stack(out) if out else torch.zeros(0, 1)
