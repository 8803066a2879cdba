"""The comparison's report: one self-contained HTML page, figures embedded as PNG data URIs.

    distalign report runs/compare        # rebuild report.html from compare.json + replies.jsonl

It takes numbers and draws: the summary ``eval compare`` saves as ``compare.json`` (its config
is a plain dict), the judge's reward of every reply, and the logs of the run folders the config
names. It imports nothing from ``distalign.eval``. The judge is the one the comparison had: the
gold judge (``gold_*`` fields, the benchmark's prompts) or the judge the user named
(``judge_*`` fields and ``judge_name``); the page names it and never says "gold" for another.
The page opens with a verdict per policy (did it beat SFT under that judge, by how much), then
the table, then the figures (``plots.py``). The template is ``template.html.j2``; Jinja2
escapes everything it inserts, so a reply that contains ``<script>`` or ``</table>`` shows as
text and never runs or breaks the page, and ``{{ x }}`` in a reply stays literal (inserted text
is not rendered again).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from distalign.report import plots
from distalign.report.runs import (
    rl_panels,
    rl_run_names,
    rm_evaluation_images,
    rm_evaluations,
    rm_panels,
)

TEMPLATE = "template.html.j2"

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
    "accuracy": "pairwise accuracy",
    "accuracy_expectation": "accuracy by E[R]",
    "accuracy_vs_truth": "accuracy expected over the label draws (like the ceiling)",
    "bayes_ceiling": "Bayes ceiling (best possible accuracy)",
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


def _num(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "—" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    return "—" if math.isnan(v) else f"{v:.{digits}f}"


def _rate(row: Mapping, key: str) -> str:
    """A win rate with its interval: 0.620 [0.565, 0.672]."""
    lo, hi = row.get(f"{key}_ci95") or (None, None)
    return f"{_num(row.get(key))} [{_num(lo)}, {_num(hi)}]"


def _gold_groups(row: Mapping) -> list[str]:
    """Annotator groups with a gold reward column (gold_<group>)."""
    reserved = {"gold_mean", "gold_win_rate", "gold_win_rate_ci95"}
    return [k[5:] for k in row if k.startswith("gold_") and k not in reserved]


def _reward_models(row: Mapping) -> list[str]:
    """Reward models with columns in a row (rm_<name>_mean)."""
    return [k[3:-5] for k in row if k.startswith("rm_") and k.endswith("_mean")]


def verdicts(summary: Mapping) -> list[dict[str, Any]]:
    """Per aligned policy: did it beat SFT under the comparison's judge? ``outcome`` is better
    (the 95% interval of the judge's win rate is above 0.5), unclear (it contains 0.5) or
    worse (below); with the win rate, its interval and the judge's reward against SFT's."""
    policies = summary["policies"]
    key = judge_of(summary).key
    sft = policies.get("sft", {})
    out = []
    for name, row in policies.items():
        if name == "sft":
            continue
        lo, hi = row.get(f"{key}_win_rate_ci95") or (float("nan"), float("nan"))
        if lo > 0.5:
            outcome, where = "better", "above 0.5"
        elif hi < 0.5:
            outcome, where = "worse", "below 0.5"
        else:
            outcome, where = "unclear", "contains 0.5"
        reward, reward_sft = row.get(f"{key}_mean"), sft.get(f"{key}_mean")
        gain = reward - reward_sft if reward is not None and reward_sft is not None else None
        out.append(
            {
                "name": name,
                "outcome": outcome,
                "badge": {"better": "beats SFT", "worse": "worse than SFT"}.get(
                    outcome, "no clear difference"
                ),
                "win_rate": _num(row.get(f"{key}_win_rate")),
                "interval": f"{_num(lo)}–{_num(hi)}",
                "where": where,
                "gain": "—" if gain is None else f"{gain:+.3f}",
                "reward": _num(reward),
                "reward_sft": _num(reward_sft),
                "kl": _num(row.get("kl_to_sft"), 2),
            }
        )
    return out


def _ci(row: Mapping, key: str) -> tuple[str, str]:
    """A table cell: the win rate, and its interval on a second line."""
    lo, hi = row.get(f"{key}_ci95") or (None, None)
    return _num(row.get(key)), f"[{_num(lo)}, {_num(hi)}]"


def _table(policies: Mapping, columns: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """Column groups [(group, span)], labels, and a row per policy from (group, label, cell)
    columns; a cell is a string, or (value, interval) drawn on two lines."""
    groups: list[list] = []
    for group, _, _ in columns:
        if groups and groups[-1][0] == group:
            groups[-1][1] += 1
        else:
            groups.append([group, 1])
    return {
        "groups": groups,
        "labels": [label for _, label, _ in columns],
        "rows": [[name, *(cell(r) for _, _, cell in columns)] for name, r in policies.items()],
    }


def measures_table(summary: Mapping) -> dict[str, Any]:
    """The table of the judge's measures and the replies' statistics, a row per policy."""
    first = next(iter(summary["policies"].values()), {})
    judge = judge_of(summary)
    if judge.gold:
        gold = "gold judge (the truth)"
        columns: list[tuple[str, str, Any]] = [  # (group, label, cell of a row)
            (gold, "gold win rate vs SFT [95% CI]", lambda r: _ci(r, "gold_win_rate")),
            (gold, "gold reward (all annotators)", lambda r: _num(r.get("gold_mean"))),
        ]
        columns += [
            (gold, f"gold reward ({g} annotators)", lambda r, g=g: _num(r.get(f"gold_{g}")))
            for g in _gold_groups(first)
        ]
    else:
        group = f"{judge.label} (held out)"
        columns = [
            (group, "judge win rate vs SFT [95% CI]", lambda r: _ci(r, "judge_win_rate")),
            (group, "judge reward (its own scale)", lambda r: _num(r.get("judge_mean"))),
        ]
    columns += [
        ("replies", "KL to SFT (nats)", lambda r: _num(r.get("kl_to_sft"), 2)),
        ("replies", "reply length (tokens)", lambda r: _num(r.get("length_tokens"), 1)),
        ("replies", "share ended with EOS", lambda r: _num(r.get("eos_rate"), 2)),
        ("replies", "distinct words (share)", lambda r: _num(r.get("distinct_1"), 2)),
        ("replies", "distinct word pairs (share)", lambda r: _num(r.get("distinct_2"), 2)),
    ]
    return _table(summary["policies"], columns)


def reward_model_table(summary: Mapping) -> dict[str, Any] | None:
    """The reward models' view, a row per policy: each RM's mean reward (on its own scale)
    and its win rate vs SFT. None without reward models."""
    rms = _reward_models(next(iter(summary["policies"].values()), {}))
    if not rms:
        return None
    columns: list[tuple[str, str, Any]] = []
    for rm in rms:
        columns += [
            (f"RM {rm}", "reward (its own scale)", lambda r, rm=rm: _num(r.get(f"rm_{rm}_mean"))),
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
            _rate(r, f"{key}_win_rate"),
            _num(r.get(f"{key}_mean")),
            _num(r.get("kl_to_sft"), 2),
            _num(r.get("length_tokens"), 0),
        ]
        for name, r in summary["policies"].items()
    ]


def decoding(config: Mapping) -> str:
    """The decoding settings in words."""
    top_k = config.get("top_k") or 0
    return (
        f"temperature {config.get('temperature')}, top-p {config.get('top_p')}, "
        f"top-k {top_k if top_k else 'off'}, at most {config.get('max_completion_length')} "
        f"tokens per reply, seed {config.get('seed')}"
    )


def _figure(
    title: str, png: bytes | None, caption: str = "", notes: list[str] | None = None
) -> list[dict[str, Any]]:
    """A section of the page: a figure (base64 PNG) with its caption, and ``notes``, the
    numbers of panels with one point only. Nothing when there is neither."""
    if png is None and not notes:
        return []
    encoded = base64.b64encode(png).decode() if png is not None else None
    return [{"title": title, "caption": caption, "png": encoded, "notes": notes or []}]


def _singles(panels: list[plots.Panel]) -> list[str]:
    """A panel with one point per series, as a sentence instead of a plot."""
    out = []
    for p in panels:
        values = ", ".join(
            f"{n} {_num(pts[0][1])} at step {pts[0][0]}" for n, pts in p.series.items() if pts
        )
        levels = "".join(f" ({label} {_num(v)})" for label, v in p.levels.items())
        out.append(f"{p.title}, {p.ylabel}: {values}{levels}")
    return out


def figures(summary: Mapping, config: Mapping, judge_rewards: Mapping | None) -> list[dict]:
    """The report's figures: [{title, caption, png (base64 or None), notes}]."""
    policies = summary["policies"]
    judge = judge_of(summary)
    colors = plots.policy_colors(list(policies))
    rms = _reward_models(next(iter(policies.values()), {}))
    judges = {judge.label: f"{judge.key}_win_rate"}
    judges |= {f"RM {rm}": f"rm_{rm}_win_rate" for rm in rms}
    intervals = {
        title: {
            name: (r[key], *(r.get(f"{key}_ci95") or (float("nan"),) * 2))
            for name, r in policies.items()
            if name != "sft" and r.get(key) is not None
        }
        for title, key in judges.items()
    }
    out = _figure(
        "Win rate against SFT",
        plots.win_rate_intervals(intervals, colors),
        "Dot: the probability that a reply of the policy is preferred to an SFT reply to the "
        "same prompt; bar: 95% bootstrap interval over prompts. Right of the dotted 0.5 line: "
        f"better than SFT. {judge.standing}; reward models are what was optimised.",
    )
    if judge_rewards:
        out += _figure(
            f"{judge.reward.capitalize()} of every reply"
            + ("" if judge.gold else f" ({judge.label})"),
            plots.reward_per_reply(dict(judge_rewards), colors, judge.reply_axis),
            "Box: quartiles; diamond: mean; dots: single replies.",
        )
    out += _figure(
        "Predicted spread against the annotators' disagreement",
        plots.spread_vs_disagreement(summary.get("std_vs_disagreement_points") or {}, colors),
        "One dot per compared reply. x: the distributional reward model's predicted std; y: how "
        "much the annotators disagree about the reply, each annotator's reward centred within "
        "the prompt (the part of the disagreement that preference labels can reveal). A model "
        "that sees disagreement puts the dots on a rising band.",
    )
    run_names = rl_run_names(config)
    by_folder = {Path(d).name: name for d, name in run_names.items()}  # curves are by folder
    curves = {
        by_folder.get(run, run): pts
        for run, pts in (summary.get("overoptimisation") or {}).items()
        if pts
    }
    out += _figure(
        "Over-optimisation: reward against KL to SFT over a run's checkpoints",
        plots.overoptimisation(curves, rms, colors, judge.name),
        f"Gao et al. 2022: a reward model's reward keeps rising with KL while the {judge.reward} "
        "flattens or falls once the policy over-optimises. One panel per reward; step 0 is SFT.",
        [
            f"{run}: step {pts[0]['step']} only ({judge.reward} "
            f"{_num(pts[0].get(f'{judge.key}_mean'))}), no checkpoints to draw a curve"
            for run, pts in curves.items()
            if len(pts) == 1
        ],
    )
    drawn, single = plots.single_point_panels(rl_panels(run_names, _reward_dirs(config)))
    out += _figure(
        "REINFORCE training",
        plots.training_curves(drawn, colors),
        "Gold reward on the run's held-out prompts, the reward it was trained on (one panel per "
        "reward model: their scales differ), KL to SFT and reply length per training step.",
        _singles(single),
    )
    drawn, single = plots.single_point_panels(rm_panels(config.get("rm_runs", [])))
    out += _figure(
        "Reward-model training",
        plots.training_curves(drawn),
        "Loss per model (losses of different heads are different quantities), pairwise "
        "accuracy on training batches and on held-out pairs.",
        _singles(single),
    )
    for title, png in rm_evaluation_images(config.get("rm_runs", [])):
        out += _figure(title, png)
    return out


def _reward_dirs(config: Mapping) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config.get("rewards", []) if "=" in item)


def _rm_table(config: Mapping) -> dict[str, Any] | None:
    evals = rm_evaluations(config.get("rm_runs", []))
    if not evals:
        return None
    keys = list(dict.fromkeys(k for e in evals.values() for k in e))
    return {
        "labels": [RM_EVAL_LABELS.get(k, k.replace("_", " ")) for k in keys],
        "rows": [[name, *(_num(e.get(k)) for k in keys)] for name, e in evals.items()],
    }


def write_report(
    summary: Mapping, judge_rewards: Mapping[str, Sequence[float]] | None, out_dir: str | Path
) -> Path:
    """Write ``out_dir/report.html`` from a comparison's summary (as saved in
    ``compare.json``; its ``config`` may use the old key names) and the judge's reward (gold,
    or the judge the comparison named) of every reply per policy (None: no distribution
    figure). Returns the page's path."""
    judge = judge_of(summary)
    config = compare_config(summary.get("config", {}))
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent),
        autoescape=True,  # model text must never become markup
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    per_prompt = config.get("num_generations", 1)
    policies = summary["policies"]
    html = env.get_template(TEMPLATE).render(
        prompts=summary.get("prompts"),
        per_prompt=per_prompt,
        dataset=f"{config.get('dataset_name', '?')}/{config.get('dataset_test_split', '?')}",
        decoding=decoding(config),
        sft=config.get("sft", "SFT"),
        judge=judge,
        verdicts=verdicts(summary),
        table=measures_table(summary),
        rm_view=reward_model_table(summary),
        spread=summary.get("std_vs_disagreement_spearman") or {},
        spread_measures=summary.get("std_vs_disagreement") or {},
        figures=figures(summary, config, judge_rewards),
        rm_table=_rm_table(config),
        names=list(policies),
        samples=[
            {
                "prompt": s.get("prompt", ""),
                "replies": [
                    (n, s[n]["reply"], _num(s[n].get(judge.key))) for n in policies if n in s
                ],
            }
            for s in summary.get("samples", [])
        ],
        numbers=json.dumps(
            {
                k: v
                for k, v in summary.items()
                if k not in ("samples", "std_vs_disagreement_points")
            },
            indent=1,
            default=str,
        ),
        fmt=_num,
    )
    path = Path(out_dir) / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def rebuild_report(compare_dir: str | Path) -> Path:
    """Write ``report.html`` again from a comparison's saved numbers (``compare.json``, and
    ``replies.jsonl`` for the judge's reward of every reply) and the run folders its config
    names, without sampling or scoring anything. Comparisons under the gold judge and under
    a named one alike, old ones included."""
    compare_dir = Path(compare_dir)
    numbers = compare_dir / "compare.json"
    if not numbers.is_file():
        raise FileNotFoundError(f"{numbers} not found: give the output_dir of `eval compare`")
    summary = json.loads(numbers.read_text())
    key = judge_of(summary).reply_key
    rewards: dict[str, list[float]] = {}
    replies = compare_dir / "replies.jsonl"
    if replies.is_file():
        with open(replies, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    rewards.setdefault(row["policy"], []).append(row[key])
    return write_report(summary, rewards or None, compare_dir)
