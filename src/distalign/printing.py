"""What the command line prints: rich tables of metrics, of a data source's inspection, of a
benchmark's metadata, of an RL step's completions."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from distalign.data.formats import prompt_text

console = Console()


def print_inspection(result, source: str, model: str) -> None:
    """``data inspect``'s report: format, counts, skipped rows by reason, token lengths under
    ``model``'s tokenizer, one rendered example, and the metadata beside the data."""
    from distalign.data.inspect import PERCENTILES

    r = result.report
    console.print(f"[bold]{escape(str(source))}[/]  format: {r.format}")
    if result.prompt_only:
        console.print(f"rows read: {r.rows}   prompts: {result.prompts}   (no chosen/rejected)")
        if result.not_pairs:
            console.print(f"read as prompts; rm train needs pairs: {result.not_pairs}",
                          markup=False)  # fmt: skip
    else:
        console.print(
            f"rows read: {r.rows}   pairs: {r.kept}   with ratings: {result.scored_pairs}"
        )
        console.print(f"identical chosen/rejected (dropped): {r.identical}")
        console.print(f"empty replies (kept): {r.empty_replies}")
        if r.empty_prompts:
            console.print(f"empty prompts (kept): {r.empty_prompts}")
        if r.later_turns:
            console.print(f"HH replies that go on with a Human turn (kept): {r.later_turns}")
        if r.prompts_replaced:
            console.print(f"prompts read from the conversations, not the prompt column (kept): "
                          f"{r.prompts_replaced}")  # fmt: skip
    console.print(f"skipped malformed rows: {sum(r.skipped.values())}")
    for reason, n in r.skipped.most_common():
        console.print(f"  {n} × {reason}", markup=False)
    for example in r.examples[:3]:
        console.print(f"  e.g. {example}", markup=False)
    if result.lengths:
        table = Table(title=Text(f"token lengths ({model})"))
        table.add_column("part")
        for p in PERCENTILES:
            table.add_column("max" if p == 100 else f"p{p}", justify="right")
        for name, pct in result.lengths.items():
            table.add_row(name, *(str(pct[p]) for p in PERCENTILES))
        console.print(table)
        if result.max_length is not None:
            console.print(
                f"pairs longer than max_length {result.max_length} (prompt + longer reply): "
                f"{result.too_long} of {result.measured} measured (rm train cuts them to fit; "
                "TRL's RewardTrainer drops them)"
            )
        first = "first prompt" if result.prompt_only else "first pair, chosen reply,"
        console.rule(f"{first} as the model reads it")
        console.print(result.example, markup=False, highlight=False)
    if result.silent:
        from distalign.data.pairs import silent_note

        console.print(silent_note(result.silent, model), markup=False)
    if result.templated:
        from distalign.data.pairs import templated_note

        console.print(templated_note(result.templated, model), markup=False)
    if result.metadata:
        print_metadata(result.metadata, result.metadata_path)


def print_metadata(meta: dict, path: str | None) -> None:
    """The plain fields of a metadata.json beside the data and, when it has them, its splits'
    figures (the gold benchmark's Bayes ceiling); the rest is named, with the file's path."""
    console.rule("metadata.json")
    plain = {k: v for k, v in meta.items() if not isinstance(v, dict | list)}
    for key, value in plain.items():
        console.print(f"{key}: {value}", markup=False, highlight=False)
    splits = meta.get("splits")
    if isinstance(splits, dict) and all(isinstance(v, dict) for v in splits.values()):
        columns = list(dict.fromkeys(k for v in splits.values() for k in v))
        table = Table("split", *columns, box=None)
        for name, figures in splits.items():
            table.add_row(name, *(number(figures.get(c, "")) for c in columns))
        console.print(table)
    rest = [k for k in meta if k not in plain and k != "splits"]
    if rest:
        console.print(f"also: {', '.join(rest)} (in {path})", markup=False, highlight=False)


def print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=Text(title))  # a source's name, never rich markup ("a[train]")
    table.add_column("metric", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")  # paths shown whole
    for k, v in metrics.items():
        table.add_row(k, Text(number(v)))  # a value is data, never rich markup
    console.print(table)


def number(v) -> str:
    """A metric for a table: floats to 4 decimals, also inside an interval [low, high]."""
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list | tuple) and v and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.4f}" for x in v) + "]"
    return str(v)


def print_completions(rows: list[dict], step: int, width: int = 60) -> None:
    """``rl train``'s ``log_completions``: a table of a step's completions (the prompt's last
    user message and the reply, shortened to ``width`` characters; reward and advantage)."""
    table = Table(title=f"completions at step {step}", show_lines=True)
    for column in ("prompt", "reply"):
        table.add_column(column, overflow="fold")
    for column in ("reward", "advantage"):
        table.add_column(column, justify="right")
    for row in rows:
        prompt = prompt_text(row["prompt"])
        cells = [_shorten(str(prompt), width), _shorten(row["reply"], width)]
        # the texts are data: printed as they are, never read as rich markup
        reward = "—" if row["reward"] is None else f"{row['reward']:.3f}"  # None: none scored it
        table.add_row(*(Text(c) for c in cells), reward, f"{row['advantage']:+.3f}")
    console.print(table)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
