"""What the report reads from the run folders a comparison names: training logs, run configs
and reward-model evaluations. Files in, plain numbers and plot panels out; nothing is computed
again. A folder that is gone or has no log simply adds nothing."""

from __future__ import annotations

import json
from pathlib import Path

from distalign.checkpoint import run_folder
from distalign.report.plots import Panel
from distalign.tracking import read_metrics, read_run_config


def _series(logs: dict[str, list[dict]], key: str) -> dict[str, list[tuple[float, float]]]:
    """name -> (step, value) of one logged key, for the runs that logged it."""
    out = {
        name: [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        for name, rows in logs.items()
    }
    return {name: pts for name, pts in out.items() if pts}


def _logs(run_names: dict[str, str]) -> dict[str, list[dict]]:
    """name -> rows of ``metrics.jsonl`` for each run folder that has one."""
    logs = {name: read_metrics(Path(d) / "metrics.jsonl") for d, name in run_names.items()}
    return {name: rows for name, rows in logs.items() if rows}


def rl_run_names(config: dict) -> dict[str, str]:
    """RL run folder -> its name in the report: the compared policy it made (so a run has the
    policy's colour), else the folder name. The folders are the config's ``runs`` and the
    parents of compared policies that hold a training log."""
    from distalign.rl.rewards import named_folders, unique_name

    by_parent = {}
    policies = named_folders(config.get("policies", []), taken={"sft"}, strict=False)
    for name, folder in policies.items():
        if (run := run_folder(folder)) is not None:
            by_parent.setdefault(run, name)
    folders = [*config.get("runs", []), *by_parent]
    folders = [d for d in dict.fromkeys(folders) if (Path(d) / "metrics.jsonl").is_file()]
    names: dict[str, str] = {}
    for d in folders:  # runs/s1/rl and runs/s2/rl: rl and rl_2
        names[d] = by_parent.get(str(Path(d))) or unique_name(
            Path(d).name, {*names.values(), *by_parent.values()}
        )
    return names


def _reward_label(run_dir: str, reward_names: dict[str, str]) -> str:
    """What a run was trained against, from its ``config.yaml``: each source's label (a
    compared RM's name where the folder matches, else ``RM`` and its folder; a function's
    name), joined by "+"; with its functional, if not E[R]."""
    from distalign.rl.rewards import run_rewards

    cfg = read_run_config(run_dir)
    if cfg is None or "reward" not in cfg:
        return f"run {Path(run_dir).name}"  # unknown: the run gets a panel of its own
    label = " + ".join(_source_label(str(s), reward_names) for s in run_rewards(cfg))
    functional = cfg.get("functional")
    return label if functional in (None, "expectation") else f"{label}, {functional}"


def _source_label(spec: str, reward_names: dict[str, str]) -> str:
    """A reward function by its name (``module:function``, TRL's ``module.function`` or
    built-in name), a reward model as ``RM`` and its compared name or folder."""
    from distalign.rl.rewards import TRL_BUILT_IN_REWARDS, source_name

    if not Path(spec).exists():
        if ":" in spec:
            return spec.rsplit(":", 1)[-1]
        if spec in TRL_BUILT_IN_REWARDS:
            return spec
        if "." in spec and "/" not in spec:
            return spec.rpartition(".")[2]
    known = {str(Path(d).resolve()): name for name, d in reward_names.items()}
    return f"RM {known.get(str(Path(spec).resolve()), source_name(spec))}"


def rl_panels(
    run_names: dict[str, str], reward_names: dict[str, str], gold_judge: bool = True
) -> list[Panel]:
    """Training curves of RL runs: held-out gold reward, then the training reward with one
    panel per reward signal (runs trained against different RMs or functionals never share
    an axis), KL to SFT and reply length. ``gold_judge``: whether the page's judge is the
    gold judge; on a page with another judge, the runs' own gold evaluation is named as the
    benchmark's, not the page's judge."""
    logs = _logs(run_names)
    title, ylabel = "gold reward on held-out prompts", "gold reward (judge's score)"
    if not gold_judge:
        title = "the benchmark's gold reward on the run's own held-out prompts"
        ylabel = "gold reward (the benchmark's judge)"
    panels = [Panel(title, ylabel, _series(logs, "eval/gold_mean"))]
    groups: dict[str, dict[str, list]] = {}
    for folder, name in run_names.items():
        if name in logs:
            groups.setdefault(_reward_label(folder, reward_names), {})[name] = logs[name]
    for label, group in groups.items():
        panels.append(
            Panel(
                f"training reward: {label}",
                "reward (that reward's own scale)",
                _series(group, "train/reward"),
            )
        )
    panels.append(Panel("KL to SFT", "KL to SFT (nats per reply)", _series(logs, "train/kl")))
    panels.append(Panel("reply length", "reply length (tokens)", _series(logs, "train/length")))
    return panels


def rm_run_names(rm_runs: list[str]) -> dict[str, str]:
    """Reward-model run folder -> its name in the report: the folder's name, made unique
    (runs/s1/rm and runs/s2/rm: rm and rm_2)."""
    from distalign.rl.rewards import unique_name

    names: dict[str, str] = {}
    for d in dict.fromkeys(rm_runs):
        names[d] = unique_name(Path(d).name, set(names.values()))
    return names


def rm_panels(rm_runs: list[str]) -> list[Panel]:
    """Training curves of reward models: the training and held-out loss of each (losses of
    different heads are different quantities, so one panel each; the held-out one is the
    labels' negative log-likelihood, without the training loss's regularisers), training and
    held-out pairwise accuracy with the Bayes ceiling of the held-out pairs."""
    logs = _logs(rm_run_names(rm_runs))
    panels = [
        Panel(f"loss: {name}", "loss per pair (nats)", {
            label: pts for label, key in (("training", "train/loss"), ("held-out", "eval/loss"))
            for pts in _series({name: rows}, key).values()
        })
        for name, rows in logs.items()
    ]  # fmt: skip
    accuracy = "pairwise accuracy (share of pairs)"
    panels.append(Panel("training accuracy", accuracy, _series(logs, "train/accuracy")))
    ceilings = {
        name: pts[-1][1] for name, pts in _series(logs, "eval/bayes_ceiling").items() if pts
    }
    if len(set(ceilings.values())) == 1:
        levels = {"Bayes ceiling": next(iter(ceilings.values()))}
    else:
        levels = {f"Bayes ceiling ({name})": v for name, v in ceilings.items()}
    panels.append(Panel("held-out accuracy", accuracy, _series(logs, "eval/accuracy"), levels))
    return panels


def main_evaluation(run: str | Path) -> tuple[Path, dict] | None:
    """A run's evaluation of its final model: the file training wrote (``summary.json`` names
    it; an ``rm eval`` as training ran it replaces it), else of the ``final/eval_*.json`` those
    of the data and split the run's config.yaml held out (an ``rm eval`` of other data or of
    the training split is not the held-out figure), else all; of them, the one of the most
    pairs, then the shortest name (``rm eval`` of the first N pairs or at other lengths writes
    beside it with ``_first<N>`` / ``_len<L>-<P>`` added)."""
    found = [(path, json.loads(path.read_text())) for path in Path(run).glob("final/eval_*.json")]
    if not found:
        return None
    summary = Path(run) / "summary.json"
    named = json.loads(summary.read_text()).get("eval_file") if summary.is_file() else None
    if named and (Path(run) / "final" / named).is_file():
        path = Path(run) / "final" / named
        return path, json.loads(path.read_text())
    saved = read_run_config(run) or {}
    held_out = (saved.get("eval_dataset_name") or saved.get("dataset_name"),
                saved.get("dataset_test_split", "test"))  # fmt: skip
    own = [f for f in found if (f[1].get("data"), f[1].get("split")) == held_out]
    return min(own or found, key=lambda f: (-f[1].get("pairs", 0), len(f[0].name), f[0].name))


def rm_evaluations(rm_runs: list[str]) -> dict[str, dict]:
    """Run name (``rm_run_names``) -> its held-out evaluation (``main_evaluation``, else the
    ``eval`` of ``summary.json``): its numbers and words, and its 95% intervals
    (``…_ci95``)."""
    tables = {}
    for run, name in rm_run_names(rm_runs).items():
        main = main_evaluation(run)
        summary = Path(run) / "summary.json"  # the evaluation at the end of training
        if main:
            data = main[1]
        elif summary.is_file():
            data = json.loads(summary.read_text()).get("eval", {})
        else:
            continue
        tables[name] = {
            k: v
            for k, v in data.items()
            if "plot" not in k and (not isinstance(v, dict | list) or k.endswith("_ci95"))
        }
    return tables


def rm_evaluation_images(rm_runs: list[str]) -> list[tuple[str, bytes]]:
    """(title, PNG) of the figures saved with each run's ``main_evaluation``."""
    images = []
    for run, name in rm_run_names(rm_runs).items():
        main = main_evaluation(run)
        plots = [v for k, v in sorted(main[1].items()) if k.startswith("plot")] if main else []
        for plot in plots:
            png = Path(run) / "final" / Path(plot).name  # wherever it was written from
            if png.is_file():
                images.append((f"{name}: {png.stem.replace('_', ' ')}", png.read_bytes()))
    return images
