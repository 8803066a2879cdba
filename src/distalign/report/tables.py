"""The comparison's numbers in words and tables: whose judge the headline is, a verdict per
policy, the measures and reward-model tables and the terminal headline (``report/html.py``
lays them out on the page; ``distalign eval compare`` prints the headline)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distalign.report.runs import rm_evaluations

# keys of a saved comparison config before the renames (issue 15), and their names now
RENAMED = {
    "prompts": "dataset_name",
    "split": "dataset_test_split",
    "count": "max_eval_samples",
    "samples_per_prompt": "num_generations",
}
RENAMED_SAMPLING = {"max_new_tokens": "max_completion_length", "batch_size": "sampling_batch_size"}

RM_EVAL_LABELS = {
    "contested_share": "share of contested pairs (groups' majorities differ)",
    "contested_pairs": "contested pairs",
    "contested_detector": "contested-pair score",
    "contested_auroc": "AUROC flagging contested pairs",
    "contested_auroc_margin": "AUROC flagging contested pairs by −|margin|",
    "contested_auroc_spread": "AUROC flagging contested pairs by predicted spread",
    "contested_auroc_ratio": "AUROC flagging contested pairs by −|margin| / spread",
    "spread_replies": "held-out replies (distinct)",
    "spread_spearman_centred": "Spearman(predicted std, disagreement centred in prompt)",
    "spread_spearman_raw": "Spearman(predicted std, raw annotator std)",
    "spread_partial_centred_given_length": "the same centred, given length (partial)",
    "spread_partial_raw_given_length": "the same raw, given length (partial)",
    "spread_raw_vs_length": "Spearman(raw annotator std, length)",
    "spread_centred_vs_length": "Spearman(centred disagreement, length)",
    "spread_predicted_vs_length": "Spearman(predicted std, length)",
    "accuracy": "pairwise accuracy (observed: one draw of the labels)",
    "loss": "held-out loss: −log P(chosen ≻ rejected) under the head's own model (nats; "
    "differs between heads)",
    "accuracy_expectation": "accuracy by E[R]",
    "accuracy_vs_truth": "accuracy expected over the label draws (like the ceiling)",
    "bayes_ceiling": "Bayes ceiling (best accuracy expected over the label draws; "
    "an observed accuracy on few pairs can pass it)",
    "margin": "mean margin r(chosen) − r(rejected)",
    "reward_mean": "mean reward",
    "reward_std": "std of reward",
    "ece": "calibration error (ECE)",
    "p_greater_mean": "mean P(chosen > rejected)",
    "entropy": "mean entropy (nats)",
    "unimodal_share": "share unimodal",
    "std_mean": "mean predicted std",
    "pairs": "pairs",
    "data": "data",
    "split": "split",
    "head": "head",
}


@dataclass(frozen=True)
class Judge:
    """Whose reward a comparison's headline is, and how the page names it."""

    key: str  # prefix of its fields in a policy row: gold | judge
    name: str | None = None  # the named judge's (None: the gold judge)

    @property
    def gold(self) -> bool:
        return self.key == "gold"

    @property
    def label(self) -> str:
        """Its name on the page: gold judge, or judge <name>."""
        return "gold judge" if self.gold else f"judge {self.name}"

    @property
    def under(self) -> str:
        """As in "did it beat SFT under the judge <name>"."""
        return f"the {self.label}"

    @property
    def reward(self) -> str:
        """What its reward is called: gold reward or judge reward."""
        return f"{self.key} reward"

    @property
    def reply_axis(self) -> str:
        """The axis of its reward per reply, with the scale."""
        if self.gold:
            return "gold reward of a reply (judge's score, mean over annotators)"
        return f"{self.label} reward of a reply (its own scale)"

    @property
    def standing(self) -> str:
        """What its word is worth, beside the reward models that were optimised."""
        if self.gold:
            return "The gold judge is the truth"
        return f"The {self.label} is held out (not trained on)"

    @property
    def reply_key(self) -> str:
        """Its reward per reply in ``replies.jsonl``."""
        return "gold_mean" if self.gold else "judge_reward"


def judge_of(summary: Mapping) -> Judge:
    """The comparison's judge: the named one where the rows have ``judge_*`` fields, else the
    gold judge (every comparison before the judge key, and the benchmark's default)."""
    for row in summary["policies"].values():
        if "judge_win_rate" in row or "judge_mean" in row:
            return Judge("judge", str(row.get("judge_name") or "(unnamed)"))
    return Judge("gold")


def compare_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved comparison config with today's key names: older ``compare.json`` files have
    prompts, split, count, samples_per_prompt and a nested ``sampling`` (max_new_tokens,
    batch_size); their values are kept under the new names."""
    out = {RENAMED.get(k, k): v for k, v in config.items() if k != "sampling"}
    for k, v in (config.get("sampling") or {}).items():
        out.setdefault(RENAMED_SAMPLING.get(k, k), v)
    return out


def number(v: Any, digits: int = 3) -> str:
    """A value as the page shows it: 3 decimals (``digits``), — for None and NaN."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "—" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    return "—" if math.isnan(v) else f"{v:.{digits}f}"


def _rate(row: Mapping, key: str) -> str:
    """A win rate with its interval: 0.620 [0.565, 0.672]."""
    lo, hi = row.get(f"{key}_ci95") or (None, None)
    return f"{number(row.get(key))} [{number(lo)}, {number(hi)}]"


def _gold_groups(row: Mapping) -> list[str]:
    """Annotator groups with a gold reward column (gold_<group>)."""
    reserved = {"gold_mean", "gold_win_rate", "gold_win_rate_p"}
    keys = [k for k in row if k.startswith("gold_") and not k.endswith("_ci95")]
    return [k[5:] for k in keys if k not in reserved]


def _gain(row: Mapping, sft: Mapping, key: str) -> tuple[str, str] | str:
    """A reward cell: the mean, and on a second line its gain over SFT with the 95% interval
    (paired over prompts) where the comparison saved one."""
    value = number(row.get(key))
    interval = row.get(f"{key}_gain_ci95")
    if row is sft or not interval or row.get(key) is None or sft.get(key) is None:
        return value
    return value, f"{row[key] - sft[key]:+.3f} {_signed(interval)}"


def _signed(interval) -> str:
    """A gain's interval as the page writes it: [+0.313, +0.786] (— where none was drawn)."""
    lo, hi = interval
    if any(v is None or math.isnan(v) for v in (lo, hi)):
        return "[—]"
    return f"[{lo:+.3f}, {hi:+.3f}]"


def reward_models(row: Mapping) -> list[str]:
    """Reward models with columns in a row (rm_<name>_mean)."""
    return [k[3:-5] for k in row if k.startswith("rm_") and k.endswith("_mean")]


MIN_VERDICT_PROMPTS = 10  # a bootstrap over fewer prompts has too few distinct resamples


def family_p_values(summary: Mapping, oracles: Mapping[str, str]) -> dict[str, float] | None:
    """Aligned policy -> the p-value of its judge's win rate against ½ after Holm's
    correction over the comparison's aligned policies (``metrics.holm``): several policies
    each claimed better than SFT at 95% would together err more often than 5%. Oracle runs
    (trained on the judge: their verdict grades the training objective) are left out of the
    family; a policy whose p-value is missing counts as p = 1 (no claim). Empty with fewer
    than two policies in the family; None where none has a p-value (a comparison saved before
    they were: its verdicts are uncorrected, and say so). ``oracles``: ``oracle_policies``."""
    from distalign.metrics import holm

    key = judge_of(summary).key
    rows = {n: r for n, r in summary["policies"].items() if n != "sft" and n not in oracles}
    p = [rows[n].get(f"{key}_win_rate_p") for n in rows]
    p = [v if isinstance(v, int | float) and not math.isnan(v) else None for v in p]
    if len(rows) < 2:
        return {}
    if all(v is None for v in p):
        return None
    return dict(zip(rows, holm([1.0 if v is None else v for v in p]).tolist(), strict=True))


def _p(value: float, resamples: int | None) -> str:
    """An adjusted bootstrap p-value as the page writes it: below one resample's share it is
    "< 1/n", not 0."""
    floor = 1 / resamples if resamples else 0.001
    return f"< {floor:.2g}" if value < floor else f"= {value:.3f}"


def verdicts(summary: Mapping) -> list[dict[str, Any]]:
    """Per aligned policy: did it beat SFT under the comparison's judge? ``outcome`` is better
    (the 95% interval of the judge's win rate is above 0.5), unclear (it contains 0.5) or
    worse (below); with the win rate, its interval and the judge's reward against SFT's.
    With several policies, a verdict must also hold after Holm's correction over them
    (``family_p_values``: adjusted p < 0.05), else it is unclear and says so.
    Over fewer than ``MIN_VERDICT_PROMPTS`` prompts (the interval resamples prompts: one
    prompt gives a zero-width one) it is unclear whatever the interval says."""
    policies = summary["policies"]
    prompts = summary.get("prompts")
    few = isinstance(prompts, int) and prompts < MIN_VERDICT_PROMPTS
    key = judge_of(summary).key
    sft = policies.get("sft", {})
    oracles = oracle_policies(summary)
    family = family_p_values(summary, oracles)
    out = []
    for name, row in policies.items():
        if name == "sft":
            continue
        lo, hi = row.get(f"{key}_win_rate_ci95") or (float("nan"), float("nan"))
        lo, hi = (float("nan") if v is None else v for v in (lo, hi))
        if few:
            outcome, where = "unclear", f"over {prompts} prompts, too few to judge by"
        elif math.isnan(lo) or math.isnan(hi):
            outcome, where = "unclear", "none saved"
        elif lo > 0.5:
            outcome, where = "better", "above 0.5"
        elif hi < 0.5:
            outcome, where = "worse", "below 0.5"
        else:
            outcome, where = "unclear", "contains 0.5"
        if outcome != "unclear" and family and name in family:
            p = _p(family[name], (summary.get("config") or {}).get("bootstrap"))
            if family[name] < 0.05:
                where = f"{where}; Holm-adjusted p {p} over {len(family)} policies"
            else:
                outcome = "unclear"
                where = (f"{where}, but not after Holm's correction over {len(family)} "
                         f"policies (adjusted p {p})")  # fmt: skip
        elif outcome != "unclear" and family is None:
            where = f"{where} (uncorrected for several policies: saved before p-values were)"
        badge = {"better": "beats SFT", "worse": "worse than SFT"}.get(outcome)
        if badge is None:
            badge = "too few prompts" if few else "no clear difference"
            badge = "no interval" if where == "none saved" else badge
        reward, reward_sft = row.get(f"{key}_mean"), sft.get(f"{key}_mean")
        gain = reward - reward_sft if reward is not None and reward_sft is not None else None
        out.append(
            {
                "name": name,
                "outcome": outcome,
                "badge": badge,
                "oracle": name in oracles,
                "family": len(family or {}),  # policies Holm's correction ran over
                "win_rate": number(row.get(f"{key}_win_rate")),
                "interval": "—" if math.isnan(lo + hi) else f"{number(lo)}–{number(hi)}",
                "where": where,
                "gain": "—" if gain is None else f"{gain:+.3f}",
                "gain_interval": (
                    _signed(row[f"{key}_mean_gain_ci95"])
                    if row.get(f"{key}_mean_gain_ci95") and gain is not None
                    else ""
                ),
                "reward": number(reward),
                "reward_sft": number(reward_sft),
                "kl": number(row.get("kl_to_sft"), 2),
            }
        )
    return out


def oracle_policies(summary: Mapping) -> dict[str, str]:
    """Compared policy -> its run, for the policies whose run was trained on the gold judge's
    reward (the saved ``trained_on_judge`` run folders: the policy's folder is such a run or
    inside one)."""
    from distalign.rl.rewards import named_folders

    config = compare_config(summary.get("config") or {})
    folders = named_folders(config.get("policies") or [], taken={"sft"}, strict=False)
    out = {}
    for run in summary.get("trained_on_judge") or []:
        r = Path(run).expanduser().resolve()
        for name, folder in folders.items():
            if Path(folder).expanduser().resolve().is_relative_to(r):
                out.setdefault(name, run)
    return out


def _ci(row: Mapping, key: str) -> tuple[str, str]:
    """A table cell: the win rate, and its interval on a second line."""
    lo, hi = row.get(f"{key}_ci95") or (None, None)
    return number(row.get(key)), f"[{number(lo)}, {number(hi)}]"


def _table(
    policies: Mapping, columns: list[tuple[str, str, Any]], names: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Column groups [(group, span)], labels, and a row per policy from (group, label, cell)
    columns; a cell is a string, or (value, interval) drawn on two lines. ``names``: a row's
    label where it is not the policy's name. SFT's win rates read "reference"."""
    names = names or {}
    groups: list[list] = []
    for group, _, _ in columns:
        if groups and groups[-1][0] == group:
            groups[-1][1] += 1
        else:
            groups.append([group, 1])

    def shown(name: str, label: str, cell: Any, row: Mapping) -> Any:
        if name == "sft" and "win rate" in label:
            return "reference", "(SFT itself)"
        return cell(row)

    return {
        "groups": groups,
        "labels": [label for _, label, _ in columns],
        "rows": [
            [names.get(name, name), *(shown(name, label, cell, r) for _, label, cell in columns)]
            for name, r in policies.items()
        ],
    }


def measures_table(summary: Mapping) -> dict[str, Any]:
    """The table of the judge's measures and the replies' statistics, a row per policy."""
    first = next(iter(summary["policies"].values()), {})
    sft = summary["policies"].get("sft", {})
    judge = judge_of(summary)
    if judge.gold:
        gold = "gold judge (the truth)"
        columns: list[tuple[str, str, Any]] = [  # (group, label, cell of a row)
            (gold, "gold win rate vs SFT [95% CI]", lambda r: _ci(r, "gold_win_rate")),
            (gold, "gold reward (all annotators); vs SFT [95% CI]",
             lambda r: _gain(r, sft, "gold_mean")),
        ]  # fmt: skip
        columns += [
            (gold, f"gold reward ({g} annotators)", lambda r, g=g: _gain(r, sft, f"gold_{g}"))
            for g in _gold_groups(first)
        ]
    else:
        group = f"{judge.label} (held out)"
        columns = [
            (group, "judge win rate vs SFT [95% CI]", lambda r: _ci(r, "judge_win_rate")),
            (group, "judge reward (its own scale); vs SFT [95% CI]",
             lambda r: _gain(r, sft, "judge_mean")),
        ]  # fmt: skip
    columns += [
        ("replies", "KL to SFT (nats)", lambda r: number(r.get("kl_to_sft"), 2)),
        ("replies", "reply length (tokens)", lambda r: number(r.get("length_tokens"), 1)),
        ("replies", "share ended with EOS", lambda r: number(r.get("eos_rate"), 2)),
        ("replies", "distinct words (share)", lambda r: number(r.get("distinct_1"), 2)),
        ("replies", "distinct word pairs (share)", lambda r: number(r.get("distinct_2"), 2)),
    ]
    oracles = {name: f"{name} (oracle)" for name in oracle_policies(summary)}
    return _table(summary["policies"], columns, oracles)


def reward_model_table(summary: Mapping) -> dict[str, Any] | None:
    """The reward models' view, a row per policy: each RM's mean reward (on its own scale)
    and its win rate vs SFT. None without reward models."""
    rms = reward_models(next(iter(summary["policies"].values()), {}))
    if not rms:
        return None
    columns: list[tuple[str, str, Any]] = []
    for rm in rms:
        columns += [
            (f"RM {rm}", "reward (its own scale)", lambda r, rm=rm: number(r.get(f"rm_{rm}_mean"))),
            (f"RM {rm}", "win rate vs SFT [95% CI]", lambda r, rm=rm: _ci(r, f"rm_{rm}_win_rate")),
        ]
    return _table(summary["policies"], columns)


def headline_columns(summary: Mapping) -> list[str]:
    """The headers of ``headline_rows``, naming the comparison's judge."""
    judge = judge_of(summary)
    if judge.gold:
        return ["policy", "gold win rate [95% CI]", "gold reward", "KL to SFT", "tokens"]
    rate, reward = f"win rate under {judge.label} [95% CI]", f"{judge.label} reward"
    return ["policy", rate, reward, "KL to SFT", "tokens"]


def headline_rows(summary: Mapping) -> list[list[str]]:
    """Rows for a terminal table: policy, the judge's win rate [95% CI], the judge's reward
    (gold, or the judge the comparison named: ``headline_columns``), KL to SFT (nats), reply
    length (tokens)."""
    key = judge_of(summary).key
    return [
        [
            name,
            "reference" if name == "sft" else _rate(r, f"{key}_win_rate"),
            number(r.get(f"{key}_mean")),
            number(r.get("kl_to_sft"), 2),
            number(r.get("length_tokens"), 0),
        ]
        for name, r in summary["policies"].items()
    ]


def rm_eval_table(config: Mapping) -> dict[str, Any] | None:
    """The held-out metrics of the reward-model runs the config names (``rm_runs``), a row
    per run. None without them."""
    evals = rm_evaluations(config.get("rm_runs", []))
    if not evals:
        return None
    keys = [k for k in dict.fromkeys(k for e in evals.values() for k in e)
            if not k.endswith("_ci95")]  # fmt: skip

    def interval(e: Mapping, key: str) -> tuple | list | None:  # its 95% interval, if any
        ci = e.get(f"{key}_ci95")
        return ci if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci else None

    def cell(e: Mapping, key: str) -> str:  # the value, and its 95% interval where it has one
        if ci := interval(e, key):
            return f"{number(e.get(key))} [{number(ci[0])}, {number(ci[1])}]"
        return number(e.get(key))

    return {
        "labels": [RM_EVAL_LABELS.get(k, k.replace("_", " ")) for k in keys],
        "rows": [[name, *(cell(e, k) for k in keys)] for name, e in evals.items()],
        "intervals": any(interval(e, k) for e in evals.values() for k in keys),
    }
