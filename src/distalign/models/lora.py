"""LoRA adapters on a model's linear layers (all of them, or those named), through PEFT.

    from distalign.models.lora import add_lora
    policy = add_lora(policy, "CAUSAL_LM", r=16, alpha=32, dropout=0.0)

The base weights are frozen; only the adapters train (and, for a reward model, its new head).
A LoRA policy needs no separate reference model: the reference is the same model with its
adapters disabled (``rl/logprobs.py:reference_mode``).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

TASK_TYPES = ("SEQ_CLS", "CAUSAL_LM")


def add_lora(
    model,
    task_type: str,
    r: int,
    alpha: int,
    dropout: float,
    *,
    target_modules: str | list[str] | None = "all-linear",
    modules_to_save: list[str] | None = None,
    use_rslora: bool = False,
    use_dora: bool = False,
):
    """``model`` wrapped by PEFT with rank-``r`` adapters (scale ``alpha / r``; ``alpha / √r``
    with ``use_rslora``) on ``target_modules``: every linear layer but the output one by
    default, the named ones, or (None) PEFT's default ones for the architecture.

    ``task_type``: ``"SEQ_CLS"`` for a reward model: PEFT then keeps the freshly initialised
    ``score`` head fully trainable (``modules_to_save``) and saves it with the adapter;
    ``"CAUSAL_LM"`` for a policy. ``modules_to_save`` adds modules trained in full.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    config = LoraConfig(
        task_type=TaskType(task_type),
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=modules_to_save,
        use_rslora=use_rslora,
        use_dora=use_dora,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. a target module the model does not have
        raise ValueError(f"LoRA: {e}") from e


def merged_for_saving(model, gathered_weights) -> Any:
    """``merge_lora``: the LoRA model with its adapter merged into the weights, to save as a
    whole model (``final_merged/``); None with a warning when it was sharded (its weights came
    ``gathered_weights``), which cannot merge in place."""
    if gathered_weights is not None:
        log.warning("merge_lora: skipped for a sharded model; merge final/ after loading it")
        return None
    return model.merge_and_unload()
