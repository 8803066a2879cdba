"""``distalign`` command line: parse arguments, build a config, call the command's function.

distalign model prepare                       # convert the embedded SmolLM2 once
distalign generate prompts='[Hi there]' k=2   # YAML config and/or key=value overrides
distalign data inspect pairs.jsonl.gz
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from distalign.config import (
    ConfigError,
    GenerateConfig,
    load_config,
    save_config,
    split_config_args,
)
from distalign.data.formats import PreferenceFormatError
from distalign.data.load import DataSourceError
from distalign.models.load import DEFAULT_MODEL, ModelNotFoundError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])
data_app = typer.Typer(no_args_is_help=True, help="Inspect preference data.")
model_app = typer.Typer(no_args_is_help=True, help="Prepare and check models.")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
gold_app = typer.Typer(no_args_is_help=True, help="The gold-judge preference benchmark.")
app.add_typer(gold_app, name="gold")
rm_app = typer.Typer(no_args_is_help=True, help="Reward models: train, evaluate, score.")
app.add_typer(rm_app, name="rm")
rl_app = typer.Typer(no_args_is_help=True, help="REINFORCE/RLOO alignment of a policy.")
app.add_typer(rl_app, name="rl")
eval_app = typer.Typer(no_args_is_help=True, help="Compare aligned policies with the SFT one.")
app.add_typer(eval_app, name="eval")
console = Console()

# Errors a user can fix from the message alone: print it, no traceback.
USER_ERRORS = (ConfigError, PreferenceFormatError, DataSourceError, ModelNotFoundError)

ConfigArgs = Annotated[
    list[str] | None,
    typer.Argument(help="Optional YAML config, then key=value overrides (dotted keys nest)."),
]


def _config(cls, args: list[str] | None):
    """A command's config from its optional YAML file and key=value overrides."""
    path, overrides = split_config_args(args or [])
    return load_config(cls, path, overrides)


@model_app.command("prepare")
def model_prepare(
    model: Annotated[str, typer.Option(help="Alias, local folder or hub id.")] = DEFAULT_MODEL,
):
    """Resolve a model (converting the embedded GGUF once) and time a load."""
    from distalign.models.load import load_policy, resolve_model

    start = time.perf_counter()
    path = resolve_model(model)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    policy, _ = load_policy(model)
    loaded = time.perf_counter() - start
    n = sum(p.numel() for p in policy.parameters())
    console.print(f"model folder: {path}")
    console.print(f"resolve: {prepared:.1f} s, load: {loaded:.1f} s, parameters: {n / 1e6:.1f} M")


def _read_prompts(cfg: GenerateConfig) -> list[list[dict[str, str]]]:
    prompts = [[{"role": "user", "content": p}] for p in cfg.prompts]
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if path.suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            prompts += [[{"role": "user", "content": line}] for line in lines if line.strip()]
        else:
            from distalign.data.load import load_preferences

            prompts += list(load_preferences(str(path))["prompt"])
    return prompts


def run_generate(cfg: GenerateConfig) -> list[dict]:
    """Sample ``cfg.k`` replies per prompt; write JSONL to ``cfg.output`` when set."""
    from distalign.models.generate import sample_replies
    from distalign.models.load import load_policy

    prompts = _read_prompts(cfg)
    model, tokenizer = load_policy(
        cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
    )
    out = sample_replies(model, tokenizer, prompts, k=cfg.k, config=cfg.sampling, progress=True)
    rows = [
        {
            "prompt": prompts[out.prompt_index(i)],
            "reply": text,
            "finished": out.finished[i],
            "tokens": len(out.reply_ids[i]),
        }
        for i, text in enumerate(out.texts)
    ]
    if cfg.output:
        path = Path(cfg.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        save_config(cfg, path.parent, name=path.stem + ".config.yaml")
    return rows


@app.command(context_settings={"allow_extra_args": True})
def generate(args: ConfigArgs = None):
    """Answer chat prompts with a policy (default: the embedded SmolLM2-135M-Instruct)."""
    cfg = _config(GenerateConfig, args)
    rows = run_generate(cfg)
    for row in rows:
        console.rule(f"[bold]{row['prompt'][-1]['content']}")
        console.print(row["reply"], markup=False, highlight=False)
        cut = "" if row["finished"] else ", cut at max_new_tokens"
        console.print(f"[dim]({row['tokens']} tokens{cut})")
    if cfg.output:
        console.print(f"wrote {len(rows)} replies to {cfg.output}")


@data_app.command("inspect")
def data_inspect(
    source: Annotated[str, typer.Argument(help="Local file/folder or hub id.")],
    split: Annotated[str | None, typer.Option(help="Split (hub id or folder).")] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="explicit | implicit | hh (default: detect)")
    ] = None,
    skip_bad_rows: Annotated[bool, typer.Option(help="Skip malformed rows, count them.")] = False,
    model: Annotated[str, typer.Option(help="Tokenizer for token lengths.")] = DEFAULT_MODEL,
):
    """Format, pair count, skipped rows, token-length percentiles, one rendered example."""
    from distalign.data.inspect import PERCENTILES, inspect_source
    from distalign.models.load import load_tokenizer

    result = inspect_source(source, load_tokenizer(model), split, format, skip_bad_rows)
    r = result.report
    console.print(f"[bold]{source}[/]  format: {r.format}")
    console.print(f"rows read: {r.rows}   pairs: {r.kept}   with ratings: {result.scored_pairs}")
    console.print(f"identical chosen/rejected (dropped): {r.identical}")
    console.print(f"skipped malformed rows: {sum(r.skipped.values())}")
    for reason, n in r.skipped.most_common():
        console.print(f"  {n} × {reason}", markup=False)
    for example in r.examples[:3]:
        console.print(f"  e.g. {example}", markup=False)
    if result.lengths:
        table = Table(title=f"token lengths ({model})")
        table.add_column("part")
        for p in PERCENTILES:
            table.add_column("max" if p == 100 else f"p{p}", justify="right")
        for name, pct in result.lengths.items():
            table.add_row(name, *(str(pct[p]) for p in PERCENTILES))
        console.print(table)
        console.rule("first pair, chosen reply, through the chat template")
        console.print(result.example, markup=False, highlight=False)
    if result.metadata:
        console.rule("metadata.json")
        console.print_json(json.dumps(result.metadata))


@gold_app.command("make", context_settings={"allow_extra_args": True})
def gold_make(args: ConfigArgs = None):
    """Regenerate the benchmark: prompts -> SFT replies -> gold judge -> labelled pairs."""
    from distalign.gold.build import BenchConfig, run_bench_make

    cfg = _config(BenchConfig, args)
    save_config(cfg, cfg.work_dir)
    meta = run_bench_make(cfg)
    table = Table(title=f"gold benchmark -> {cfg.out_dir}")
    for col in ("split", "prompts", "pairs", "Bayes ceiling", "groups disagree"):
        table.add_column(col, justify="right")
    for split, m in [*meta["splits"].items(), ("all", meta["all"])]:
        table.add_row(
            split,
            str(m["prompts"]),
            str(m["pairs"]),
            f"{m['bayes_accuracy']:.3f}",
            f"{m['disagreement_share']:.3f}",
        )
    console.print(table)
    console.print(f"replies: {meta['replies']}, sampling {meta['sampling_seconds']} s")


@gold_app.command("judge")
def gold_judge(
    input: Annotated[str, typer.Option("--input", help="File of prompt/reply rows.")],
    output: Annotated[
        str | None, typer.Option(help="Output JSONL (default: INPUT.gold.jsonl).")
    ] = None,
):
    """Score any prompt/reply file with the gold judge (attributes, reward per group)."""
    from distalign.gold.build import judge_file

    out, means = judge_file(input, output)
    console.print(f"wrote {out}")
    for name, value in means.items():
        console.print(f"  mean {name}: {value:.3f}")


@rm_app.command("train", context_settings={"allow_extra_args": True})
def rm_train(args: ConfigArgs = None):
    """Train a reward model: YAML config and/or key=value overrides."""
    from distalign.rm.train import RMTrainConfig, run

    cfg = _config(RMTrainConfig, args)
    result = run(cfg)
    _print_metrics(f"held-out ({cfg.eval_data or cfg.data}, {cfg.eval_split})", result)
    console.print(f"model: {Path(cfg.output_dir) / 'final'}")


def _print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)


@rm_app.command("eval")
def rm_eval(
    model: Annotated[str, typer.Option("--model", help="Reward-model folder (rm train's final/).")],
    data: Annotated[str, typer.Option(help="Preference source.")] = "gold",
    split: Annotated[str, typer.Option(help="Split.")] = "test",
    max_length: Annotated[int, typer.Option(help="Max tokens of prompt + reply.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Pairs per batch.")] = 16,
    limit: Annotated[int, typer.Option(help="First N pairs (0: all).")] = 0,
    output: Annotated[str | None, typer.Option(help="Metrics JSON path.")] = None,
):
    """Pairwise accuracy, margin, reward mean/std and calibration on held-out pairs."""
    from distalign.eval.rm import run_rm_eval

    result = run_rm_eval(model, data, split, max_length, batch_size, limit, output)
    _print_metrics(f"{model} on {data} ({split})", result)


@rm_app.command("score")
def rm_score(
    model: Annotated[str, typer.Option("--model", help="Reward-model folder.")],
    input: Annotated[str, typer.Option("--input", help="Rows with prompt and reply.")],
    output: Annotated[
        str | None, typer.Option(help="Output JSONL (default INPUT.scored.jsonl).")
    ] = None,
    max_length: Annotated[int, typer.Option(help="Max tokens of prompt + reply.")] = 512,
    batch_size: Annotated[int, typer.Option(help="Rows per batch.")] = 16,
):
    """Score prompt/reply rows with a reward model into a new JSONL file."""
    from distalign.rm.score import score_file

    out, n = score_file(model, input, output, max_length, batch_size)
    console.print(f"scored {n} rows -> {out}")


@rl_app.command("train", context_settings={"allow_extra_args": True})
def rl_train(args: ConfigArgs = None):
    """REINFORCE/RLOO against a reward model or function: YAML and/or key=value overrides."""
    from distalign.rl.train import RLTrainConfig, run

    cfg = _config(RLTrainConfig, args)
    result = run(cfg)
    table = Table(title=f"held-out prompts ({cfg.eval_prompts}, {cfg.eval_split})")
    cols = ["reward", "kl", "length", "eos_rate"] + (
        ["gold_mean"] if "gold_mean" in result["final"] else []
    )
    table.add_column("policy")
    for col in cols:
        table.add_column(col, justify="right")
    for name, r in (("SFT", result["initial"]), ("aligned", result["final"])):
        if r:
            table.add_row(name, *(f"{r[c]:.3f}" for c in cols))
    console.print(table)
    console.print(f"policy: {Path(cfg.output_dir) / 'final'}")


@eval_app.command("compare", context_settings={"allow_extra_args": True})
def eval_compare(
    sft: Annotated[str, typer.Option(help="The SFT policy.")] = DEFAULT_MODEL,
    policy: Annotated[
        list[str] | None, typer.Option(help="NAME=DIR of an aligned policy (repeat).")
    ] = None,
    reward: Annotated[
        list[str] | None, typer.Option(help="NAME=DIR of a reward model (repeat).")
    ] = None,
    run: Annotated[
        list[str] | None, typer.Option(help="RL run folder for curves (repeat).")
    ] = None,
    rm_run: Annotated[
        list[str] | None, typer.Option(help="RM run folder for curves (repeat).")
    ] = None,
    args: ConfigArgs = None,
):
    """Aligned policies vs SFT on held-out prompts: gold judge, RMs, KL; writes the report."""
    from distalign.eval.policy import CompareConfig, run_compare
    from distalign.report.html import headline_rows

    cfg = _config(CompareConfig, args)
    if sft != DEFAULT_MODEL:  # the flag wins over the config file and key=value
        cfg.sft = sft
    cfg.policies += policy or []
    cfg.rewards += reward or []
    cfg.runs += run or []
    cfg.rm_runs += rm_run or []
    summary = run_compare(cfg)
    table = Table(
        title=f"{summary['prompts']} held-out prompts × {cfg.samples_per_prompt} "
        f"repl{'y' if cfg.samples_per_prompt == 1 else 'ies'} each"
    )
    for col in ("policy", "gold win rate [95% CI]", "gold reward", "KL to SFT", "tokens"):
        table.add_column(col, justify="right")
    for row in headline_rows(summary):
        table.add_row(*row)
    console.print(table)
    console.print(f"report: {summary['report']}")


@app.command("report")
def report(
    compare_dir: Annotated[Path, typer.Argument(help="The output_dir of `eval compare`.")],
):
    """Write a comparison's report.html again from its saved numbers and the runs it names."""
    from distalign.report.html import rebuild_report

    console.print(f"report: {rebuild_report(compare_dir)}")


def main():
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app()
    except USER_ERRORS as e:
        console.print(f"[red]error:[/] {e}", markup=True, highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
