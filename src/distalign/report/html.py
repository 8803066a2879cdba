"""The comparison's report: one self-contained HTML page, figures embedded as PNG data URIs.

    distalign report runs/compare        # rebuild report.html from compare.json + replies.jsonl

It takes numbers and draws: the summary ``eval compare`` saves as ``compare.json`` (its config
is a plain dict), the judge's reward of every reply, and the logs of the run folders the config
names. It imports nothing from ``distalign.eval``. The judge is the one the comparison had: the
gold judge (``gold_*`` fields, the benchmark's prompts) or the judge the user named
(``judge_*`` fields and ``judge_name``); the page names it and never says "gold" for another.
The page opens with a verdict per policy (did it beat SFT under that judge, by how much), then
the tables (both from ``tables.py``), then the figures (``plots.py``). The template is
``template.html.j2``; Jinja2 escapes everything it inserts, so a reply that contains
``<script>`` or ``</table>`` shows as text and never runs or breaks the page, and ``{{ x }}``
in a reply stays literal (inserted text is not rendered again).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from distalign.report import plots
from distalign.report.runs import rl_panels, rl_run_names, rm_evaluation_images, rm_panels
from distalign.report.tables import (
    compare_config,
    judge_of,
    measures_table,
    number,
    oracle_policies,
    reward_model_table,
    reward_models,
    rm_eval_table,
    verdicts,
)

log = logging.getLogger(__name__)
TEMPLATE = "template.html.j2"


def decoding(config: Mapping) -> str:
    """The decoding settings in words."""
    top_k = config.get("top_k") or 0
    return (
        f"temperature {config.get('temperature')}, top-p {config.get('top_p')}, "
        f"top-k {top_k if top_k else 'off'}, at most {config.get('max_completion_length')} "
        f"tokens per reply, seed {config.get('seed')}"
    )


def kl_note(config: Mapping) -> Markup:
    """What the KL to SFT column is, under the decoding the replies were sampled with."""
    temperature = config.get("temperature", 1.0)
    if temperature == 0:
        return Markup("No KL to SFT: greedy replies (temperature 0) are not draws from a "
                      "policy's distribution, so they estimate none.")  # fmt: skip
    what = Markup(
        "KL to SFT: Σ<sub>t</sub> log π(y<sub>t</sub>) − log π<sub>SFT</sub>(y<sub>t</sub>) "
        "summed over a reply, averaged over the policy's own replies"
    )
    if temperature != 1:
        what += f", of both models at temperature {temperature} (log softmax(logits / T))"
    if (config.get("top_p") or 1.0) < 1 or (config.get("top_k") or 0) > 0:
        what += (". top-p/top-k filter the replies while log π is the unfiltered policy's, so "
                 "this reads the KL only approximately")  # fmt: skip
    return what + "."


SINGLES = "Measured once only, so given as numbers rather than drawn:"


def _figure(
    title: str,
    png: bytes | None,
    caption: str = "",
    notes: list[str] | None = None,
    heading: str = SINGLES,
) -> list[dict[str, Any]]:
    """A section of the page: a figure (base64 PNG) with its caption, and ``notes`` under
    ``heading`` (by default the numbers of panels with one point only). Nothing when there is
    neither."""
    if png is None and not notes:
        return []
    encoded = base64.b64encode(png).decode() if png is not None else None
    return [
        {"title": title, "caption": caption, "png": encoded, "notes": notes or [],
         "heading": heading}
    ]  # fmt: skip


def _oracle_name(run: str, oracles: Mapping[str, str]) -> str:
    """An oracle run by the policies it made (and its folder), else by its folder."""
    names = ", ".join(n for n, r in oracles.items() if r == run)
    return f"{names} (run {run})" if names else run


def _singles(panels: list[plots.Panel]) -> list[str]:
    """A panel with one point per series, as a sentence instead of a plot."""
    out = []
    for p in panels:
        values = ", ".join(
            f"{n} {number(pts[0][1])} at step {pts[0][0]}" for n, pts in p.series.items() if pts
        )
        levels = "".join(f" ({label} {number(v)})" for label, v in p.levels.items())
        out.append(f"{p.title}, {p.ylabel}: {values}{levels}")
    return out


def figures(summary: Mapping, config: Mapping, judge_rewards: Mapping | None) -> list[dict]:
    """The report's figures: [{title, caption, png (base64 or None), notes}]."""
    policies = summary["policies"]
    judge = judge_of(summary)
    colors = plots.policy_colors(list(policies))
    rms = reward_models(next(iter(policies.values()), {}))
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
    oracles = oracle_policies(summary)
    out = _figure(
        "Win rate against SFT",
        plots.win_rate_intervals(intervals, colors),
        "Dot: the probability that a reply of the policy is preferred to an SFT reply to the "
        "same prompt; bar: 95% bootstrap interval over prompts. Right of the dotted 0.5 line: "
        f"better than SFT. {judge.standing}; reward models are what was optimised"
        + (", except by the oracle runs below." if summary.get("trained_on_judge") else "."),
        [
            f"{_oracle_name(run, oracles)} was trained on the gold judge's reward: its gold "
            "figures grade its own training objective (an oracle run), not a held-out evaluation"
            for run in summary.get("trained_on_judge") or []
        ],
        "Oracle runs:",
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
    by_path = {str(Path(d)): name for d, name in run_names.items()}  # curves are by folder
    by_folder = {Path(d).name: name for d, name in run_names.items()}  # … or its last name
    curves = {
        by_path.get(str(Path(run))) or by_folder.get(run, run): pts
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
            f"{number(pts[0].get(f'{judge.key}_mean'))}), no checkpoints to draw a curve"
            for run, pts in curves.items()
            if len(pts) == 1
        ],
    )
    drawn, single = plots.single_point_panels(
        rl_panels(run_names, _reward_dirs(config), judge.gold)
    )
    out += _figure(
        "REINFORCE training",
        plots.training_curves(drawn, colors),
        (
            "Gold reward on the run's held-out prompts, the"
            if judge.gold
            else "The run's own evaluation by the benchmark's gold judge (where it logged one), the"
        )
        + " reward it was trained on (one panel per reward: their scales differ), KL to SFT and "
        "reply length per training step.",
        _singles(single),
    )
    drawn, single = plots.single_point_panels(rm_panels(config.get("rm_runs", [])))
    out += _figure(
        "Reward-model training",
        plots.training_curves(drawn, avoid=set(colors.values())),
        "Loss per model (losses of different heads are different quantities), pairwise "
        "accuracy on training batches and on held-out pairs.",
        _singles(single),
    )
    for title, png in rm_evaluation_images(config.get("rm_runs", [])):
        out += _figure(title, png)
    return out


def spread_headline(summary: Mapping) -> dict[str, float | None]:
    """Reward model -> the Spearman correlation the page leads with: of its predicted std and
    the annotators' disagreement centred within the prompt, or, in a comparison saved before
    that measure, the raw one (``std_vs_disagreement_spearman``). Empty when no reward
    model predicts a spread."""
    measures = summary.get("std_vs_disagreement")
    if measures:  # None: a scalar RM; a distributional one's measures may be null (undefined)
        headline = {rm: (v or {}).get("spearman_centred") for rm, v in measures.items()}
        distributional = any(measures.values())
    else:
        headline = dict(summary.get("std_vs_disagreement_spearman") or {})
        distributional = any(v is not None for v in headline.values())
    # scalar reward models alone: no spread to speak of, so no section
    return headline if distributional else {}


def _reward_dirs(config: Mapping) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config.get("rewards", []) if "=" in item)


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
        kl_note=kl_note(config),
        not_held_out=summary.get("trained_on_prompts", []),
        sft=config.get("sft", "SFT"),
        judge=judge,
        verdicts=verdicts(summary),
        table=measures_table(summary),
        rm_view=reward_model_table(summary),
        spread=spread_headline(summary),
        spread_measures=summary.get("std_vs_disagreement") or {},
        figures=figures(summary, config, judge_rewards),
        missing=[
            str(d)
            for d in dict.fromkeys([*config.get("runs", []), *config.get("rm_runs", [])])
            if isinstance(d, str) and not Path(d).expanduser().exists()
        ],
        rm_table=rm_eval_table(config),
        names=list(policies),
        samples=[
            {
                "prompt": s.get("prompt", ""),
                "replies": [
                    (n, s[n]["reply"], number(s[n].get(judge.key))) for n in policies if n in s
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
        fmt=number,
    )
    path = Path(out_dir) / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


RUN_MARKS = ("config.yaml", "metrics.jsonl", "config.json", "adapter_config.json", "final")


def _relocate(path: str, bases: list[Path]) -> str:
    """A relative folder as found from here, else from the first of ``bases`` that has it as
    a run or model folder (so a hub id such as ``gpt2`` is never taken for a folder that
    happens to share its name); as it was when neither has it."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return path
    found = (b / p for b in bases if any((b / p / m).exists() for m in RUN_MARKS))
    return str(next(found, path))


def _relocate_spec(item: str, bases: list[Path]) -> str:
    """``folder`` or ``name=folder`` (of a config's policies and rewards), relocated."""
    new = _relocate(item, bases)
    if new == item and "=" in item:
        name, _, folder = item.partition("=")
        if (moved := _relocate(folder, bases)) != folder:
            return f"{name}={moved}"
    return new


def relocated(summary: dict, compare_dir: Path) -> dict:
    """A saved comparison with the relative run folders of its config found again when the
    page is rebuilt from another working directory: ``eval compare`` saves them as given,
    relative to where it ran, which is usually the comparison folder or one of its parents
    (``make demo``: ``runs/demo/rl_…`` beside ``runs/demo/compare``)."""
    bases = [compare_dir.resolve(), *compare_dir.resolve().parents]
    config = dict(summary.get("config") or {})
    for key in ("runs", "rm_runs", "policies", "rewards"):
        if isinstance(config.get(key), list):
            config[key] = [
                _relocate_spec(v, bases) if isinstance(v, str) else v for v in config[key]
            ]
    curves = summary.get("overoptimisation") or {}
    oracles = summary.get("trained_on_judge") or []
    return {
        **summary,
        "config": config,
        "overoptimisation": {_relocate(k, bases): v for k, v in curves.items()},
        **({"trained_on_judge": [_relocate(r, bases) for r in oracles]} if oracles else {}),
    }


def rebuild_report(compare_dir: str | Path) -> Path:
    """Write ``report.html`` again from a comparison's saved numbers (``compare.json``, and
    ``replies.jsonl`` for the judge's reward of every reply) and the run folders its config
    names, without sampling or scoring anything. Comparisons under the gold judge and under
    a named one alike, old ones included."""
    from distalign.config import ConfigError

    compare_dir = Path(compare_dir)
    numbers = compare_dir / "compare.json"
    if not numbers.is_file():
        raise ConfigError(f"{numbers} not found: give the output_dir of `eval compare`")
    try:
        saved = json.loads(numbers.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{numbers}: not JSON ({e}); `eval compare` writes it again") from e
    if not isinstance(saved, dict) or not isinstance(saved.get("policies"), dict):
        raise ConfigError(f"{numbers}: no 'policies' object, so not a comparison's numbers")
    summary = relocated(saved, compare_dir)
    key = judge_of(summary).reply_key
    replies = compare_dir / "replies.jsonl"
    rewards = read_reply_rewards(replies, key) if replies.is_file() else {}
    k = compare_config(summary.get("config") or {}).get("num_generations", 1)
    expected = summary.get("prompts", 0) * k
    counts = {p: len(rewards.get(p, [])) for p in [*summary.get("policies", {}), *rewards]}
    short = {p: n for p, n in counts.items() if rewards and expected and n != expected}
    if short:
        log.warning("%s holds %s replies where the comparison made %d each: the per-reply "
                    "figure shows those it holds", replies,
                    ", ".join(f"{n} of {p}" for p, n in short.items()), expected)  # fmt: skip
    return write_report(summary, rewards or None, compare_dir)


def read_reply_rewards(path: Path, key: str) -> dict[str, list[float]]:
    """Policy -> the judge's reward (``key``) of each of its replies in ``replies.jsonl``; a
    line that is not such a row is an error naming the file and line."""
    from distalign.data.files import DataSourceError

    rewards: dict[str, list[float]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rewards.setdefault(row["policy"], []).append(row[key])
            except json.JSONDecodeError as e:
                raise DataSourceError(f"{path}:{n}: broken JSON ({e.msg})") from None
            except (KeyError, TypeError) as e:
                raise DataSourceError(f"{path}:{n}: a reply row without {e}") from None
    return rewards
