"""Any one-label sequence classifier as a reward model, whoever trained it (TRL's
RewardTrainer, a hub model, ``AutoModelForSequenceClassification.save_pretrained``): fetched
from the hub with safetensors weights only, loaded with its own tokenizer, and read through
its own chat template and forward, so replies written with another tokenizer score as the
model was trained to read them. ``rl.rewards.RewardModelSource`` uses it for every reward
model without ``distalign_rm.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distalign.data.formats import Reply, reply_messages
from distalign.models.templates import bos_ids, built_in_template, rendering_of

# files a reward model needs from the hub: weights as safetensors only (never a pickle)
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.vocab", "*.jinja", "*.tiktoken"]


class NotARewardModelError(ValueError):
    """A folder that holds a model, but not one a reward can be read from: the user's to fix
    (said in one line by the command line)."""


def model_folder(spec: str, trust_remote_code: bool = False) -> Path:
    """A local folder as is; a hub id downloaded (config, tokenizer, safetensors weights)."""
    from distalign.config import ConfigError  # a user's to fix: said without a traceback

    folder = Path(spec).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file() and (folder / "final").is_dir():
        folder = folder / "final"  # a training run's output_dir: its final model
    if folder.is_dir():
        if (
            not (folder / "config.json").is_file()
            and not (folder / "adapter_config.json").is_file()
        ):
            raise ConfigError(f"reward folder {spec!r} holds no model (no config.json)")
        return folder
    if folder.is_file():
        raise ConfigError(f"reward folder {spec!r} is a file: give the reward model's folder")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not a hub id
        raise ConfigError(f"reward folder {spec!r} does not exist")
    from huggingface_hub import snapshot_download

    from distalign.hub import not_downloadable, offline_if_unreachable

    patterns = HUB_FILES + (["*.py"] if trust_remote_code else [])
    why = offline_if_unreachable()
    try:
        return Path(snapshot_download(spec, allow_patterns=patterns))
    except Exception as e:  # not a repo id, not found, offline: all mean "no such model"
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        if why and isinstance(e, LocalEntryNotFoundError | OfflineModeIsEnabled):
            # huggingface_hub's own message would say to leave offline mode
            raise ConfigError(
                f"reward {spec!r} is not a folder or module:function, and {not_downloadable(why)}"
            ) from None
        raise ConfigError(
            f"reward {spec!r} is not a folder, not module:function, and not a model on the "
            f"hub ({type(e).__name__}: {e})"
        ) from None


def load_sequence_classifier(
    folder: Path,
    trust_remote_code: bool = False,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
):
    """(model, tokenizer) of a one-label sequence classifier that distalign did not train
    (e.g. TRL's RewardTrainer, or any ``AutoModelForSequenceClassification.save_pretrained``),
    on ``device`` (None: the CPU) in ``dtype``.

    Its own forward reads the score where the model was trained to: the rightmost token that
    is not ``config.pad_token_id`` (decoders) or the first one (BERT-style). That needs a pad
    id; without one we take the tokenizer's pad token, else EOS — what TRL's RewardTrainer
    pads with when the tokenizer has none, so the model is read as it was trained.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from distalign.models.load import _load_settings, _placed

    adapter = _seq_cls_adapter(folder)
    if adapter is not None:  # TRL's RewardTrainer with a peft_config saves the adapter alone
        return _load_adapter_classifier(folder, adapter, trust_remote_code, device, dtype,
                                        attn_implementation)  # fmt: skip
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise NotARewardModelError(
            f"{folder} is not a sequence-classification model (architectures: "
            f"{architectures}); a reward model needs a trained score head"
        )
    if config.num_labels != 1:
        raise NotARewardModelError(
            f"{folder}: a sequence classifier with {config.num_labels} labels and no "
            "distalign_rm.json; a reward model has one label (num_labels=1), and distalign's "
            "distributional reward models carry distalign_rm.json"
        )
    place, kwargs = _load_settings(device, dtype, attn_implementation, trust_remote_code)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        folder, output_loading_info=True, **kwargs
    )
    if info["missing_keys"]:  # a random head would score noise
        missing = info["missing_keys"]
        raise NotARewardModelError(f"{folder}: weights missing from the checkpoint: {missing}")
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return _placed(_with_pad(model, tokenizer, folder).eval(), place), tokenizer


def _with_pad(model, tokenizer, folder):
    """``model``, its tokenizer given a pad token when it has none (the model's pad id, else
    EOS: what TRL's RewardTrainer pads with) and the model the tokenizer's pad id. A decoder's
    tokenizer without a chat template gets the plain rendering (``models.templates``): such a
    reward model was trained by TRL on standard data, prompt + reply + EOS as plain text."""
    if tokenizer.pad_token_id is None:
        if model.config.pad_token_id is not None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(model.config.pad_token_id)
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise NotARewardModelError(
                f"{folder}: the tokenizer has neither a pad nor an EOS token"
            )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.chat_template is None and tokenizer.eos_token is not None:
        core = tokenizer("a", add_special_tokens=False)["input_ids"]
        if not _special_tokens(tokenizer, "a", core)[1]:  # nothing after the text: no [SEP]
            tokenizer.chat_template = built_in_template("plain", tokenizer)
    return model


def _seq_cls_adapter(folder: Path) -> dict | None:
    """The adapter_config of a PEFT adapter folder without a model of its own; None
    otherwise. An adapter of another task than sequence classification is refused."""
    folder = Path(folder)
    if (folder / "config.json").is_file() or not (folder / "adapter_config.json").is_file():
        return None
    settings = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    if settings.get("task_type") != "SEQ_CLS":
        raise NotARewardModelError(
            f"{folder}: a LoRA adapter of task {settings.get('task_type')!r}; a reward model's "
            "is SEQ_CLS (a sequence classifier with a trained score head)"
        )
    return settings


def _load_adapter_classifier(folder, settings, trust_remote_code, device, dtype,
                             attn_implementation):  # fmt: skip
    """A one-label classifier from its base model and the adapter (merged), with the
    tokenizer saved beside the adapter (else the base's)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distalign.models.load import _load_settings, _placed, adapter_base, resolve_model

    place, kwargs = _load_settings(device, dtype, attn_implementation, trust_remote_code)
    base_name = resolve_model(settings["base_model_name_or_path"])
    base = adapter_base(
        AutoModelForSequenceClassification, settings, kwargs, num_labels=1, new_weights=("score.",)
    )  # the adapter brings the trained head
    model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    has_tokenizer = (Path(folder) / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(
        folder if has_tokenizer else base_name, trust_remote_code=trust_remote_code,
        revision=None if has_tokenizer else settings.get("revision"),
    )  # fmt: skip
    return _placed(_with_pad(model, tokenizer, folder).eval(), place), tokenizer


def model_max_length(model, tokenizer, default: int = 512) -> int:
    """The longest input the model takes: its position limit and the tokenizer's."""
    limits = [getattr(model.config, k, None) for k in ("max_position_embeddings", "n_positions")]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:  # else unset
        limits.append(tokenizer.model_max_length)
    limits = [n for n in limits if isinstance(n, int) and n > 0]
    return min(limits) if limits else default


def render_conversation(
    tokenizer, messages, prompt_only: bool = False, template_kwargs: dict | None = None
) -> str:
    """The reward model's text of a conversation: its chat template (``data.pairs``'
    rendering), or, for a BERT-style tokenizer without one, the messages as ``role: content``
    lines."""
    if tokenizer.chat_template is not None:
        from distalign.data.pairs import render_text

        if prompt_only:
            return render_text(tokenizer, messages, template_kwargs=template_kwargs)
        return render_text(tokenizer, messages[:-1], messages[-1:], template_kwargs)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines + (["assistant:"] if prompt_only else []))


def _special_tokens(tokenizer, text: str, core: list[int]) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after ``text``'s own (``[CLS]``, ``[SEP]``)."""
    wrapped = tokenizer(text, add_special_tokens=True)["input_ids"]
    for k in range(len(wrapped) - len(core) + 1):
        if wrapped[k : k + len(core)] == core:
            return wrapped[:k], wrapped[k + len(core) :]
    return [], []  # a tokenizer that changes the text's own ids: no special tokens then


def encode_conversation(
    tokenizer, prompt, reply: Reply, max_length: int, template_kwargs: dict | None = None
) -> list[int]:
    """Token ids of prompt + assistant ``reply`` (a text, or the reply's messages), at most
    ``max_length``.

    A chat template writes its own special tokens (BOS, turn markers), as in TRL; a built-in
    plain-text rendering gets the BOS its tokenizer adds, and the ``role: content`` lines of a
    BERT-style tokenizer its ``[CLS]`` … ``[SEP]``. A longer conversation is cut by
    ``truncate_pair``: the prompt from the left, the reply from the right, the prompt keeping
    at least half; when the rendering of the prompt is not a prefix of the conversation's, the
    last tokens are kept.
    """
    from distalign.data.pairs import truncate_pair

    def ids(messages, prompt_only=False) -> tuple[str, list[int]]:
        text = render_conversation(tokenizer, messages, prompt_only, template_kwargs)
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]

    text, core = ids([*prompt, *reply_messages(reply)])
    head, tail = [], []
    if tokenizer.chat_template is None:
        head, tail = _special_tokens(tokenizer, text, core)
    elif rendering_of(tokenizer) is not None:  # plain text: tokenizer(text), its BOS included
        head = bos_ids(tokenizer)
    budget = max_length - len(head) - len(tail)
    if len(core) > budget:
        prompt_ids = ids(prompt, prompt_only=True)[1]
        n = len(prompt_ids)
        if 0 < n < len(core) and core[:n] == prompt_ids and budget >= 2:
            p, (r,) = truncate_pair(prompt_ids, [core[n:]], budget, budget // 2)
            core = p + r
        else:
            core = core[len(core) - budget :]
    return head + core + tail


@torch.no_grad()
def score_conversations(
    model, tokenizer, prompts, replies, max_length: int, batch_size: int = 16,
    template_kwargs: dict | None = None,
) -> torch.Tensor:  # fmt: skip
    """Scores (N, 1) of a sequence classifier on its own renderings, by its own forward, in
    length-sorted right-padded batches (padded with ``config.pad_token_id``, which its pooling
    looks for)."""
    from distalign.data.pairs import pad_sequences

    seqs = [
        encode_conversation(tokenizer, p, r, max_length, template_kwargs)
        for p, r in zip(prompts, replies, strict=True)
    ]
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [None] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pad_sequences([seqs[i] for i in idx], model.config.pad_token_id)
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        ).logits  # (b, 1)
        for i, s in zip(idx, logits.float().cpu(), strict=True):
            out[i] = s
    return torch.stack(out) if out else torch.zeros(0, 1)
