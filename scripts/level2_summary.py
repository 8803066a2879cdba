"""Tables and plots of the Level 2 runs (scripts/measure_level2.sh) for docs/results/level2/.

    .venv/bin/python scripts/level2_summary.py [--runs runs/full] [--out docs/results/level2]

Reads each reward model's held-out evaluation, each RL run's in-run evaluations (gold reward
overall and per annotator group, the proxy reward it optimised, KL to SFT, every few steps on
held-out prompts) and, when present, the comparison of the final policies. Writes
``summary.md`` (the tables), ``summary.json`` and ``curves.png``. Runs are compared at matched
KL: each run's measures where its trajectory first reaches the KL (``metrics.at_first_crossing``),
then averaged over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from distalign.metrics import at_first_crossing

ARMS = {
    "scalar": "scalar RM",
    "expectation": "ordinal RM, E[R]",
    "cvar": "ordinal RM, CVaR₀.₂₅",
    "mixture_expectation": "mixture RM, E[R]",
    "mixture_cvar": "mixture RM, worse component's gain",
    "headlr_expectation": "head-rate mixture RM, E[R]",
    "headlr_cvar": "head-rate mixture RM, worse component's gain",
    "mix1e2_expectation": "mixture RM, head lr 1e-2, E[R]",
    "mix1e2_cvar": "mixture RM, head lr 1e-2, worse component's gain",
}
# the arms against an end-to-end mixture with a faster head, beside the scalar RM's, each in
# a plot of its own: file -> arms
ARM_PLOTS = {
    "curves_headlr.png": ("scalar", "headlr_expectation", "headlr_cvar"),
    "curves_mix1e2.png": ("scalar", "mix1e2_expectation", "mix1e2_cvar"),
}
COMPARISONS = ("compare", "compare_mixture", "compare_headlr", "compare_mix1e2")  # eval compare
RM_FOLDERS = {  # each reward model's folder under --runs
    "scalar": "rm_scalar/final",
    "scalar, 2 epochs": "rm_scalar_2ep/final",
    "ordinal": "rm_ordinal/final",
    "mixture": "rm_mixture/final",
    "mixture, frozen backbone": "rm_mixture_frozen",
    "mixture, warm start": "rm_mixture_warm",
    "mixture, warm start, 2-epoch backbone": "rm_mixture_warm_2ep",
    "mixture, end to end, head lr 2e-3": "rm_mixture_head_lr/final",
    "mixture, end to end, head lr 2e-3, seed 1": "rm_mixture_head_lr_s1/final",
    "mixture, end to end, head lr 2e-3, seed 2": "rm_mixture_head_lr_s2/final",
    "mixture, end to end, head lr 1e-2, seed 1": "rm_mixture_head_lr1e-2_s1/final",
}
GROUPS = ("concise", "thorough")
RM_KEYS = [
    ("accuracy", "accuracy"),
    ("accuracy_vs_truth", "accuracy against the truth (expected over the label draws)"),
    ("margin_vs_truth", "… of the margin's sign, from the pair scores"),
    ("bayes_ceiling", "Bayes ceiling"),
    ("ece", "ECE"),
    ("contested_auroc", "contested AUROC"),
    ("contested_auroc_margin", "… by margin alone"),
    ("contested_auroc_spread", "… by spread"),
    ("contested_auroc_ratio", "… by −|margin| / spread"),
    ("vs_scalar", "contested AUROC − the scalar RM's, same pairs (paired)"),
    ("vs_scalar_p", "share of resamples where it does not beat the scalar RM"),
    ("spread_spearman_centred", "ρ(std, centred)"),
    ("spread_spearman_raw", "ρ(std, raw)"),
    ("spread_partial_centred_given_length", "ρ centred, given length"),
    ("spread_predicted_vs_length", "ρ(std, length)"),
    ("component_spread", "mean std of the components' margins"),
]


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt(x, digits) for x in v) + "]"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def rm_rows(runs: Path) -> dict[str, dict]:
    """Each reward model's latest evaluation of its final model on the test pairs (``rm eval``
    rewrites it), its training time when it was trained end to end, and, where both wrote
    per-pair scores, its contested detector against the scalar RM's on the same pairs
    (``eval.rm.compare_contested``: ``vs_scalar``, its ``…_ci95`` and ``vs_scalar_p``)."""
    from distalign.data.load import known_p_chosen, load_preferences
    from distalign.eval.rm import compare_contested

    out = {}
    baseline = runs / RM_FOLDERS["scalar"] / "eval_gold_test_pair_scores.csv"
    p_test = known_p_chosen(load_preferences("gold", "test"))  # once, for every RM
    for name, folder in RM_FOLDERS.items():
        path = runs / folder / "eval_gold_test.json"
        if path.is_file():
            summary = path.parent.parent / "summary.json"
            seconds = json.loads(summary.read_text()).get("train_seconds") if (
                folder.endswith("/final") and summary.is_file()) else None  # fmt: skip
            out[name] = json.loads(path.read_text()) | {"train_seconds": seconds}
            pairs = path.with_name(path.stem + "_pair_scores.csv")
            if pairs.is_file():
                out[name]["margin_vs_truth"] = margin_vs_truth(pairs, p_test)
            if name != "scalar" and pairs.is_file() and baseline.is_file():
                d = compare_contested(pairs, baseline)
                out[name] |= {"vs_scalar": d["difference"], "vs_scalar_ci95": [d["lo"], d["hi"]],
                              "vs_scalar_p": d["p_not_above"]}  # fmt: skip
    return out


def margin_vs_truth(pairs: Path, p_test: np.ndarray) -> float:
    """Accuracy against the truth of the sign of the margins in an ``rm eval`` pair-score
    file of the gold benchmark's test pairs, whose true P(chosen) is ``p_test`` (for RMs
    evaluated before ``rm eval`` reported ``accuracy_vs_truth``; a scalar RM's own decision,
    a distributional one's by its mean)."""
    import torch

    from distalign.eval.rm import margins_by_pair
    from distalign.metrics import accuracy_vs_truth

    margin = margins_by_pair(pairs, len(p_test))
    scored = ~np.isnan(margin)
    margin = torch.as_tensor(margin[scored])
    return accuracy_vs_truth(margin, torch.zeros_like(margin), p_test[scored])


def eval_curve(run: Path) -> list[dict]:
    """The run's in-run evaluations, in step order, keys without the ``eval/`` prefix."""
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/kl" in row:
            measured = {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
            rows.append({"step": row["step"]} | measured)
    return sorted(rows, key=lambda r: r["step"])


def rl_runs(runs: Path) -> dict[str, dict[int, list[dict]]]:
    out: dict[str, dict[int, list[dict]]] = {}
    for arm in ARMS:
        for run in sorted(runs.glob(f"rl_{arm}_s*")):
            if (run / "metrics.jsonl").is_file():
                curve = eval_curve(run)
                if curve:
                    out.setdefault(arm, {})[int(run.name.rsplit("_s", 1)[1])] = curve
    return out


def matched(curves: dict[str, dict[int, list[dict]]], targets: list[float]) -> dict:
    """Per arm and KL target: each measure at the first crossing, per seed and averaged."""
    keys = ["gold_mean", *(f"gold_{g}" for g in GROUPS), "reward"]
    table: dict = {}
    for arm, seeds in curves.items():
        for t in targets:
            per_seed = {
                s: {k: at_first_crossing([r["kl"] for r in c], [r[k] for r in c], t) for k in keys}
                for s, c in seeds.items()
            }
            for v in per_seed.values():
                v["worse_group"] = min(v[f"gold_{g}"] for g in GROUPS)
            mean = {
                k: float(np.mean([v[k] for v in per_seed.values()])) for k in [*keys, "worse_group"]
            }
            table.setdefault(arm, {})[t] = {"seeds": per_seed, "mean": mean}
    return table


def peaks(curves) -> dict:
    out = {}
    for arm, seeds in curves.items():
        for s, c in seeds.items():
            best = max(c, key=lambda r: r["gold_mean"])
            out.setdefault(arm, {})[s] = {
                "peak_step": best["step"], "peak_kl": best["kl"], "peak_gold": best["gold_mean"],
                "last_step": c[-1]["step"], "last_kl": c[-1]["kl"], "last_gold": c[-1]["gold_mean"],
            }  # fmt: skip
    return out


PANELS = [("gold_mean", "gold reward (all annotators)"),
          ("gold_thorough", "gold reward, thorough group"),
          ("gold_concise", "gold reward, concise group"),
          ("reward", "proxy: what the run optimised, change from step 0")]  # fmt: skip


def kl_targets(curves, given, candidates=(0.5, 1, 2, 4, 8, 16, 32)) -> list[float]:
    """The KL values to compare runs at: ``given``, else those every run reaches."""
    reach = min((max(r["kl"] for r in c) for seeds in curves.values() for c in seeds.values()),
                default=0.0)  # fmt: skip
    return given or [t for t in candidates if t <= reach]


def matched_rows(table, names: dict[str, str], keys) -> list[str]:
    """Markdown rows of ``matched``'s table: per arm and KL, each measure's mean over seeds
    with each seed's value after it."""
    lines = []
    for arm, by_t in table.items():
        for t, cell in by_t.items():
            shown = []
            for k in keys:
                each = ", ".join(fmt(v[k], 2) for v in cell["seeds"].values())
                shown.append(f"{fmt(cell['mean'][k])} ({each})")
            lines.append(table_row(names[arm], f"{t:g}", *shown))
    return lines


def plot(curves, path: Path, arms=None, names=ARMS, panels=PANELS) -> None:
    """Gold (all, per group) and proxy reward against KL, per run; ``arms`` picks some."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red", "tab:brown",
               "tab:pink", "tab:olive", "tab:cyan")  # fmt: skip
    colours = dict(zip(names, palette, strict=False))
    curves = {a: c for a, c in curves.items() if arms is None or a in arms}
    lines = sum(len(seeds) for seeds in curves.values())
    legend = 0.22 * -(-lines // 3)  # inches: three entries a row beneath the panels
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4 + legend))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for arm, seeds in curves.items():
            for i, (s, c) in enumerate(sorted(seeds.items())):
                kl = [r["kl"] for r in c]
                y = np.array([r[key] for r in c])
                if key == "reward":
                    y = y - y[0]
                ax.plot(kl, y, marker="o", ms=3, color=colours[arm], ls=("-", "--", ":")[i % 3],
                        label=f"{names[arm]}, seed {s}")  # fmt: skip
        ax.set_xlabel("KL to SFT (held-out prompts)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend / fig.get_figheight() + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_rows(runs: Path) -> dict:
    """Every final policy of the ``eval compare`` runs that have run, by name. Each run
    also scores SFT, with the same settings and seed: the first run's SFT row is kept, and
    a later one that differs from it is reported."""
    rows: dict = {}
    for name in COMPARISONS:
        path = runs / name / "compare.json"
        if not path.is_file():
            continue
        for policy, row in json.loads(path.read_text()).get("policies", {}).items():
            if policy in rows:
                if row.get("gold_mean") != rows[policy].get("gold_mean"):
                    print(f"{path}: its {policy} row differs from the first comparison's")
                continue
            rows[policy] = row
    return rows


def table_head(*names: str) -> list[str]:
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def table_row(*cells) -> str:
    """A markdown table row; a "|" inside a cell (|margin|) is escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown(rms, table, peak, final) -> str:
    lines = ["## Reward models, all 2,400 training pairs, all 800 test pairs", ""]
    lines += table_head("measure", *rms)
    for key, label in RM_KEYS:
        cells = []
        for e in rms.values():
            ci = e.get(f"{key}_ci95")
            cells.append(fmt(e.get(key)) + (f" {fmt(ci)}" if ci else ""))
        lines.append(table_row(label, *cells))
    lines += ["", "## RL at matched KL (first crossing; mean over seeds, each seed after)", ""]
    lines += table_head("arm", "KL", "gold", "concise", "thorough", "worse-off group", "proxy")
    keys = ("gold_mean", "gold_concise", "gold_thorough", "worse_group", "reward")
    lines += matched_rows(table, ARMS, keys)
    lines += ["", "## Where each run's gold reward peaked (in-run evaluations)", ""]
    lines += table_head("arm", "seed", "peak step", "KL there", "gold there", "last step", "KL",
                        "gold")  # fmt: skip
    for arm, seeds in peak.items():
        for s, p in seeds.items():
            lines.append(table_row(ARMS[arm], s, p["peak_step"], fmt(p["peak_kl"], 2),
                                   fmt(p["peak_gold"]), p["last_step"], fmt(p["last_kl"], 2),
                                   fmt(p["last_gold"])))  # fmt: skip
    if final:
        lines += ["", "## Final policies, `eval compare` (32 held-out prompts × 4 replies)", ""]
        lines += table_head("policy", "gold win rate vs SFT [95% CI]", "gold", "concise",
                            "thorough", "KL")  # fmt: skip
        for name, r in final.items():
            win = f"{fmt(r.get('gold_win_rate'))} {fmt(r.get('gold_win_rate_ci95'))}"
            groups = (fmt(r.get(f"gold_{g}")) for g in ("mean", *GROUPS))
            lines.append(table_row(name, win, *groups, fmt(r.get("kl_to_sft"), 2)))
    return "\n".join(lines) + "\n"


def search_markdown(path: Path) -> str:
    """The spread search (scripts/spread_search.py) as a table, when it has run."""
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    lines = ["", f"## Heads on the frozen features of {data['features_of']} "
             f"({data['seeds']} seeds, mean; test pairs and replies)", ""]  # fmt: skip
    for p in data.get("probe", []):
        lines.append(f"Probe fitted on the truth (ridge α {p['ridge_alpha']:g}, a diagnostic): "
                     f"ρ centred on test {fmt(p['spearman_centred_test'])}.  ")  # fmt: skip
    lines += ["", *table_head("setting", "accuracy", "ECE", "contested AUROC", "… by margin alone",
                               "AUROC − the scalar RM's, same pairs: mean (each seed)",
                               "ρ(std, centred)", "ρ centred, given length",
                               "ρ(std, raw)")]  # fmt: skip
    for name, r in data["results"].items():
        m, s0 = r["mean"], r["seeds"][0]
        each = ", ".join(fmt(x.get("vs_scalar_difference")) for x in r["seeds"])
        paired = (f"{fmt(m['vs_scalar_difference'])} ({each}; seed 0's 95% CI "
                  f"{fmt([s0['vs_scalar_lo'], s0['vs_scalar_hi']])})"
                  if "vs_scalar_difference" in s0 else "–")  # fmt: skip
        lines.append(table_row(name, *(fmt(m.get(k)) for k in (
            "accuracy", "ece", "contested_auroc", "contested_auroc_margin")), paired,
            *(fmt(m.get(k)) for k in ("spread_spearman_centred",
            "spread_partial_centred_given_length", "spread_spearman_raw"))))  # fmt: skip
    return "\n".join(lines) + "\n"


def summary_options(doc: str, runs: str, out: str, kl: str) -> argparse.ArgumentParser:
    """The options of both summary scripts: ``--runs`` (the measurement's folder), ``--out``
    (where the tables and plots go) and ``--kl`` (the matched-KL targets; ``kl`` says the
    default ones)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--runs", default=runs)
    ap.add_argument("--out", default=out)
    ap.add_argument("--kl", type=float, nargs="*", help=f"KL targets (default: {kl})")
    return ap


def write_summary(out: Path, text: str, payload: dict) -> None:
    """``summary.md`` (printed too) and ``summary.json`` in ``out``."""
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(text)


def main() -> None:
    ap = summary_options(__doc__, "runs/full", "docs/results/level2", "1, 2, 4, 8, ...")
    args = ap.parse_args()
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rms, curves = rm_rows(runs), rl_runs(runs)
    targets = kl_targets(curves, args.kl)
    table, peak, final = matched(curves, targets), peaks(curves), compare_rows(runs)
    if curves:
        plot(curves, out / "curves.png")
        for name, arms in ARM_PLOTS.items():
            if any(a in curves for a in arms[1:]):
                plot(curves, out / name, arms)
    text = markdown(rms, table, peak, final) + search_markdown(out / "spread_search.json")
    payload = {"reward_models": rms, "matched_kl": table, "peaks": peak, "final": final,
               "curves": curves}  # fmt: skip
    write_summary(out, text, payload)


if __name__ == "__main__":
    main()
