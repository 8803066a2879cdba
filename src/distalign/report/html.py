"""One self-contained HTML report (plots embedded as PNG data URIs) + the same numbers as JSON.

Model-written text goes through Jinja2 with autoescaping on, so a reply that contains
``<script>`` shows as text and never runs.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from jinja2 import Environment, select_autoescape

from distalign.tracking import read_metrics

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>distalign report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3} td.text{text-align:left;white-space:pre-wrap;max-width:320px}
img{max-width:100%;border:1px solid #eee;margin:.5em 0} h2{border-bottom:1px solid #ddd}
.note{color:#666;font-size:13px}
</style></head><body>
<h1>distalign: aligned policies vs SFT</h1>
<p class="note">{{ prompts }} held-out prompts, {{ per_prompt }} repl{{ "y" if per_prompt == 1 else "ies" }}
to each per policy, identical decoding ({{ sampling }}). Gold win rate = the gold judge's
probability that a reply of the policy is preferred to a reply of SFT to the same prompt,
averaged over the prompt's reply pairs, then over prompts; 95% bootstrap interval over
prompts.</p>
<h2>Headline</h2>
<div style="overflow-x:auto"><table><tr>{% for c in columns %}<th>{{ c | replace("_", " ") }}</th>{% endfor %}</tr>
{% for name, row in policies.items() %}<tr><th>{{ name }}</th>
{% for c in columns[1:] %}<td>{{ fmt(row.get(c)) }}</td>{% endfor %}</tr>{% endfor %}</table></div>
{% if spread %}<p>Spearman correlation between a reward model's predicted std per reply and the
annotators' true disagreement (std of the gold reward over annotators):
{% for k, v in spread.items() %}<b>{{ k }}</b>: {{ fmt(v) if v is not none else "— (scalar, no spread)" }}{% if not loop.last %}; {% endif %}{% endfor %}</p>{% endif %}
{% for title, img in figures %}<h2>{{ title }}</h2><img src="data:image/png;base64,{{ img }}" alt="{{ title }}">{% endfor %}
{% if rm_tables %}<h2>Reward models (held-out pairs)</h2>
{% for name, m in rm_tables.items() %}<h3>{{ name }}</h3><table>
{% for k, v in m.items() %}<tr><th>{{ k }}</th><td>{{ fmt(v) }}</td></tr>{% endfor %}</table>{% endfor %}{% endif %}
<h2>Sample replies</h2>
<table><tr><th>prompt</th>{% for n in names %}<th>{{ n }}</th>{% endfor %}</tr>
{% for s in samples %}<tr><td class="text">{{ s.prompt }}</td>
{% for n in names %}<td class="text">{{ s[n].reply }}<br><i>gold {{ fmt(s[n].gold) }}</i></td>{% endfor %}</tr>{% endfor %}
</table>
<h2>All numbers</h2><pre>{{ numbers }}</pre>
</body></html>
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list | tuple) and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
    return "" if v is None else str(v)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _curves(
    runs: list[str],
    keys: list[tuple[str, str]],
    title: str,
    references: dict[str, tuple[str, str]] | None = None,
) -> str | None:
    """One panel per metric key, one line per run. ``references`` maps a key to (another
    logged key, its label), drawn as a dotted level, e.g. accuracy beside its Bayes ceiling."""
    logs = {Path(r).name: read_metrics(Path(r) / "metrics.jsonl") for r in runs}
    logs = {k: v for k, v in logs.items() if v}
    if not logs:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False, sharex=True)
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        for name, rows in logs.items():
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=name, marker="." if len(pts) < 30 else None)
        ref_key, ref_label = (references or {}).get(key, (None, None))
        levels = {r[ref_key] for rows in logs.values() for r in rows if r.get(ref_key) is not None}
        for level in sorted(levels):
            ax.axhline(level, ls=":", color="grey", label=ref_label)
            ax.legend(fontsize=7)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def figures(summary: dict, cfg, judged: dict) -> list[tuple[str, str]]:
    out = []
    rm_curves = _curves(
        cfg.rm_runs,
        [
            ("train/loss", "loss"),
            ("train/accuracy", "train accuracy"),
            ("eval/accuracy", "held-out accuracy"),
        ],
        "reward-model training",
        {"eval/accuracy": ("eval/bayes_ceiling", "Bayes ceiling")},
    )
    if rm_curves:
        out.append(("Reward-model training curves", rm_curves))
    # training curves of every --run and of every compared policy saved by `rl train`
    policy_runs = [
        str(Path(d).parent)
        for d in cfg.policy_dirs().values()
        if (Path(d).parent / "metrics.jsonl").is_file()
    ]
    rl_curves = _curves(
        list(dict.fromkeys([*cfg.runs, *policy_runs])),
        [
            ("train/reward", "RM reward"),
            ("train/kl", "KL to SFT"),
            ("train/length", "reply length"),
        ],
        "REINFORCE training",
    )
    if rl_curves:
        out.append(("REINFORCE training curves", rl_curves))
    fig, ax = plt.subplots(figsize=(7, 3))
    for name, j in judged.items():
        ax.hist(j["gold_mean"], bins=25, alpha=0.5, label=name)
    ax.set_xlabel("gold reward (population mean)")
    ax.legend(fontsize=8)
    out.append(("Gold reward of the replies", _png(fig)))
    curves = {k: v for k, v in summary.get("overoptimisation", {}).items() if v}
    if curves:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        rm_axis = ax.twinx()  # reward-model rewards live on their own scale
        for run, pts in curves.items():
            pts = sorted(pts, key=lambda p: p["step"])  # the run's path, in order
            sft = next((p for p in pts if p.get("step") == 0), pts[0])
            kl = [p["kl"] for p in pts]
            ax.plot(kl, [p["gold_mean"] for p in pts], marker="o", label=f"{run}: gold")
            for key in [k for k in pts[0] if k.startswith("rm_")]:
                gain = [p[key] - sft[key] for p in pts]  # RMs differ in scale and offset
                rm_axis.plot(kl, gain, ls="--", marker="x", label=f"{run}: {key}")
        ax.set_xlabel("KL to SFT")
        ax.set_ylabel("gold reward (solid)")
        rm_axis.set_ylabel("RM reward − SFT's (dashed)")
        ax.legend(fontsize=7, loc="upper left")
        rm_axis.legend(fontsize=7, loc="lower right")
        out.append(
            ("Over-optimisation: gold and RM reward against KL (Gao et al. 2022)", _png(fig))
        )
    for run in cfg.rm_runs:
        for png in sorted(Path(run).glob("final/eval_*.png")):
            out.append(
                (f"{Path(run).name}: {png.stem}", base64.b64encode(png.read_bytes()).decode())
            )
    return out


def rm_tables(cfg) -> dict[str, dict]:
    tables = {}
    for run in cfg.rm_runs:
        evals = sorted(Path(run).glob("final/eval_*.json"))
        summary = Path(run) / "summary.json"  # the evaluation at the end of training
        if evals:
            data = json.loads(evals[-1].read_text())
        elif summary.is_file():
            data = json.loads(summary.read_text()).get("eval", {})
        else:
            continue
        tables[Path(run).name] = {k: v for k, v in data.items() if not isinstance(v, dict)}
    return tables


def write_report(summary: dict, cfg, judged: dict, out_dir: Path) -> Path:
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    env.globals["fmt"] = _fmt
    policies = summary["policies"]
    first = next(iter(policies.values()))
    columns = ["policy", "gold_win_rate", "gold_win_rate_ci95", "gold_mean"]
    columns += [
        k for k in first if k.startswith("gold_") and k not in columns and k != "gold_win_rate_ci95"
    ]
    columns += [k for k in first if k.startswith("rm_") and not k.endswith("ci95")]
    columns += ["kl_to_sft", "length_tokens", "eos_rate", "distinct_2"]
    html = env.from_string(TEMPLATE).render(
        prompts=summary["prompts"],
        per_prompt=cfg.samples_per_prompt,
        sampling=", ".join(f"{k}={v}" for k, v in summary["config"]["sampling"].items()),
        policies=policies,
        columns=columns,
        spread=summary.get("std_vs_disagreement_spearman"),
        figures=figures(summary, cfg, judged),
        rm_tables=rm_tables(cfg),
        names=list(policies),
        samples=summary["samples"],
        numbers=json.dumps(
            {k: v for k, v in summary.items() if k != "samples"}, indent=1, default=str
        ),
    )
    path = Path(out_dir) / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def headline_rows(summary: dict) -> list[list[str]]:
    """Rows for a terminal table: policy, gold win rate [CI], gold mean, KL."""
    rows = []
    for name, r in summary["policies"].items():
        lo, hi = r["gold_win_rate_ci95"]
        rows.append(
            [
                name,
                f"{r['gold_win_rate']:.3f} [{lo:.3f}, {hi:.3f}]",
                f"{r['gold_mean']:.3f}",
                f"{r['kl_to_sft']:.2f}",
                f"{r['length_tokens']:.0f}",
            ]
        )
    return rows


def rebuild_report(compare_dir: str | Path) -> Path:
    """Write ``report.html`` again from a comparison's saved numbers (``compare.json``,
    ``replies.jsonl``) and the run folders it names, without sampling or scoring anything."""
    import numpy as np

    from distalign.eval.policy import CompareConfig
    from distalign.models.generate import SamplingConfig

    compare_dir = Path(compare_dir)
    numbers = compare_dir / "compare.json"
    if not numbers.is_file():
        raise FileNotFoundError(f"{numbers} not found: give the output_dir of `eval compare`")
    summary = json.loads(numbers.read_text())
    config = dict(summary["config"])
    cfg = CompareConfig(**config | {"sampling": SamplingConfig(**config["sampling"])})
    gold: dict[str, list[float]] = {}
    with open(compare_dir / "replies.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            gold.setdefault(row["policy"], []).append(row["gold_mean"])
    judged = {name: {"gold_mean": np.array(values)} for name, values in gold.items()}
    return write_report(summary, cfg, judged, compare_dir)
