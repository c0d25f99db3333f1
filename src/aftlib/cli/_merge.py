"""``aftlib merge``: the outputs of ``aftlib run --shard I/N`` into one file, in input order."""

from __future__ import annotations

from pathlib import Path

import click

from ..run import FORMATS, MergeSummary, merge_shards
from ._common import configure_output, input_option, log_json_option, output_option, verbose_option, verbosity

__all__ = ("merge_command",)

MERGE_HELP = """Merge the outputs of aftlib run --shard I/N into one file: every record exactly once, in
the order of the input.

Give every shard's output (the --output of each run, in any order; a shell glob such as out.*.jsonl
will do). The merge refuses, naming the files, shards made from different inputs or topologies, of
different N or --limit, a shard given twice or missing, an output that is not a shard, and a shard
that is not complete (a record without a line: rerun that shard, it resumes; or pass --partial).
It reads the input file the shards' OUT.run.json names (--input when the shards were made on other
machines: it must be the same file), takes the order from it, and writes the output atomically, with
OUT.summary.json (counts, usage, time to answer p50/p90/p99) beside it.

Exit status: 0 every record answered; 1 some records failed, bad input lines, or records missing
(with --partial); 2 refused (nothing was written).
"""


@click.command("merge", help=MERGE_HELP, short_help="Merge shard outputs into one file, in input order.")
@output_option(required=True, help="The merged output file.")
@input_option(
    required=False,
    help="The input the shards were made from (default: the file their OUT.run.json names).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="jsonl",
    show_default=True,
    help="Output format, as aftlib run --format writes it (jsonl: every record's line, failed ones too).",
)
@click.option(
    "--generator",
    metavar="NAME",
    help="The model name in alpaca_eval and mt_bench outputs (default: the one the shards' runs used).",
)
@click.option("--partial", is_flag=True, help="Merge shards that are not complete (warns, exits 1).")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="SHARD...")
@log_json_option
@verbose_option
@click.pass_context
def merge_command(
    ctx: click.Context,
    /,
    shards: tuple[Path, ...],
    output: Path,
    input_path: Path | None,
    fmt: str,
    generator: str | None,
    partial: bool,
    log_json: bool,
) -> int:
    """``aftlib merge``."""
    configure_output(verbosity(ctx), log_json)
    summary = merge_shards(
        shards,
        output,
        input=input_path,
        format=fmt,
        generator=generator,
        partial=partial,
        on_warning=lambda text: click.echo(f"aftlib: warning: {text}", err=True),
    )
    click.echo(_summary(summary), err=True)
    return 0 if summary.ok else 1


def _summary(summary: MergeSummary) -> str:
    usage = summary.usage
    lines = [
        f"merged {summary.shards} shard{'s' if summary.shards != 1 else ''}: {summary.records} records read, "
        f"{summary.done} done, {summary.failed} failed, {summary.bad} bad lines"
        + (f", {summary.missing} missing" if summary.missing else ""),
        f"tokens: {usage.prompt_tokens:,} prompt, "
        f"{usage.completion_tokens:,} completion, {usage.requests:,} requests",
    ]
    answer = summary.latency.answer
    if answer.p50 is not None and answer.p90 is not None and answer.p99 is not None:
        lines.append(
            f"time to answer: p50 {answer.p50:,.2f}s, p90 {answer.p90:,.2f}s, p99 {answer.p99:,.2f}s"
        )
    lines.append(f"output: {summary.output}")
    lines.append(f"summary: {summary.summary}")
    if summary.errors is not None:
        lines.append(f"bad lines: {summary.errors}")
    return "\n".join(lines)
