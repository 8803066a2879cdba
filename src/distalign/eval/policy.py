"""Aligned policies vs the SFT policy, on held-out prompts, measured by a held-out judge.

    distalign eval compare --sft smollm2-135m-instruct --policy rloo=runs/rl_rloo_scalar/final \\
        --reward scalar=runs/rm_scalar_cpu/final --run runs/rl_rloo_scalar
    distalign eval compare dataset_name=prompts.jsonl judge=org/other-reward-model \\
        --policy rloo=runs/rl_rloo_scalar/final

Every policy answers the same prompts, ``num_generations`` times each, with the same
decoding settings and seed. The headline is the reward of a judge the policies were not
trained on. On the benchmark's prompts (``dataset_name=gold``) that is by default the gold
judge: gold reward per annotator group and overall; gold win rate vs SFT — the judge's
probability that a reply of the policy is preferred to a reply of SFT to the same prompt,
averaged over every (policy reply, SFT reply) pair of the prompt and then over prompts, with a
bootstrap 95% interval that resamples prompts (the samples of one prompt are not independent).
On any other prompts the gold judge knows nothing, so ``judge`` must name one (any reward
source, as ``rl train``'s ``reward``): its mean reward and its win rate vs SFT — the share of
(policy reply, SFT reply) pairs it scores higher, ties ½ — with the same interval
(``judge_*`` fields, no ``gold_*`` ones). Also per policy: each reward model's mean
(distributional: the expectation) and win rate vs SFT, the same way; KL to SFT estimated on the
policy's own samples (Σ_t log π − log π_SFT); reply length, EOS rate, distinct-1/2.

On a GPU every model (policies, SFT, reward models, the judge's encoder) runs there, the
policies and reward models in bfloat16 (``device``/``dtype`` auto; ``dtype=float32`` gives the
CPU's numbers). The KL pass feeds prefix-shared rows with a 4-D mask (``rl/logprobs.py``), so
flash-attention kernels are refused (docs/gpu.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distalign.checkpoint import run_folder
from distalign.config import ConfigError
from distalign.data.formats import conversation_text
from distalign.data.load import same_source
from distalign.eval.config import CompareConfig
from distalign.metrics import bootstrap_interval, bootstrap_p_value, distinct_n, win_rate
from distalign.models.generate import SamplingConfig, sampling_of
from distalign.models.load import DEFAULT_MODEL, resolve_model

log = logging.getLogger(__name__)


def gold_win_probability(attrs: np.ndarray, attrs_sft: np.ndarray, k: int) -> np.ndarray:
    """Per prompt: the judge's P(policy reply ≻ SFT reply), averaged over all k × k pairs of
    the prompt's replies. ``attrs`` are (prompts · k, n_attr), prompt-major."""
    from distalign.gold.judge import preference_probabilities

    n = len(attrs) // k
    left = np.repeat(attrs, k, axis=0)  # pair (i, j, l): reply j of the policy, l of SFT
    right = np.tile(attrs_sft.reshape(n, k, -1), (1, k, 1)).reshape(n * k * k, -1)
    return preference_probabilities(left, right)[0].reshape(n, k * k).mean(axis=1)


def sample_policy(
    name_or_dir: str, prompts, sampling: SamplingConfig, k: int = 1, data=None, **load
):
    """Replies (texts, token ids, finished) and the prompt ids of one policy; ``load``:
    ``load_policy``'s device, dtype, attn_implementation and chat_template. ``data``: the
    prompts' ``LoadReport``, to fit a policy without a chat template to them
    (``models.templates.fit_rendering``)."""
    from distalign.models.generate import sample_replies
    from distalign.models.load import load_policy
    from distalign.models.templates import fit_rendering

    model, tokenizer = load_policy(name_or_dir, merge_adapter=True, **load)
    if data is not None:
        fit_rendering(tokenizer, data, data.source, f"policy {name_or_dir}")
    out = sample_replies(model, tokenizer, prompts, k=k, config=sampling, progress=True)
    return model, tokenizer, out


def reads_sampled_logprobs(policy) -> bool:
    """Whether ``kl_to_sft`` may take the policy's log-probs from its sampler: every weight in
    float32 and matmuls in full float32 (no autocast, no TF32), so that cached decoding and a
    teacher-forced pass (which applies the forward's logit cap or scale, ``logit_transform``)
    agree to float32 rounding."""
    device = next(policy.parameters()).device
    try:
        autocast = torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4 asks per device family
        autocast = torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
    full_float32 = (
        torch.get_float32_matmul_precision() == "highest"
        and not autocast
        and not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    )
    weights = all(p.dtype == torch.float32 for p in policy.parameters() if p.is_floating_point())
    return full_float32 and weights


@torch.no_grad()
def kl_to_sft(policy, sft, tokenizer, samples, temperature: float) -> np.ndarray:
    """Per reply Σ_t log π(y_t) − log π_SFT(y_t) on the policy's own samples (k1 estimate).
    log π is what the sampler recorded (``Samples.logprobs``: log softmax(logits / T) of the
    unfiltered policy, as ``rl train``'s evaluation reads it), so only SFT runs a pass, where
    that is the teacher-forced value to float32 rounding (``reads_sampled_logprobs``). Else
    (bfloat16, TF32) the policy runs the same teacher-forced pass as SFT: cached decoding and a
    whole-sequence pass round differently, and summed over a reply that difference would read
    as KL."""
    from distalign.rl.logprobs import reply_logprobs

    out, k = [], samples.k
    sampled = reads_sampled_logprobs(policy)
    step = max(1, 8 // k)
    for i in range(0, len(samples.prompt_ids), step):
        ids = samples.prompt_ids[i : i + step]
        groups = [samples.reply_ids[j * k : (j + 1) * k] for j in range(i, i + len(ids))]
        ref, _ = reply_logprobs(sft, ids, groups, tokenizer.pad_token_id, temperature)
        if sampled:
            lp = samples.logprobs[i * k : (i + len(ids)) * k]
            if [len(a) for a in lp] != [len(b) for b in ref]:
                raise ValueError("the samples' log-probs do not match their replies' tokens")
            out += [math.fsum(a) - b.sum().item() for a, b in zip(lp, ref, strict=True)]
        else:
            lp, _ = reply_logprobs(policy, ids, groups, tokenizer.pad_token_id, temperature)
            out += [(a - b).sum().item() for a, b in zip(lp, ref, strict=True)]
    return np.array(out)


def score_all(rewards: dict[str, Any], prompts, texts) -> dict[str, dict[str, np.ndarray]]:
    """Per reward model: the value (scalar or expectation) and, if distributional, the std."""
    out = {}
    for name, source in rewards.items():
        if source.distributional:
            dist = source.distributions(prompts, texts)
            mean, sd = source.expectation_std(dist)
            out[name] = {"value": mean.numpy(), "std": sd.numpy()}
            if source.head == "mixture":  # its atoms, centred within the prompt later
                out[name]["components"] = dist.numpy()
        else:
            out[name] = {"value": source(prompts, texts).rewards.numpy()}
    return out


def judge_replies(judge, prompts, texts, device, completion_ids=None) -> dict[str, np.ndarray]:
    """The judge's view of each reply (``prompts``: the prompt of each reply). ``judge`` None:
    the gold judge's attributes, group rewards, ``gold_mean`` and ``gold_std``; else
    ``{"judge": reward per reply}`` of that reward source, which gets the prompts' data-set
    columns and the replies' token ids (``completion_ids``, the policy's tokens) as
    ``rl train``'s reward does."""
    if judge is None:
        from distalign.gold import judge as gold

        return gold.judge([gold.prompt_text(p) for p in prompts], texts, device)
    from distalign.rl.rewards import RewardFunctionError, prompt_columns

    out = judge(prompts, texts, columns=prompt_columns(prompts), completion_ids=completion_ids,
                log=False, every_reply=True)  # fmt: skip
    values = out.rewards.detach().float().cpu().numpy()
    missing = np.isnan(values)
    if missing.any():  # a win rate needs every reply judged
        i = int(missing.argmax())
        raise RewardFunctionError(f"the judge scored no value for reply {i} (None/NaN): "
                                  f"{texts[i][:80]!r}; a judge must score every reply")  # fmt: skip
    return {"judge": values}


@dataclass
class Measured:
    """One policy's replies (k per prompt, prompt-major) and what is measured on them."""

    samples: Any  # distalign.models.generate.Samples
    judged: dict[str, np.ndarray]  # gold: attributes, group rewards, mean, std; else {"judge"}
    scored: dict[str, dict[str, np.ndarray]]  # per reward model: value (and std)
    kl: np.ndarray  # per reply, KL to SFT (zeros for SFT itself)

    @property
    def gold(self) -> bool:
        """Judged by the gold judge (else by the judge the config names)."""
        return "gold_mean" in self.judged

    @property
    def judge_reward(self) -> np.ndarray:
        """The judge's reward of each reply (gold: the mean over annotator groups)."""
        return self.judged["gold_mean" if self.gold else "judge"]

    def curve_point(self) -> dict[str, float]:
        """Its point of the over-optimisation curve."""
        return {
            "kl": float(self.kl.mean()),
            "gold_mean" if self.gold else "judge_mean": float(self.judge_reward.mean()),
            **{f"rm_{rm}": float(v["value"].mean()) for rm, v in self.scored.items()},
        }


def measure_policy(
    name_or_dir: str, prompts, rewards, cfg: CompareConfig, sft=None, judge=None, data=None
):
    """Sample a policy ``num_generations`` times per prompt; judge (``judge`` None: the gold
    judge), score and (given ``sft``, the SFT model and tokenizer) measure KL to SFT. Returns
    (Measured, model, tokenizer). ``data`` as ``sample_policy`` takes it."""
    k, load = cfg.num_generations, cfg.load_options()
    model, tokenizer, samples = sample_policy(
        name_or_dir, prompts, sampling_of(cfg), k, data,
        chat_template=cfg.chat_template_path, **load,
    )  # fmt: skip
    model.eval()
    per_reply = [p for p in prompts for _ in range(k)]  # the prompt of each reply
    judged = judge_replies(judge, per_reply, samples.texts, load["device"], samples.reply_ids)
    scored = score_all(rewards, per_reply, samples.texts)
    if sft is None:
        kl = np.zeros(len(samples.texts))
    elif cfg.temperature == 0:  # greedy replies are no draws from π: no estimate of KL
        kl = np.full(len(samples.texts), np.nan)
    else:
        kl = kl_to_sft(model, sft[0], sft[1], samples, cfg.temperature)
    return Measured(samples, judged, scored, kl), model, tokenizer


def trained_rewards(cfg: CompareConfig) -> dict[str, list]:
    """RL run folder -> the reward sources it was trained on (``reward`` of its saved
    ``config.yaml``; null, rl train's default, is the gold reward), for the config's runs and
    the folders holding its policies."""
    folders = [
        *cfg.runs,
        *(r for d in cfg.policy_dirs().values() if (r := run_folder(d)) is not None),
    ]
    from distalign.rl.rewards import run_rewards
    from distalign.tracking import read_run_config

    out = {}
    for folder in dict.fromkeys(folders):
        saved = read_run_config(folder)  # None: not a run's config, nothing to learn from it
        if saved is not None and "reward" in saved:
            out[folder] = run_rewards(saved)
    return out


def reward_run(spec: Any) -> Any:
    """A reward model's training run, by which two spellings of one reward compare equal: the
    run folder for the run itself, its ``final/`` or a checkpoint in it (as ``rl train`` takes
    a run's folder for its ``final/``); any other spec as it is."""
    from distalign.rl.rewards import generic_folder

    path = Path(spec).expanduser() if isinstance(spec, str) else None
    if path is None or not path.exists():
        return spec
    path = run = path.resolve()
    while run.parent != run and generic_folder(run.name):
        run = run.parent
    # a run's folder says so (its config or logs); a folder merely named final/ or model/ is
    # its own reward model
    marks = ("config.yaml", "metrics.jsonl", "trainer_state.json", "checkpoints")
    return str(run if any((run / m).exists() for m in marks) else path)


def base_of(policy_dir: str) -> str | None:
    """The model a policy was trained from: its run's ``model_name_or_path`` (the config.yaml
    of the folder or of a run holding it: ``final/``, ``checkpoints/step_N``), or its LoRA
    adapter's ``base_model_name_or_path``; None when neither says."""
    folder = Path(policy_dir)
    if not folder.is_dir():
        return None
    from distalign.tracking import read_run_config

    run = run_folder(policy_dir)
    for saved, key in (
        (read_run_config(run) if run else None, "model_name_or_path"),
        (_json_object(folder / "adapter_config.json"), "base_model_name_or_path"),
    ):
        if isinstance(saved, dict) and isinstance(saved.get(key), str):
            return saved[key]
    return None


def _json_object(path: Path) -> dict | None:
    """A JSON file's object; None when it is missing or is not one."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return saved if isinstance(saved, dict) else None


def _model_key(name: str) -> str:
    """One key for the spellings of one model: an embedded model's alias (also for its cache
    folder, which PEFT records as the base), a folder's absolute path, else the name."""
    from distalign.models.load import EMBEDDED_MODELS

    path = Path(name).expanduser()
    for alias in (name.lower(), path.name.lower() if path.parent.name == "models" else ""):
        if alias in EMBEDDED_MODELS:
            return alias
    return str(path.resolve()) if path.exists() else name.rstrip("/")


def sft_of(cfg: CompareConfig) -> str:
    """``cfg.sft``, or the one model every policy and run names as its base (``base_of``);
    the default model, with a warning, when none names one. Policies or runs from different
    bases need ``sft`` given."""
    if cfg.sft is not None:
        return cfg.sft
    bases = {name: base_of(d) for name, d in cfg.policy_dirs().items()}
    bases |= {str(run): base_of(run) for run in cfg.runs}  # the runs of the curve too
    named = {_model_key(b): b for b in bases.values() if b is not None}
    if len(named) > 1:
        raise ConfigError(
            "the policies were trained from different models ("
            + ", ".join(f"{n}: {b}" for n, b in bases.items() if b is not None)
            + "): give sft=MODEL, the one to compare them with"
        )
    if named:
        (base,) = named.values()
        log.info("SFT policy: %s, the model the policies were trained from", base)
        return base
    if bases:
        log.warning(
            "SFT policy: %s, the default model: no compared policy says what it was trained "
            "from (its run's config.yaml, an adapter's base); sft=MODEL names another",
            DEFAULT_MODEL,
        )
    return DEFAULT_MODEL


def check_judge_held_out(cfg: CompareConfig) -> None:
    """Refuse a judge that a compared run was trained on: its reward is what the policy
    optimised, so it would grade its own exam. A run's folder, its ``final/`` and its
    checkpoints count as that reward (``reward_run``), and a function however it is spelled
    (``module:function`` or ``module.function``)."""
    from distalign.rl.rewards import function_spec

    def key(spec: Any) -> Any:
        return function_spec(spec) or reward_run(spec)

    for folder, rewards in trained_rewards(cfg).items():
        for spec in cfg.judge_specs():
            if any(same_source(key(spec), key(r)) for r in rewards):
                raise ConfigError(
                    f"judge {spec!r} is the reward {folder} was trained on (its config.yaml); "
                    "name a reward model folder, hub id or module:function not used in training"
                )


def trained_on_these_prompts(cfg: CompareConfig) -> list[str]:
    """The compared runs trained on the compared prompts (their config.yaml's data set and
    split, ``evaluates_on_training_data``), each said in a warning: their figures are not
    held out, and the report says so."""
    from distalign.data.load import evaluates_on_training_data
    from distalign.data.mixture import mixture_sources
    from distalign.tracking import read_run_config

    found = []
    for folder in trained_rewards(cfg):
        saved = read_run_config(folder) or {}
        trained = [(saved.get("dataset_name", "gold"), saved.get("dataset_train_split", "train"))]
        if saved.get("datasets"):  # a mixture: each of its sources, some rows of which it took
            trained = mixture_sources(saved["datasets"])
        if any(
            isinstance(source, str)
            and evaluates_on_training_data(source, cfg.dataset_name, split, cfg.dataset_test_split)
            for source, split in trained
        ):
            found.append(str(folder))
            log.warning(
                "the compared prompts (%s, split %s) are those %s was trained on: its figures "
                "are not held out; give held-out prompts (dataset_name, dataset_test_split)",
                cfg.dataset_name, cfg.dataset_test_split, folder,
            )  # fmt: skip
    return found


# what a run's config.yaml holds by its kind: an RL run's and a reward model's keys
_RUN_KINDS = {"runs": ("reward", "an RL run"), "rm_runs": ("head", "a reward-model run")}


def check_inputs(cfg: CompareConfig, policy_dirs: dict[str, str]) -> None:
    """Errors before minutes of sampling: a policy or SFT model that is not there or is a
    classifier; a ``runs``/``rm_runs`` folder that is not a training run's output_dir, or is
    a run of the other kind; an ``output_dir`` that is a file."""
    from distalign.models.load import ModelNotFoundError, refuse_classifier
    from distalign.tracking import read_run_config

    for key, name in [*((f"policy {n}", d) for n, d in policy_dirs.items()), ("sft", cfg.sft)]:
        try:
            folder = resolve_model(name)
        except ModelNotFoundError as e:  # which of the models it is
            raise ModelNotFoundError(f"{key}: {e}") from None
        refuse_classifier(folder, f"{key} ({name})")
    for key, (mark, kind) in _RUN_KINDS.items():
        for folder in getattr(cfg, key):
            saved, path = read_run_config(folder), Path(folder)
            if run_folder(path) != str(path) and not (path / "checkpoints").is_dir():
                there = "is not a training run's output_dir" if path.is_dir() else "does not exist"
                raise ConfigError(f"{key}: {folder} {there}: give the output_dir of {kind}")
            other = next(k for k in _RUN_KINDS if k != key)
            other_mark, other_kind = _RUN_KINDS[other]
            if saved is not None and other_mark in saved and mark not in saved:
                flag = "--" + other.removesuffix("s").replace("_", "-")
                raise ConfigError(f"{key}: {folder} is {other_kind}, not {kind}: give it as "
                                  f"{other} ({flag})")  # fmt: skip
    if cfg.runs and cfg.temperature == 0:
        raise ConfigError("runs: the over-optimisation curve is drawn against KL to SFT, which "
                          "greedy replies (temperature=0) do not estimate: compare runs at a "
                          "temperature above 0")  # fmt: skip
    if Path(cfg.output_dir).exists() and not Path(cfg.output_dir).is_dir():
        raise ConfigError(f"output_dir {cfg.output_dir} is a file, not a folder")
    if not policy_dirs and not cfg.runs:  # SFT's own figures under the judge, say so
        log.warning("no policy (--policy DIR) or RL run (--run DIR) given: SFT alone is "
                    "measured")  # fmt: skip


def trained_on_gold(cfg: CompareConfig) -> list[str]:
    """The compared runs trained on a gold-judge reward (``distalign.gold…``): under the gold
    judge, their figures grade their own training objective (an oracle run, as Gao et al.'s
    gold-reward baseline; not a held-out evaluation)."""
    gold = ("distalign.gold.", "distalign/gold/")
    return [
        folder
        for folder, rewards in trained_rewards(cfg).items()
        if any(isinstance(r, str) and r.startswith(gold) for r in rewards)
    ]


def load_judge(cfg: CompareConfig) -> tuple[Any, str | None]:
    """(the judge as a reward source, its name), or (None, None) for the gold judge."""
    from distalign.rl.rewards import load_reward_source

    if cfg.judge is None:
        for folder in trained_on_gold(cfg):
            log.warning(
                "%s was trained on the gold judge's reward: its gold figures grade its own "
                "training objective (an oracle run), not a held-out evaluation",
                folder,
            )
        return None, None
    check_judge_held_out(cfg)
    try:
        judge = load_reward_source(
            cfg.judge, template_kwargs=cfg.chat_template_kwargs, **cfg.load_options()
        )
    except ConfigError as e:  # its messages speak of a reward source: this one is the judge
        raise ConfigError(f"judge: {e}") from None
    return judge, "+".join(judge.names)


def judge_fields(m: Measured, sft: Measured, k: int, cfg: CompareConfig, judge_name) -> dict:
    """A policy's headline numbers against SFT: the gold judge's (``gold_*``) or the named
    judge's (``judge_*``), each win rate with its bootstrap interval over prompts."""
    from distalign.gold import judge as gold

    if m.gold:
        attrs, attrs_sft = (
            np.stack([x.judged[a] for a in gold.ATTRIBUTES], axis=1) for x in (m, sft)
        )
        p_win = gold_win_probability(attrs, attrs_sft, k)  # per prompt P(policy ≻ SFT)
        keys = ["gold_mean", *(f"gold_{g.name}" for g in gold.GROUPS)]
        return {
            **{key: float(m.judged[key].mean()) for key in keys},
            "gold_win_rate": float(p_win.mean()),
            "gold_win_rate_ci95": bootstrap_interval(p_win, cfg.bootstrap),
            "gold_win_rate_p": bootstrap_p_value(p_win, 0.5, cfg.bootstrap),
            **{
                f"{key}_gain_ci95": gain_interval(m.judged[key], sft.judged[key], k, cfg)
                for key in keys
            },
        }
    wins = win_rate(m.judge_reward.reshape(-1, k), sft.judge_reward.reshape(-1, k))
    return {
        "judge_name": judge_name,
        "judge_mean": float(m.judge_reward.mean()),
        "judge_win_rate": float(wins.mean()),
        "judge_win_rate_ci95": bootstrap_interval(wins, cfg.bootstrap),
        "judge_win_rate_p": bootstrap_p_value(wins, 0.5, cfg.bootstrap),
        "judge_mean_gain_ci95": gain_interval(m.judge_reward, sft.judge_reward, k, cfg),
    }


def gain_interval(values, sft_values, k: int, cfg: CompareConfig) -> tuple[float, float]:
    """95% bootstrap interval of a policy's mean reward minus SFT's, over prompts: each
    prompt's mean over its k replies, paired with SFT's on the same prompt."""
    diff = np.asarray(values, float).reshape(-1, k).mean(1)
    diff -= np.asarray(sft_values, float).reshape(-1, k).mean(1)
    return bootstrap_interval(diff, cfg.bootstrap)


def policy_row(m: Measured, sft: Measured, k: int, cfg: CompareConfig, judge_name) -> dict:
    """Everything measured on one policy: the judge's numbers, the replies', the RMs'."""
    row: dict[str, Any] = {
        **judge_fields(m, sft, k, cfg, judge_name),
        "kl_to_sft": None if cfg.temperature == 0 else float(m.kl.mean()),  # greedy: no KL
        "length_tokens": float(np.mean([len(r) for r in m.samples.reply_ids])),
        "eos_rate": float(np.mean(m.samples.finished)),
        "distinct_1": distinct_n(m.samples.texts, 1),
        "distinct_2": distinct_n(m.samples.texts, 2),
    }
    for rm, vals in m.scored.items():
        sft_vals = sft.scored[rm]["value"]
        wins = win_rate(vals["value"].reshape(-1, k), sft_vals.reshape(-1, k))
        row[f"rm_{rm}_mean"] = float(vals["value"].mean())
        row[f"rm_{rm}_win_rate"] = float(wins.mean())
        row[f"rm_{rm}_win_rate_ci95"] = bootstrap_interval(wins, cfg.bootstrap)
    return row


def spread_vs_disagreement_measures(rewards, measured: dict[str, Measured], k: int):
    """Per distributional RM, over all compared replies: Spearman of its predicted std with the
    raw annotator std (``gold_std``) and with the annotators' rewards centred within the prompt
    (Bradley–Terry fixes each annotator's reward only up to a constant per prompt, so the raw
    std mostly grows with length), and each given reply length in tokens
    (``disagreement.spread_agreement``); None for a scalar RM. Also the points behind them, for the
    report's scatter: per distributional RM, each reply's policy, predicted std and centred
    disagreement. A mixture RM's predicted spread is centred within the prompt like the
    truth's (``eval.rm.mixture_reply_spread_measures``). Returns (measures, points)."""
    from distalign.disagreement import centred_spread, spread_agreement
    from distalign.gold import judge as gold

    ms = list(measured.values())
    attrs = np.concatenate([np.column_stack([m.judged[a] for a in gold.ATTRIBUTES]) for m in ms])
    annotators = gold.annotator_rewards(attrs).T  # (A, R)
    _, _, weights = gold.annotator_weights()
    # a prompt's replies from every policy are centred together: the constant is per prompt
    prompt_ids = np.concatenate([np.arange(len(m.samples.texts)) // k for m in ms])
    lengths = np.concatenate([[len(r) for r in m.samples.reply_ids] for m in ms])
    policy = [name for name, m in measured.items() for _ in m.samples.texts]
    centred = centred_spread(annotators, prompt_ids, weights)
    measures, points = {}, {}
    for rm, source in rewards.items():
        if not source.distributional:
            measures[rm] = None
            continue
        if source.head == "mixture":  # components are fixed up to a constant per prompt too
            components = np.concatenate([m.scored[rm]["components"] for m in ms])
            pred = centred_spread(components.T, prompt_ids)
        else:
            pred = np.concatenate([m.scored[rm]["std"] for m in ms])
        measures[rm] = spread_agreement(pred, annotators, prompt_ids, lengths, weights)
        points[rm] = {"policy": policy, "predicted": pred.tolist(), "centred": centred.tolist()}
    return measures, points


def write_replies(path: Path, measured: dict[str, Measured], prompts, k: int) -> None:
    """Every reply as a JSON line with its judge's reward (``gold_mean`` or
    ``judge_reward``)."""
    with open(path, "w", encoding="utf-8") as f:
        for n, m in measured.items():
            key = "gold_mean" if m.gold else "judge_reward"
            for i, text in enumerate(m.samples.texts):
                row = {
                    "policy": n,
                    "prompt": prompts[i // k],
                    "sample": i % k,
                    "reply": text,
                    key: float(m.judge_reward[i]),
                }
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    """Sample, score and compare; writes compare.json, replies.jsonl and the HTML report."""
    from distalign.config import config_dict
    from distalign.data.load import LoadReport, hub_options
    from distalign.data.prompts import load_prompts
    from distalign.rl.rewards import RewardModelSource

    out_dir = Path(cfg.output_dir)
    judge, judge_name = load_judge(cfg)  # first: a judge that cannot load stops before sampling
    report = LoadReport(source=str(cfg.dataset_name))
    prompts = load_prompts(cfg.dataset_name, cfg.dataset_test_split, **hub_options(cfg),
                           skip_bad_rows=cfg.skip_bad_rows, report=report)  # fmt: skip
    prompts = prompts[: cfg.max_eval_samples]
    if not prompts:
        from distalign.data.files import DataSourceError

        raise DataSourceError(f"{report.source}: no prompts to compare the policies on")
    k = cfg.num_generations
    load = cfg.load_options()
    rewards = {
        name: RewardModelSource(d, template_kwargs=cfg.chat_template_kwargs, **load)
        for name, d in cfg.reward_dirs().items()
    }
    judges = judge.sources if judge is not None else []
    for reward in [*rewards.values(), *judges]:  # one without a chat template: fitted to them
        if hasattr(reward, "fit_rendering"):
            reward.fit_rendering(report, report.source)
    not_held_out = trained_on_these_prompts(cfg)
    policy_dirs = cfg.policy_dirs()
    cfg.sft = sft_of(cfg)  # compare.json's config names the model
    check_inputs(cfg, policy_dirs)
    out_dir.mkdir(parents=True, exist_ok=True)

    measured_sft, *sft = measure_policy(cfg.sft, prompts, rewards, cfg, None, judge, report)
    measured = {"sft": measured_sft}
    for name, d in policy_dirs.items():  # a policy's model is not kept once measured
        measured[name] = measure_policy(d, prompts, rewards, cfg, sft, judge, report)[0]
    results = {n: policy_row(m, measured_sft, k, cfg, judge_name) for n, m in measured.items()}

    # points of the over-optimisation curve already measured: SFT, and each compared policy
    # (a run's final policy is usually also its last checkpoint)
    by_weights = {
        digest: measured[name].curve_point()
        for name, d in policy_dirs.items()
        if (digest := weights_digest(d))
    }
    curves = {  # by the run's folder as given: two runs may share a last folder name
        str(Path(r)): overoptimisation_curve(
            r,
            prompts,
            rewards,
            cfg,
            sft,
            measured_sft.curve_point(),
            by_weights,
            judge,
            report,
        )
        for r in dict.fromkeys(cfg.runs)
    }
    key = "gold" if judge is None else "judge"
    samples_table = [  # the first reply to each of the first prompts
        {
            "prompt": conversation_text(prompts[i]),  # every turn, as the policies read it
            **{
                n: {"reply": m.samples.texts[i * k], key: float(m.judge_reward[i * k])}
                for n, m in measured.items()
            },
        }
        for i in range(min(8, len(prompts)))
    ]
    summary = {
        "config": config_dict(cfg),  # a callable judge or a Dataset by its description
        "prompts": len(prompts),
        "replies_per_policy": len(prompts) * k,
        "policies": results,
    }
    if judge is None and (oracle := trained_on_gold(cfg)):
        summary["trained_on_judge"] = oracle
    if not_held_out:
        summary["trained_on_prompts"] = not_held_out
    if judge is None:  # only the gold judge has annotators whose disagreement to compare
        measures, points = spread_vs_disagreement_measures(rewards, measured, k)
        # the raw Spearman alone, under the key earlier reports read
        summary["std_vs_disagreement_spearman"] = {
            rm: (v["spearman_raw"] if v else None) for rm, v in measures.items()
        }
        summary["std_vs_disagreement"] = measures
        summary["std_vs_disagreement_points"] = points
    summary |= {"overoptimisation": curves, "samples": samples_table}
    from distalign.tracking import json_safe

    # NaN (an interval over one prompt) as JSON's null, which every parser reads
    (out_dir / "compare.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    write_replies(out_dir / "replies.jsonl", measured, prompts, k)
    from distalign.report.html import write_report

    judge_rewards = {n: m.judge_reward for n, m in measured.items()}
    summary["report"] = str(write_report(summary, judge_rewards, out_dir))
    return summary


def weights_digest(folder: str | Path) -> str | None:
    """SHA-256 of a model or adapter folder's weights and configs (None: a hub id or no
    weights)."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        return None
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*config.json"))
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def overoptimisation_curve(
    run_dir: str,
    prompts,
    rewards,
    cfg: CompareConfig,
    sft,
    sft_point: dict,
    measured: dict[str, dict] | None = None,
    judge=None,
    data=None,
) -> list[dict[str, float]]:
    """Judge reward (``judge`` None: gold), RM reward and KL to SFT for every kept checkpoint
    of an RL run (Gao et al. 2022): reward-model reward keeps rising with KL while the held-out
    judge's reward peaks, if it over-optimises. ``sft`` is the SFT (model, tokenizer) and
    ``sft_point`` step 0, already measured by the comparison; a checkpoint whose weights digest
    is in ``measured`` reuses that point (the same weights, prompts and seed give the same
    replies)."""
    points = [{"step": 0, **sft_point}]
    from distalign.checkpoint import kept_steps

    for step, ckpt in kept_steps(run_dir):
        known = measured.get(weights_digest(ckpt) or "") if measured else None
        if known is None:
            checkpoint = measure_policy(str(ckpt), prompts, rewards, cfg, sft, judge, data)[0]
            known = checkpoint.curve_point()
        points.append({"step": step, **known})
    return points
