"""``distalign`` command line: parse arguments, build the command's config, call its function.

Every command takes the same arguments, in either style:

    distalign rm train configs/rm_scalar_cpu.yaml learning_rate=2e-5
    distalign rm train --config configs/rm_scalar_cpu.yaml --learning_rate 2e-5
    distalign rm train --help        # every key, with its type, default and meaning
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from distalign.checkpoint import CheckpointError, NonFiniteError
from distalign.command_configs import (
    DataInspectConfig,
    GenerateConfig,
    GoldJudgeConfig,
    ModelPrepareConfig,
    ReportConfig,
    RMEvalConfig,
    RMScoreConfig,
)
from distalign.config import (
    ConfigError,
    bool_keys,
    config_fields,
    list_keys,
    load_config,
    parse_cli_args,
)
from distalign.data.formats import PreferenceFormatError, prompt_text
from distalign.data.load import DataSourceError
from distalign.hub import HubUploadError
from distalign.models.classifier import NotARewardModelError
from distalign.models.load import ModelNotFoundError, PlacementError
from distalign.models.templates import RenderingError
from distalign.printing import console, print_inspection, print_metrics
from distalign.rl.rewards import RewardFunctionError
from distalign.tracking import quiet_libraries

ABOUT = (
    "distalign trains reward models from pairwise preferences (a scalar Bradley–Terry model "
    "or a distributional one that predicts a spread of scores), aligns a policy against them "
    "with REINFORCE/RLOO, and compares the aligned policy with the SFT one in a report. Every "
    "command takes an optional YAML config and key=value overrides (or --config FILE "
    "--key value, as in TRL); `distalign COMMAND --help` lists every key."
)
HELP = {"help_option_names": ["-h", "--help"]}  # TRL and argparse take -h


def _group(about: str) -> typer.Typer:
    return typer.Typer(no_args_is_help=True, context_settings=HELP, help=about)


app = typer.Typer(no_args_is_help=True, context_settings=HELP, add_completion=False, help=ABOUT)
data_app = _group("Inspect preference data.")
model_app = _group("Prepare and check models.")
gold_app = _group("The gold-judge preference benchmark.")
rm_app = _group("Reward models: train, evaluate, score.")
rl_app = _group("REINFORCE/RLOO alignment of a policy.")
eval_app = _group("Compare aligned policies with the SFT one.")
GROUP_NAMES = {
    id(data_app): "data",
    id(model_app): "model",
    id(gold_app): "gold",
    id(rm_app): "rm",
    id(rl_app): "rl",
    id(eval_app): "eval",
}
for sub in (data_app, model_app, gold_app, rm_app, rl_app, eval_app):
    app.add_typer(sub, name=GROUP_NAMES[id(sub)])

# Errors a user can fix from the message alone: print it, no traceback.
USER_ERRORS = (
    ConfigError,
    PreferenceFormatError,
    DataSourceError,
    ModelNotFoundError,
    PlacementError,
    CheckpointError,
    NonFiniteError,
    RenderingError,
    RewardFunctionError,
    NotARewardModelError,
    HubUploadError,
)


def _version() -> str:
    from distalign import __version__

    return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"distalign {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
        ),
    ] = False,
):
    pass


def config_help(command: str, cls: type, positional: str | None = None) -> str:
    """Usage and every key of ``cls`` (nested keys dotted) with type, default and doc."""
    pos = f" [{positional.upper()}]" if positional else ""
    lines = [
        f"Usage: distalign {command}{pos} [CONFIG.yaml] [key=value ...]",
        f"       distalign {command}{pos} [--config CONFIG.yaml] [--key value ...]",
        "",
        textwrap.fill(" ".join((cls.__doc__ or "").replace("``", "`").split()), 88),
        "",
        "Keys (key=value, or --key value):",
    ]
    for key, type_name, default, doc in config_fields(cls):
        lines.append(f"  {key} ({type_name}, default: {default})")
        lines += textwrap.wrap(doc.replace("``", "`"), 84, initial_indent="      ",
                               subsequent_indent="      ")  # fmt: skip
    return "\n".join(lines)


# "rm train" -> (config class, positional key, flag aliases, list keys) of every command
COMMANDS: dict[str, tuple[type, str | None, dict[str, str] | None, tuple[str, ...]]] = {}


def parse_command(command: str, args: Sequence[str]):
    """The config that ``distalign <command> <args>`` runs with (nothing is run)."""
    cls, positional, aliases, lists = COMMANDS[command]
    lists = (*lists, *list_keys(cls))
    path, overrides = parse_cli_args(args, positional, aliases, lists, bool_keys(cls))
    return load_config(cls, path, overrides)


MULTI_PROCESS = ("rm train", "rl train")  # the commands accelerate spreads over processes


def one_process(command: str) -> None:
    """Refuse a command that runs in one process when a launcher started several: each
    would run the whole job and write the same files."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and command not in MULTI_PROCESS:
        raise ConfigError(
            f"{command} runs in one process, and {launched} were launched (WORLD_SIZE): each "
            "would run the whole job and write the same files; run it without accelerate "
            "launch or torchrun (device=cuda:N picks a GPU)"
        )


def config_command(
    group: typer.Typer,
    name: str,
    cls: type,
    positional: str | None = None,
    aliases: dict[str, str] | None = None,
    list_keys: Sequence[str] = (),
) -> Callable:
    """Register ``fn(cfg)`` as ``distalign <group> <name>``: arguments -> ``cls`` -> fn."""
    full = f"{GROUP_NAMES.get(id(group), '')} {name}".strip()

    def decorator(fn: Callable) -> Callable:
        def command(ctx: typer.Context):
            args = list(ctx.args)
            if "--help" in args or "-h" in args:
                typer.echo(config_help(full, cls, positional))
                raise typer.Exit()
            cfg = parse_command(full, args)
            one_process(full)
            fn(cfg)

        COMMANDS[full] = (cls, positional, aliases, tuple(list_keys))

        command.__doc__ = fn.__doc__
        group.command(
            name,
            context_settings={
                "allow_extra_args": True,
                "ignore_unknown_options": True,
                "help_option_names": [],
            },
        )(command)
        return fn

    return decorator


@config_command(model_app, "prepare", ModelPrepareConfig)
def model_prepare(cfg: ModelPrepareConfig):
    """Resolve a model (converting the embedded GGUF once) and time a load."""
    from distalign.models.load import load_policy, resolve_model

    start = time.perf_counter()
    path = resolve_model(cfg.model_name_or_path)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    policy, _ = load_policy(cfg.model_name_or_path)
    loaded = time.perf_counter() - start
    n = sum(p.numel() for p in policy.parameters())
    console.print(f"model folder: {path}", markup=False)
    console.print(f"resolve: {prepared:.1f} s, load: {loaded:.1f} s, parameters: {n / 1e6:.1f} M")


@config_command(app, "generate", GenerateConfig)
def generate(cfg: GenerateConfig):
    """Answer chat prompts with a policy (default: the embedded SmolLM2-135M-Instruct)."""
    from distalign.api import generate as run_generate

    rows = run_generate(cfg)
    for row in rows:
        prompt = row["prompt"]
        text = prompt_text(prompt)
        console.rule(f"[bold]{escape(text)}")
        console.print(row["reply"], markup=False, highlight=False)
        cut = "" if row["finished"] else ", cut at max_completion_length"
        console.print(f"[dim]({row['tokens']} tokens{cut})")
    if cfg.output_file:
        console.print(f"wrote {len(rows)} replies to {cfg.output_file}", markup=False)


@config_command(
    data_app,
    "inspect",
    DataInspectConfig,
    positional="dataset_name",
    aliases={"split": "dataset_split"},
)
def data_inspect(cfg: DataInspectConfig):
    """Format, pair count, skipped rows, token-length percentiles, one rendered example."""
    from distalign.data.inspect import inspect_source
    from distalign.models.load import load_tokenizer

    source = cfg.dataset_name
    result = inspect_source(
        source,
        load_tokenizer(cfg.model_name_or_path, chat_template=cfg.chat_template_path),
        cfg.dataset_split,
        cfg.format,
        cfg.skip_bad_rows,
        name=cfg.dataset_config,
        revision=cfg.dataset_revision,
        max_length=cfg.max_length,
    )
    print_inspection(result, source, cfg.model_name_or_path)


@config_command(gold_app, "judge", GoldJudgeConfig, positional="input_file")
def gold_judge(cfg: GoldJudgeConfig):
    """Score any prompt/reply file with the gold judge (attributes, reward per group)."""
    from distalign.api import gold_judge as run_gold_judge

    out, means = run_gold_judge(cfg)
    console.print(f"wrote {out}", markup=False)
    for name, value in means.items():
        console.print(f"  mean {name}: {value:.3f}")


def _held_out_title(cfg, what: str) -> str:
    """Title of a training command's held-out table, which says so when that set is the
    training data (one file without splits and no eval_dataset_name)."""
    from distalign.data.load import (
        evaluates_on_training_data,
        held_out_of,
        held_out_split,
        split_to_name,
    )

    source = cfg.eval_dataset_name or cfg.dataset_name
    split = split_to_name(source, held_out_split(cfg))
    where = f"{source}, {split}" if split else str(source)
    if evaluates_on_training_data(*held_out_of(cfg)):
        return f"{what}: the training data itself ({where})"
    return f"{what} ({where})"


@config_command(rm_app, "eval", RMEvalConfig)
def rm_eval(cfg: RMEvalConfig):
    """Pairwise accuracy, margin, reward mean/std and calibration on held-out pairs."""
    from distalign.api import evaluate_reward_model
    from distalign.data.load import split_to_name

    result = evaluate_reward_model(cfg)
    split = split_to_name(cfg.dataset_name, cfg.dataset_test_split)
    data = f"{cfg.dataset_name} ({split})" if split else cfg.dataset_name
    print_metrics(f"{cfg.model_name_or_path} on {data}", result)


@config_command(rm_app, "score", RMScoreConfig, positional="input_file")
def rm_score(cfg: RMScoreConfig):
    """Score prompt/reply rows with a reward model into a new JSONL file."""
    from distalign.api import score

    out = score(cfg)
    n = sum(1 for _ in out.open(encoding="utf-8"))
    console.print(f"scored {n} rows -> {out}", markup=False)


@config_command(app, "report", ReportConfig, positional="compare_dir")
def report(cfg: ReportConfig):
    """Write a comparison's report.html again from its saved numbers and the runs it names."""
    from distalign.report.html import rebuild_report

    console.print(f"report: {rebuild_report(cfg.compare_dir)}", markup=False)


def _register_heavy_commands() -> None:
    """Commands whose config classes live in their own packages (imported here, once)."""
    from distalign.eval.config import CompareConfig
    from distalign.gold.build import BenchConfig
    from distalign.rl.config import RLTrainConfig
    from distalign.rm.config import RMTrainConfig

    @config_command(gold_app, "make", BenchConfig)
    def gold_make(cfg: BenchConfig):
        """Regenerate the benchmark: prompts -> SFT replies -> gold judge -> labelled pairs."""
        from distalign.gold.build import run_bench_make

        meta = run_bench_make(cfg)
        table = Table(title=f"gold benchmark -> {cfg.output_dir}")
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

    @config_command(rm_app, "train", RMTrainConfig)
    def rm_train(cfg: RMTrainConfig):
        """Train a reward model (scalar Bradley–Terry or distributional) on preference pairs."""
        from distalign.rm.train import run

        result = run(cfg)
        if os.environ.get("RANK", "0") != "0":  # under a launcher the first process says it
            return
        print_metrics(_held_out_title(cfg, "held-out"), result)
        console.print(f"model: {Path(cfg.output_dir) / 'final'}", markup=False)

    @config_command(rl_app, "train", RLTrainConfig, list_keys=("reward", "reward_weights"))
    def rl_train(cfg: RLTrainConfig):
        """REINFORCE/RLOO of a policy against a reward model or a reward function."""
        from distalign.rl.train import run

        result = run(cfg)
        if os.environ.get("RANK", "0") != "0":  # under a launcher the first process says it
            return
        table = Table(title=Text(_held_out_title(cfg, "held-out prompts")))
        cols = ["reward", "kl", "length", "eos_rate"] + (
            ["gold_mean"] if "gold_mean" in result["final"] else []
        )
        table.add_column("policy")
        for col in cols:
            table.add_column(col, justify="right")
        for name, r in (("SFT", result["initial"]), ("aligned", result["final"])):
            if r:  # None: no source scored any held-out reply (TRL's "not mine to score")
                table.add_row(name, *("—" if r[c] is None else f"{r[c]:.3f}" for c in cols))
        console.print(table)
        console.print(f"policy: {Path(cfg.output_dir) / 'final'}", markup=False)

    @config_command(
        eval_app,
        "compare",
        CompareConfig,
        aliases={"policy": "policies", "reward": "rewards", "run": "runs", "rm_run": "rm_runs"},
        list_keys=("policies", "rewards", "runs", "rm_runs", "judge"),
    )
    def eval_compare(cfg: CompareConfig):
        """Aligned policies vs SFT on held-out prompts under a judge (the gold judge on the
        benchmark's prompts), reward models, KL; writes the report."""
        from distalign.eval.policy import run_compare
        from distalign.report.tables import MIN_VERDICT_PROMPTS, headline_columns, headline_rows

        summary = run_compare(cfg)
        k = cfg.num_generations
        prompts = "prompts" if summary.get("trained_on_prompts") else "held-out prompts"
        table = Table(
            title=f"{summary['prompts']} {prompts} × {k} repl{'y' if k == 1 else 'ies'} each"
        )
        for col in headline_columns(summary):
            table.add_column(col, justify="right")
        for row in headline_rows(summary):
            table.add_row(*row)
        console.print(table)
        if (n := summary["prompts"]) < MIN_VERDICT_PROMPTS:  # as the report's verdicts say
            console.print(f"{n} prompt{'' if n == 1 else 's'}: too few to judge a policy by "
                          "(the intervals above are rough)")  # fmt: skip
        console.print(f"report: {summary['report']}", markup=False)


_register_heavy_commands()


def replica_logs() -> Callable | None:
    """Under a launcher, distalign's notes and warnings come from the first process only
    (each process reads the same data and config, so the others would say the same again),
    but for warnings about a process's own share (logged with ``extra=EVERY_PROCESS``) and
    errors, which every process says, after its rank. Returns the handlers' filter (None on
    the first process)."""
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        return None
    logging.getLogger("distalign").setLevel(logging.WARNING)

    def replica(record: logging.LogRecord) -> bool:
        own = record.levelno >= logging.ERROR or getattr(record, "every_process", False)
        if not record.name.startswith("distalign") or own:
            if not getattr(record, "rank_said", False):  # once, whichever handlers filter it
                record.msg, record.rank_said = f"[rank {rank}] {record.msg}", True
            return True
        return False

    for handler in logging.getLogger().handlers:
        handler.addFilter(replica)
    return replica


def main():
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quiet_libraries()  # after the loop: it sets the libraries' own levels
    replica_logs()
    try:
        app(prog_name="distalign")
    except USER_ERRORS as e:
        say_error(e)
    except ModuleNotFoundError as e:
        if "pip install" not in str(e):  # a missing optional extra says how to install it
            raise
        say_error(e)


def say_error(e: Exception) -> NoReturn:
    """A user's error in one line (under a launcher, after the process's rank: each process
    says its own), and exit status 2."""
    rank = os.environ.get("RANK", "0")
    where = "" if rank == "0" else f"[rank {rank}] "
    console.print(f"[red]error:[/] {escape(where + str(e))}", highlight=False, soft_wrap=True)
    raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
