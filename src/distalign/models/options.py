"""How the training commands load and adapt their model: the keys of TRL's ``ModelConfig``
(``model_revision``, ``model_init_kwargs``, the LoRA keys), ``chat_template_path`` and
``disable_dropout``, in one place that ``rm train`` and ``rl train`` both inherit.

    cfg = RMTrainConfig(use_peft=True, lora_target_modules=["q_proj", "v_proj"], use_dora=True)
    model, tokenizer = build_reward_model(cfg.model_name_or_path, **cfg.load_kwargs())
    model = add_lora(model, **cfg.lora_kwargs("SEQ_CLS"))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from distalign.models.load import DTYPES

log = logging.getLogger(__name__)

# attributes through which modules apply dropout without an nn.Dropout layer (Llama's
# attention keeps ``attention_dropout`` as a float)
DROPOUT_ATTRIBUTES = ("attention_dropout", "hidden_dropout", "dropout", "attn_pdrop",
                      "resid_pdrop", "embd_pdrop", "summary_first_dropout", "classifier_dropout",
                      "hidden_dropout_prob", "attention_probs_dropout_prob")  # fmt: skip


# from_pretrained arguments that have their own key (checked there), or that accelerate sets
OWN_KEYS = {"attn_implementation", "revision", "device_map"}


@dataclass
class ModelKeys:
    """Keys of the training commands that load a model and may put LoRA adapters on it."""

    model_revision: str | None = None
    """Branch, tag or commit of a hub model (default: the latest)."""
    model_init_kwargs: dict[str, Any] | None = None
    """More keyword arguments of ``from_pretrained`` (YAML mapping, or
    ``model_init_kwargs='{low_cpu_mem_usage: true}'``); a ``dtype`` (or ``torch_dtype``) or
    ``trust_remote_code`` there takes the place of that key. ``attn_implementation`` and
    ``revision`` have keys of their own (``model_revision``); accelerate places the model."""
    dtype: str = "float32"
    """Weights dtype: float32 | bfloat16 | float16 | auto (float32 here: training keeps float32
    weights, and bf16 / fp16 set the compute precision)."""
    trust_remote_code: bool = False
    """Allow a hub model's own code to run (off: only code shipped with transformers)."""
    chat_template_path: str | None = None
    """A chat template for a model without one (a base model), or instead of its own: a Jinja
    file, or a tokenizer (folder or hub id) whose template to take. The special tokens it
    writes must be in the model's vocabulary (they are not added). Saved with the model.
    Built-in renderings by name: ``plain`` (TRL's standard data, prompt + reply + EOS as plain
    text: the default of a model without a template) and ``hh`` (Anthropic HH transcripts as
    written, Human: and Assistant: turns)."""
    disable_dropout: bool = False
    """Turn every dropout of the model off while training (nn.Dropout layers, LoRA's
    included, as TRL does, and the attention dropout a model applies by itself)."""
    use_peft: bool = False
    """Train LoRA adapters instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: Any = field(
        default="all-linear", metadata={"list": True, "shown_type": "str | list[str] | None"}
    )
    """Modules that get adapters: a list of names (``[q_proj, v_proj]``), ``all-linear``
    (every linear layer but the output one), or null (PEFT's choice for the architecture,
    TRL's default)."""
    lora_modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (a reward model's ``score`` head
    always is)."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale alpha / √r instead of alpha / r."""
    use_dora: bool = False
    """DoRA: weight-decomposed adapters (slower steps)."""
    merge_lora: bool = False
    """Also save the model with the adapter merged into the weights (final_merged/), which
    loads with the Auto classes alone."""
    lora_task_type: str | None = None
    """PEFT task type. The command sets it (rm train: SEQ_CLS, rl train: CAUSAL_LM); a TRL
    config's value is accepted when it is that one, and TRL ModelConfig's default CAUSAL_LM is
    read as SEQ_CLS in rm train (with a warning, under use_peft)."""

    def model_checks(self, task_type: str) -> list[tuple[bool, str]]:
        """``__post_init__`` checks of these keys for a command whose adapters are of
        ``task_type``."""
        targets = self.lora_target_modules
        if isinstance(targets, list | tuple) and list(targets) == ["all-linear"]:
            self.lora_target_modules = targets = "all-linear"  # --lora_target_modules all-linear
        if self.model_init_kwargs:  # torch.bfloat16 -> "bfloat16", as the saved config writes it
            self.model_init_kwargs = {
                k: str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v
                for k, v in self.model_init_kwargs.items()
            }
        dtype = self.load_kwargs()["dtype"]
        # TRL ModelConfig's default in rm train: TRL's reward script warns, then trains
        # adapters of the wrong task; here the command's own task is taken, and said
        trl_default = self.lora_task_type == "CAUSAL_LM" and task_type == "SEQ_CLS"
        if trl_default and self.use_peft:
            from distalign.config import config_warning

            config_warning(log, "lora_task_type=CAUSAL_LM (TRL ModelConfig's default) is read as "
                           "SEQ_CLS: a reward model's adapters and score head")  # fmt: skip
        return [
            (
                dtype == "auto" or dtype in DTYPES,
                f"dtype must be one of auto, {', '.join(DTYPES)}, got {dtype!r}",
            ),
            (
                not set(self.model_init_kwargs or {}) & OWN_KEYS,
                f"model_init_kwargs: give {', '.join(sorted(OWN_KEYS))} as keys of their own",
            ),
            (
                self.lora_task_type in (None, task_type) or trl_default,
                f"lora_task_type={self.lora_task_type}: this command's LoRA task is "
                f"{task_type} ({'reward model' if task_type == 'SEQ_CLS' else 'policy'}); "
                "leave it unset or give that",
            ),
            (
                targets is None
                or targets == "all-linear"
                or (isinstance(targets, list | tuple) and all(isinstance(t, str) for t in targets)),
                f"lora_target_modules must be all-linear, a list of module names or null, got "
                f"{targets!r}",
            ),
        ]

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``load_policy`` / ``build_reward_model``."""
        extra = dict(self.model_init_kwargs or {})
        dtype = extra.pop("torch_dtype", self.dtype)
        dtype = extra.pop("dtype", dtype)
        return {
            "dtype": dtype,
            "trust_remote_code": extra.pop("trust_remote_code", self.trust_remote_code),
            "revision": self.model_revision,
            "init_kwargs": extra,
            "chat_template": self.chat_template_path,
        }

    def lora_kwargs(self, task_type: str) -> dict[str, Any]:
        """Keyword arguments of ``add_lora``."""
        targets = self.lora_target_modules
        return {
            "task_type": task_type,
            "r": self.lora_r,
            "alpha": self.lora_alpha,
            "dropout": self.lora_dropout,
            "target_modules": list(targets) if isinstance(targets, list | tuple) else targets,
            "modules_to_save": self.lora_modules_to_save,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
        }


def disable_dropout(model: torch.nn.Module) -> int:
    """Every dropout of ``model`` off, in place, as TRL's ``disable_dropout_in_model`` (after
    LoRA, so its dropout too): ``nn.Dropout`` layers get p = 0, and the rates a module reads
    from its own attributes (``DROPOUT_ATTRIBUTES``: Llama's attention keeps
    ``attention_dropout`` as a float) become 0. The config stays as it is, so a saved model
    keeps the dropout it came with. Returns how many were on."""
    on = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            on += module.p > 0
            module.p = 0.0
        for name in DROPOUT_ATTRIBUTES:
            value = getattr(module, name, None)
            if isinstance(value, float):
                on += value > 0
                setattr(module, name, 0.0)
    return on
