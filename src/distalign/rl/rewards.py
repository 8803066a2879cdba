"""Reward sources for REINFORCE, and their weighted sum (TRL's ``reward_funcs`` +
``reward_weights``):

    reward=runs/rm_scalar/final                    # a distalign reward model, any head
    reward=org/some-reward-model                   # any 1-label sequence classifier (hub/folder)
    reward=my_pkg.rewards:brevity                  # f(prompts, replies[, **columns]) -> floats
    reward=[runs/rm/final,my_pkg.rewards:brevity] reward_weights=[1.0,0.2]

From Python, a callable object with that signature is a source too. Each source gets a name
under which its mean reward is logged: the folder's (the run's for ``final``), the hub id's
last part, the function's or the class's. The step's reward is Σ_i w_i r_i.

Replies arrive as text, so a reward model with another tokenizer than the policy scores them
correctly: a distalign RM re-encodes them (``score_replies``); any other one renders the
conversation with its own chat template and scores it with its own forward
(``score_conversations``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import logging
import random
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distalign import functionals as fn
from distalign.config import ConfigError
from distalign.distributed import EVERY_PROCESS
from distalign.models.classifier import (
    load_sequence_classifier,
    model_folder,
    model_max_length,
    score_conversations,
)
from distalign.models.heads import head_log_probs, mixture_atoms

log = logging.getLogger(__name__)

GOLD_REWARD = "distalign.gold.judge:gold_reward"
# folder names that say where in a run a model sits, not which model it is
GENERIC_FOLDERS = {"final", "last", "best", "final_merged", "model", "checkpoints"}


MIXTURE_GAINS = ("mean_minus_std", "cvar", "quantile")  # read as gains over the SFT reply


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # (B,) the value optimised: scalar reward or φ(p)
    distributions: torch.Tensor | None = None  # (B, n) of a distributional RM (mixture: atoms)
    std: torch.Tensor | None = None  # (B,) Std[R] for a distributional RM
    per_source: dict[str, torch.Tensor] | None = None  # name -> (B,) unweighted, NaN: unscored


class RewardSource:
    """Callable: (chat prompts, reply texts[, reference distributions][, columns=...]) ->
    RewardOutput. ``columns``: extra data-set columns, one value per reply."""

    name = "reward"
    needs_reference = False  # win probability needs the SFT reply's distribution per prompt
    distributional = False

    def __call__(self, prompts, replies, reference=None, columns=None) -> RewardOutput:
        raise NotImplementedError


def callable_name(function: Callable) -> str:
    """A function's name, a partial's function's, or a callable object's class name."""
    while isinstance(function, partial):
        function = function.func
    return getattr(function, "__name__", None) or type(function).__name__


def _column_parameters(function: Callable) -> tuple[bool, set[str], set[str]]:
    """(takes **kwargs, named keyword parameters after (prompts, replies), required ones)."""
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: no columns
        return False, set(), set()
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named = [p for p in positional[2:] if p.kind is p.POSITIONAL_OR_KEYWORD]
    named += [p for p in params if p.kind is p.KEYWORD_ONLY]
    required = {p.name for p in named if p.default is p.empty}
    return var_kw, {p.name for p in named}, required


def _parameter_names(function: Callable) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin without a signature
        return set()


# what TRL passes every reward function by keyword beside the data set's columns
TRL_ARGUMENTS = ("completion_ids", "trainer_state", "log_extra", "log_metric")


def _trl_parameters(function: Callable) -> tuple[bool, set[str], set[str]] | None:
    """For a TRL reward function (one that names ``completions`` or another of TRL's
    arguments, or takes keywords only, ``f(**kwargs)``): (takes **kwargs, its named data-set
    column parameters, required ones); None for any other function."""
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    names = {p.name for p in params}
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    var_args = any(p.kind is p.VAR_POSITIONAL for p in params)  # a wrapper: distalign's call
    trl_named = bool(set(TRL_ARGUMENTS) & names) and len(positional) < 2  # not (prompts, replies)
    if not ("completions" in names or trl_named or (var_kw and not positional and not var_args)):
        return None
    own = ("prompts", "completions", *TRL_ARGUMENTS)
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and p.name not in own]  # fmt: skip
    return var_kw, {p.name for p in named}, {p.name for p in named if p.default is p.empty}


class RewardLog:
    """What TRL reward functions log during a step, through the ``log_metric(name, value)``
    and ``log_extra(column, values)`` they are given: ``take`` returns the metrics' means and
    the extra per-completion columns, and starts afresh."""

    def __init__(self):
        self.metrics: dict[str, list[float]] = {}
        self.extra: dict[str, list] = {}

    def log_metric(self, name: str, value: float) -> None:
        self.metrics.setdefault(str(name), []).append(float(value))

    def log_extra(self, column: str, values: list) -> None:
        self.extra[str(column)] = list(values)

    def take(self) -> tuple[dict[str, float], dict[str, list]]:
        means = {k: sum(v) / len(v) for k, v in self.metrics.items() if v}
        extra, self.metrics, self.extra = self.extra, {}, {}
        return means, extra


class RewardFunctionError(ValueError):
    """A reward function that does not keep its contract: a data-set column it needs is
    missing, it returned as many values as there are replies, or no source scored a reply."""


class CallableReward(RewardSource):
    """``function(prompts, replies, **columns) -> list[float | None]``, or a TRL reward
    function ``function(completions, **kwargs)`` (any function with a ``completions``
    parameter), called as TRL calls it: by keyword, ``prompts`` and ``completions`` as strings
    when the data set's prompts were strings, else as messages (each completion
    ``[{"role": "assistant", "content": ...}]``).

    As in TRL, the prompts' extra data-set columns go to a function that takes ``**kwargs``
    (all of them) or names them as keyword parameters (those), each a list with one value per
    reply. ``None`` means "this function does not score this reply" (TRL's convention): the
    weighted sum leaves it out, and a reply that no source scores is an error.
    """

    def __init__(self, function: Callable, name: str | None = None):
        self.function = function
        self.name = name or callable_name(function)
        self.trl = _trl_parameters(function)
        self._all_columns, self._named, self._required = self.trl or _column_parameters(function)
        # the TRL arguments a TRL function is given: those it names, or all with **kwargs
        takes = _parameter_names(function)
        self._gets = {n for n in ("prompts", "completions", *TRL_ARGUMENTS)
                      if self._all_columns or n in takes}  # fmt: skip

    def _column_kwargs(self, columns: dict[str, list] | None) -> dict[str, list]:
        columns = columns or {}
        self.check_columns(set(columns))
        if self._all_columns:
            taken = ("prompts", "replies", "completions")  # the arguments' own names
            return {k: v for k, v in columns.items() if k not in taken}
        return {k: v for k, v in columns.items() if k in self._named}

    def check_columns(self, available: set[str]) -> None:
        """The data-set columns this function names without a default must be among
        ``available``."""
        missing = self._required - available
        if missing:
            raise RewardFunctionError(
                f"reward function {self.name} needs the column(s) {sorted(missing)}; the "
                f"prompts carry {sorted(available) or 'none'}"
            )

    def __call__(
        self, prompts, replies, reference=None, columns=None, context=None
    ) -> RewardOutput:
        """``context``: TRL's other arguments (``completion_ids``, ``trainer_state``,
        ``log_extra``, ``log_metric``), given to a TRL function that takes them."""
        if self.trl is None:
            values = self.function(prompts, replies, **self._column_kwargs(columns))
        else:
            shaped = self._trl_kwargs(prompts, replies)
            shaped |= {k: v for k, v in (context or {}).items() if k in self._gets}
            values = self.function(**shaped, **self._column_kwargs(columns))
        if inspect.isawaitable(values):  # an async reward function, as TRL takes one
            values = awaited(values)
        if isinstance(values, torch.Tensor | np.ndarray) and values.ndim != 1:
            raise RewardFunctionError(
                f"reward function {self.name} returned an array of shape "
                f"{tuple(values.shape)}; give one number (or None) per reply"
            )
        if not hasattr(values, "__len__") or len(values) != len(replies):
            got = f"{len(values)} values" if hasattr(values, "__len__") else repr(values)[:60]
            raise RewardFunctionError(
                f"reward function {self.name} returned {got} for {len(replies)} replies"
            )
        try:
            floats = [float("nan") if v is None else float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise RewardFunctionError(
                f"reward function {self.name} returned a value that is no number ({e}); give "
                "one number (or None) per reply"
            ) from None
        return RewardOutput(torch.tensor(floats))

    def _trl_kwargs(self, prompts, replies) -> dict[str, list]:
        """``prompts`` and ``completions`` in TRL's shapes, those the function takes."""
        texts = [getattr(p, "text", None) for p in prompts]
        if all(isinstance(t, str) for t in texts):  # TRL's standard format: strings
            out = {"prompts": texts, "completions": list(replies)}
        else:  # conversational
            turns = [[{"role": "assistant", "content": r}] for r in replies]
            out = {"prompts": [list(p) for p in prompts], "completions": turns}
        return {k: v for k, v in out.items() if k in self._gets}


_LOOP: asyncio.AbstractEventLoop | None = None


def awaited(awaitable):
    """The result of an async reward function's coroutine, run on one event loop kept for the
    process in a thread of its own, as TRL keeps one: what the function binds to its loop (a
    semaphore, an HTTP client) works at every step, and a caller's running loop (a
    notebook's) is left alone."""
    import threading

    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.new_event_loop()
        threading.Thread(target=_LOOP.run_forever, name="reward-loop", daemon=True).start()

    async def wait():
        return await awaitable

    return asyncio.run_coroutine_threadsafe(wait(), _LOOP).result()


def unique_name(name: str, taken) -> str:
    """``name``, or ``name_2``, ``name_3``, … when ``taken`` holds it already."""
    out, n = name, 1
    while out in taken:
        n += 1
        out = f"{name}_{n}"
    return out


def source_name(spec: str) -> str:
    """``module:function`` -> function; a folder -> its name (a run's ``final``, ``last`` ->
    the run's); a hub id -> its last part."""
    if ":" in spec and not Path(spec).exists():
        return spec.rsplit(":", 1)[1]
    return above_generic_folders(Path(spec.rstrip("/"))).name or spec


def above_generic_folders(path: Path) -> Path:
    """``path``, or, where its name says where it sits in a run (``final``, ``last``,
    ``step_N``: ``generic_folder``), the run's folder above it."""
    while path.parent.name and generic_folder(path.name):
        path = path.parent
    return path


def generic_folder(name: str) -> bool:
    """Whether a folder's name says where it sits in a run rather than which model it holds:
    one of ``GENERIC_FOLDERS`` (``final``, ``last``, …) or a checkpoint (``step_N``,
    ``checkpoint-N``)."""
    return name in GENERIC_FOLDERS or name.startswith(("step_", "checkpoint-"))


def named_folders(
    items: list[str], taken: set[str] = frozenset(), strict: bool = True
) -> dict[str, str]:
    """NAME -> DIR of ``NAME=DIR`` or ``DIR`` items; a DIR alone (or one whose "=" is in a
    folder's name, ``runs/lr=1e-5``) is named by its folder (``rl.rewards.source_name``),
    with a number after a name already used. A NAME given twice, or one of ``taken`` (the
    baseline's ``sft``), is a ConfigError (``strict=False``, to read a saved comparison made
    before that rule: the later one stands)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or "/" in name:
            name, folder = unique_name(source_name(item), {*out, *taken}), item
        elif strict and (name in taken or name in out):
            what = "is the baseline's" if name in taken else f"names {out[name]!r} already"
            raise ConfigError(f"{item!r}: the name {name!r} {what}; give another NAME=")
        out[name] = folder
    return out


class RewardModelSource(RewardSource):
    """A reward model by folder or hub id: distalign's (``distalign_rm.json`` beside it; any
    head, distributional ones through the functional ``functional``) or any one-label sequence
    classifier, scored with its own tokenizer, chat template and forward.

    ``max_length``: longest prompt + reply in tokens; default: a distalign RM's training
    ``max_length`` (its prompts cut to its ``max_prompt_length``), else the model's limit.
    ``device`` and ``dtype`` as ``models.load.resolve_device_dtype`` reads them (``auto``: the
    GPU in bfloat16 when there is one); the defaults keep the model on the CPU in float32.
    """

    def __init__(
        self,
        path: str,
        functional: str = "expectation",
        kappa: float = 1.0,
        alpha: float = 0.25,
        tau: float = 0.5,
        max_length: int | None = None,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        dtype: str | torch.dtype = "float32",
        attn_implementation: str = "sdpa",
        chat_template: str | None = None,
        template_kwargs: dict | None = None,
    ):
        from distalign.models.load import resolve_device_dtype, set_chat_template
        from distalign.models.reward_model import META_FILE, load_reward_model

        path = str(path)
        self.name = source_name(path)
        device, dtype = resolve_device_dtype(device, dtype)
        folder = model_folder(path, trust_remote_code)
        self.own_forward = not (folder / META_FILE).is_file()  # not trained by distalign
        if self.own_forward:
            self.model, self.tokenizer = load_sequence_classifier(
                folder,
                trust_remote_code,
                device=device,
                dtype=dtype,
                attn_implementation=attn_implementation,
            )
            self.meta = {"head": "scalar"}
            self.max_length = max_length or model_max_length(self.model, self.tokenizer)
            self.max_prompt_length = None
        else:
            self.model, self.tokenizer, self.meta = load_reward_model(
                folder,
                device=device,
                dtype=dtype,
                attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code,
            )
            # the lengths the model was trained with (saved by rm train), unless given
            self.max_length = max_length or self.meta.get("max_length", 512)
            trained = self.meta.get("max_prompt_length")
            self.max_prompt_length = trained if trained and trained < self.max_length else None
        set_chat_template(self.tokenizer, chat_template, trust_remote_code)  # rm eval, rm score
        self.template_given = chat_template is not None
        self.model.requires_grad_(False)
        self.head = self.meta.get("head", "scalar")
        self.n_bins = self.meta.get("n_bins", 10)
        self.distributional = self.head != "scalar"
        if functional not in fn.FUNCTIONALS:
            raise ValueError(f"functional must be one of {fn.FUNCTIONALS}, got {functional!r}")
        self.functional, self.kappa, self.alpha, self.tau = functional, kappa, alpha, tau
        # a mixture's components are each fixed only up to a constant, so a functional that
        # is not linear in them (std, CVaR, quantile) reads each component's gain over the
        # SFT reply of the same prompt: r_k(y) − r_k(y_SFT), where the constants cancel
        self.gain_over_reference = self.head == "mixture" and functional in MIXTURE_GAINS
        self.needs_reference = self.distributional and (
            functional in fn.REFERENCE_FUNCTIONALS or self.gain_over_reference
        )
        self.batch_size = batch_size
        self.template_kwargs = template_kwargs  # the chat template's other arguments

    def _outputs(self, prompts, replies) -> torch.Tensor:
        """Raw head outputs (B, k) of the reward model."""
        from distalign.models.reward_model import score_replies

        if self.own_forward:
            return score_conversations(
                self.model, self.tokenizer, prompts, replies, self.max_length, self.batch_size,
                self.template_kwargs,
            )  # fmt: skip
        return score_replies(
            self.model,
            self.tokenizer,
            prompts,
            replies,
            self.max_length,
            max_prompt_length=self.max_prompt_length,
            batch_size=self.batch_size,
            template_kwargs=self.template_kwargs,
        )

    def rows_cut(self, prompts, replies) -> int:
        """How many of the (prompt, reply) rows are longer than ``max_length`` tokens as this
        model renders them, and so read cut (the oldest turns, the prompt's start, the reply's
        end)."""
        from distalign.data.pairs import render_pair_ids
        from distalign.models.classifier import encode_conversation

        whole = 1 << 30  # no limit: the rendering's own length
        n = 0
        for prompt, reply in zip(prompts, replies, strict=True):
            if self.own_forward:
                length = len(encode_conversation(self.tokenizer, prompt, reply, whole,
                                                 self.template_kwargs))  # fmt: skip
            else:
                p, (r,) = render_pair_ids(self.tokenizer, prompt, [reply], self.template_kwargs)
                length = len(p) + len(r)
            n += length > self.max_length
        return n

    def distributions(self, prompts, replies) -> torch.Tensor:
        """p (B, n) over scores 1..n of a categorical or ordinal reward model; for a mixture
        head, the K component rewards (B, K) (its atoms, equal shares)."""
        outputs = self._outputs(prompts, replies)
        if self.head == "mixture":
            return outputs.float()
        return head_log_probs(self.head, outputs, self.n_bins).exp()

    def probs_values(self, distributions: torch.Tensor):
        """(p, values) for the functionals: a mixture's atoms are per-row values."""
        if self.head == "mixture":
            return mixture_atoms(distributions)
        return distributions, None

    def expectation_std(self, distributions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E[R] and Std[R] per reply, (B,) each, from what ``distributions`` returned (for a
        mixture, the std of its raw components: it moves with their free constants, so
        compare it only after centring them, as ``eval compare`` does)."""
        p, values = self.probs_values(distributions)
        return fn.expectation(p, values), fn.std(p, values)

    def fit_rendering(self, data, source) -> None:
        """Fit the rendering to the data (``models.templates.fit_rendering``: a model without
        a chat template reads plain text). A reward model distalign did not train, with a chat
        template of its own, meeting string data: TRL's RewardTrainer trains such a model on
        string data as plain text whatever its template, so say how to score it that way."""
        from distalign.models.templates import fit_rendering, rendering_of

        fit_rendering(self.tokenizer, data, source, f"reward model {self.name}")
        strings = data.rows and not data.conversations
        own_template = rendering_of(self.tokenizer) is None
        if self.own_forward and not self.template_given and strings and own_template:
            log.warning(
                "%s: string data (no message lists), read by reward model %s through its "
                "tokenizer's chat template. TRL's RewardTrainer trains on string data as "
                "plain text (prompt + reply + EOS) whatever the template: if this model "
                "was trained so, chat_template_path=plain scores it as it was trained",
                source, self.name,
            )  # fmt: skip

    def __call__(self, prompts, replies, reference=None, columns=None) -> RewardOutput:
        if not self.distributional:
            return RewardOutput(self._outputs(prompts, replies)[:, 0])
        dist = self.distributions(prompts, replies)
        p, values = self.probs_values(dist)
        if self.gain_over_reference:
            if reference is None:
                raise ValueError(f"{self.functional} of a mixture RM needs the SFT reply's atoms")
            values = values - reference.to(values)
        value = fn.apply_functional(
            self.functional,
            p,
            kappa=self.kappa,
            alpha=self.alpha,
            tau=self.tau,
            p_ref=reference,
            values=values,
        )
        # a mixture's raw components have no comparable spread (free constants); its gains do
        identifiable = self.head != "mixture" or self.gain_over_reference
        return RewardOutput(value, dist, fn.std(p, values) if identifiable else None)


class RewardSum(RewardSource):
    """Σ_i w_i r_i over named sources (TRL's ``reward_funcs`` with ``reward_weights``).

    ``per_source`` of the output holds each source's unweighted rewards. A source may leave a
    reply unscored (NaN); the sum skips it, and a reply no source scores is an error. A
    distributional reward model keeps its ``distributions`` and ``std`` (uncertainty scaling,
    the logged distributions) only as the sole source: a sum of sources has no distribution.
    ``reference`` and ``distributions`` are dicts name -> (B, n), for the sources that need one.
    """

    def __init__(self, sources: list[RewardSource], weights: list[float] | None = None):
        if not sources:
            raise ValueError("reward: give at least one reward source")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources):
            raise ValueError(
                f"reward_weights has {len(weights)} values for {len(sources)} reward sources"
            )
        self.sources, self.weights = list(sources), weights
        self.names: list[str] = []
        for source in self.sources:
            name = re.sub(r"[^\w.\-]+", "_", getattr(source, "name", "reward")).strip("_")
            self.names.append(unique_name(name or "reward", self.names))
        self.takes_columns = [_takes(s, "columns") for s in self.sources]  # user sources may not
        self.needs_reference = any(s.needs_reference for s in self.sources)
        self.distributional = len(self.sources) == 1 and self.sources[0].distributional
        self.trainer_state = None  # TRL's trainer_state for reward functions: set per step
        self.log = RewardLog()  # what they log in a training step (``log=True`` calls)

    def check_columns(self, prompts) -> None:
        """Before any reply is sampled: every reward function finds the data-set columns it
        needs among those of ``prompts`` (``prompt_columns``)."""
        available = set(prompt_columns(prompts) or {})
        for source in self.sources:
            if isinstance(source, CallableReward):
                source.check_columns(available)

    def distributions(self, prompts, replies) -> dict[str, torch.Tensor]:
        return {
            name: s.distributions(prompts, replies)
            for name, s in zip(self.names, self.sources, strict=True)
            if s.needs_reference
        }

    def __call__(
        self,
        prompts,
        replies,
        reference=None,
        columns=None,
        completion_ids=None,
        log=True,
        every_reply=False,
    ) -> RewardOutput:
        """``completion_ids``: each reply's token ids, for TRL reward functions. ``log``: what
        they log through ``log_metric``/``log_extra`` goes to ``self.log`` (a training step's
        samples); false: nowhere (an evaluation, ReMax's greedy replies). ``every_reply``: the
        caller refuses a reply no source scored (a judge), so it is not warned about here as
        one training leaves out."""
        sink = self.log if log else RewardLog()
        context = {
            "completion_ids": completion_ids, "trainer_state": self.trainer_state,
            "log_extra": sink.log_extra, "log_metric": sink.log_metric,
        }  # fmt: skip
        outputs = []
        for name, source, takes in zip(self.names, self.sources, self.takes_columns, strict=True):
            ref = (reference or {}).get(name)
            extra = {"columns": columns} if takes and columns is not None else {}
            if isinstance(source, CallableReward):
                extra["context"] = context
            outputs.append(source(prompts, replies, ref, **extra))
        values = torch.stack([o.rewards.detach().float().cpu() for o in outputs], 1)  # (B, S)
        unscored = values.isnan().all(1)
        if unscored.any() and not every_reply:  # TRL's RLOO: advantage 0 (advantages_for)
            i = int(unscored.nonzero()[0, 0])
            logging.getLogger(__name__).warning(  # (``log`` is this call's flag here)
                "%d of %d replies were scored by no reward source (all returned None/NaN; the "
                "first: %r): they take advantage 0 and stay out of the baselines and the means",
                int(unscored.sum()), len(replies), replies[i][:80], extra=EVERY_PROCESS,
            )  # fmt: skip
        total = (values * torch.tensor(self.weights)).nansum(1)  # (B,) NaN: not scored by it
        total[unscored] = float("nan")  # scored by none: NaN, not nansum's 0
        per_source = {n: values[:, i] for i, n in enumerate(self.names)}
        if len(outputs) == 1:
            return RewardOutput(total, outputs[0].distributions, outputs[0].std, per_source)
        return RewardOutput(total, per_source=per_source)


def prompt_columns(prompts) -> dict[str, list] | None:
    """The extra data-set columns of ``prompts``, one value per prompt, or None.

    A prompt (a list of messages) carries its row's other columns as a ``columns`` dict
    attribute when its loader kept them (``load_prompts``); a prompt without one counts as a
    row whose columns are all None.
    """
    rows = [getattr(p, "columns", None) for p in prompts]
    if all(r is None for r in rows):
        return None
    keys = dict.fromkeys(k for r in rows if r for k in r)
    return {k: [(r or {}).get(k) for r in rows] for k in keys}


def _import_module(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        # `distalign` is a console script, so the working directory is not on sys.path as it
        # is for `python -m`: a module file beside the user is looked for there too, after
        # the installed packages (which it cannot shadow)
        cwd = str(Path.cwd())
        if e.name != module.split(".")[0] or cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module)


def import_callable(spec: str) -> Callable:
    """``package.module:function`` -> the function (the module from an installed package, or
    from the working directory)."""
    module, _, name = spec.partition(":")
    try:
        obj = getattr(_import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import reward function {spec!r}: {e}") from None
    if not callable(obj):
        raise ConfigError(f"{spec!r} is not callable")
    return obj


@contextlib.contextmanager
def own_rng() -> Iterator[None]:
    """Run a block without moving the global RNGs (torch CPU and CUDA, Python, NumPy): loading
    a reward model before the policy must not change the policy's LoRA init for a seed."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def load_one_source(spec, **kwargs) -> RewardSource:
    """A folder or hub id (``kwargs`` go to ``RewardModelSource``), ``module:function``, or a
    callable object."""
    if isinstance(spec, RewardSource):
        return spec
    if isinstance(spec, torch.nn.Module):
        raise ValueError(
            f"reward: a loaded {type(spec).__name__}; give its folder or hub id (save_pretrained "
            "it first), so that its tokenizer and chat template load with it"
        )
    if callable(spec):
        return CallableReward(spec)
    if not isinstance(spec, str) or not spec:
        raise ValueError(
            f"reward must be a folder, hub id, module:function or a callable, got {spec!r}"
        )
    if ":" in spec and not Path(spec).exists():
        return CallableReward(import_callable(spec))
    if spec in TRL_BUILT_IN_REWARDS and not Path(spec).exists():
        return CallableReward(trl_built_in_reward(spec), name=spec)
    if "." in spec and "/" not in spec and not Path(spec).exists():  # TRL's module.function
        module, _, name = spec.rpartition(".")
        try:
            _import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module.split(".")[0]:  # no such package; else said by import_callable
                raise ConfigError(
                    f"reward {spec!r}: not a folder, and no module {module!r} to import a "
                    f"function {name!r} from ({e.name!r} is not installed or beside you); a hub "
                    "model id has the form owner/name"
                ) from None
        # the module is there: a missing function is a typo, said as such
        return CallableReward(import_callable(f"{module}:{name}"))
    return RewardModelSource(spec, **kwargs)


def function_spec(spec: Any) -> str | None:
    """``module:function`` for a reward spec ``load_one_source`` reads as a Python function
    (``module:function`` or TRL's ``module.function``), so that two spellings of one function
    compare equal; None for anything else (a folder, a hub id, a callable)."""
    if not isinstance(spec, str) or not spec or Path(spec).exists():
        return None
    if ":" in spec:
        return spec.strip()
    if "." in spec and "/" not in spec and spec not in TRL_BUILT_IN_REWARDS:
        module, _, name = spec.strip().rpartition(".")
        return f"{module}:{name}"
    return None


# the reward functions TRL's `trl rloo` / `trl grpo` scripts take by bare name, and the
# arguments the scripts build the one factory among them with
TRL_BUILT_IN_REWARDS = {
    "accuracy_reward": None,
    "reasoning_accuracy_reward": None,
    "think_format_reward": None,
    "get_soft_overlong_punishment": {"max_completion_len": 1280, "soft_punish_cache": 256},
}


def trl_built_in_reward(name: str) -> Callable:
    """One of TRL's built-in reward functions by its bare name, as TRL's scripts take it
    (from ``trl.rewards``, which needs TRL installed)."""
    if importlib.util.find_spec("trl") is None:
        raise ConfigError(
            f"reward {name!r} is TRL's built-in reward function: install TRL (pip install trl) "
            f"to use it, or give your own as module.function"
        )
    function = getattr(importlib.import_module("trl.rewards"), name)
    factory_args = TRL_BUILT_IN_REWARDS[name]
    return function(**factory_args) if factory_args is not None else function


def load_reward_source(spec, weights: list[float] | None = None, **kwargs) -> RewardSum:
    """One source or a list of them (see ``load_one_source``), weighted by ``weights``
    (default all 1). Draws no random numbers from the global generators."""
    if isinstance(spec, RewardSum):
        return spec
    specs = list(spec) if isinstance(spec, list | tuple) else [spec]
    with own_rng():
        return RewardSum([load_one_source(s, **kwargs) for s in specs], weights)


def run_rewards(saved: dict) -> list:
    """The reward sources a run was trained on, from its saved ``config.yaml``: its
    ``reward`` as a list; null, rl train's default, is the gold judge's reward."""
    reward = saved.get("reward")
    reward = GOLD_REWARD if reward is None else reward
    return reward if isinstance(reward, list) else [reward]


def _takes(source: object, name: str) -> bool:
    """Whether a reward source's call takes the keyword ``name`` (or any keyword)."""
    try:
        params = inspect.signature(source).parameters  # an instance: its __call__
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
