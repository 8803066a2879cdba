"""How the training commands load and adapt their model: the keys of TRL's ``ModelConfig``
(``model_revision``, ``model_init_kwargs``, the LoRA keys), ``chat_template_path`` and
``disable_dropout``, in one place that ``rm train`` and ``rl train`` both inherit.

    cfg = RMTrainConfig(use_peft=True, lora_target_modules=["q_proj", "v_proj"], use_dora=True)
    model, tokenizer = build_reward_model(cfg.model_name_or_path, **cfg.load_kwargs())
    model = add_lora(model, **cfg.lora_kwargs("SEQ_CLS"))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distalign.models.lora import TASK_TYPES

# attributes through which models apply dropout without an nn.Dropout module (Llama's
# attention keeps ``attention_dropout`` as a float), on modules and on their config
DROPOUT_ATTRIBUTES = ("attention_dropout", "hidden_dropout", "dropout", "attn_pdrop",
                      "resid_pdrop", "embd_pdrop", "summary_first_dropout", "classifier_dropout",
                      "hidden_dropout_prob", "attention_probs_dropout_prob")  # fmt: skip


@dataclass
class ModelKeys:
    """Keys of the training commands that load a model and may put LoRA adapters on it."""

    model_revision: str | None = None
    """Branch, tag or commit of a hub model (default: the latest)."""
    model_init_kwargs: dict[str, Any] | None = None
    """More keyword arguments of ``from_pretrained`` (YAML mapping, or
    ``model_init_kwargs='{low_cpu_mem_usage: true}'``); a ``dtype`` (or ``torch_dtype``) there
    takes the place of the ``dtype`` key."""
    dtype: str = "float32"
    """Weights dtype: float32 | bfloat16 | float16 (mixed precision: bf16 / fp16)."""
    trust_remote_code: bool = False
    """Allow a hub model's own code to run (off: only code shipped with transformers)."""
    chat_template_path: str | None = None
    """A chat template for a model without one (a base model), or instead of its own: a Jinja
    file, or a tokenizer (folder or hub id) whose template to take. The special tokens it
    writes must be in the model's vocabulary (they are not added). Saved with the model."""
    disable_dropout: bool = False
    """Turn every dropout of the model off (nn.Dropout layers and the attention dropout a
    model applies by itself); LoRA's own dropout stays ``lora_dropout``."""
    use_peft: bool = False
    """Train LoRA adapters instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: Any = "all-linear"
    """Modules that get adapters: a list of names (``[q_proj, v_proj]``) or ``all-linear``
    (every linear layer but the output one)."""
    lora_modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (a reward model's ``score`` head
    always is)."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale alpha / √r instead of alpha / r."""
    use_dora: bool = False
    """DoRA: weight-decomposed adapters (slower steps)."""
    lora_task_type: str | None = None
    """PEFT task type. The command sets it (rm train: SEQ_CLS, rl train: CAUSAL_LM); a TRL
    config's value is accepted when it is that one."""

    def model_checks(self, task_type: str) -> list[tuple[bool, str]]:
        """``__post_init__`` checks of these keys for a command whose adapters are of
        ``task_type``."""
        targets = self.lora_target_modules
        return [
            (
                self.lora_task_type in (None, task_type),
                f"lora_task_type={self.lora_task_type}: this command trains a {task_type} "
                f"model (one of {TASK_TYPES}); leave it unset",
            ),
            (
                targets == "all-linear"
                or (isinstance(targets, list | tuple) and all(isinstance(t, str) for t in targets)),
                f"lora_target_modules must be all-linear or a list of module names, got "
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
            "target_modules": targets if isinstance(targets, str) else list(targets),
            "modules_to_save": self.lora_modules_to_save,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
        }


def disable_dropout(model: torch.nn.Module) -> int:
    """Every dropout of ``model`` off, in place: ``nn.Dropout`` layers get p = 0, and the
    dropout rates a model reads from its own attributes or config (``DROPOUT_ATTRIBUTES``)
    become 0. Returns how many were on."""
    on = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            on += module.p > 0
            module.p = 0.0
        for owner in (module, getattr(module, "config", None)):
            for name in DROPOUT_ATTRIBUTES:
                value = getattr(owner, name, None)
                if isinstance(value, float) and not isinstance(value, bool):
                    on += value > 0 and owner is module
                    setattr(owner, name, 0.0)
    return on
