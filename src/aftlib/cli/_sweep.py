"""``aftlib sweep``: a grid of topologies over one prompt set, judged, with a results table and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ._common import configure_output, log_json_option, run_async, verbose_option, verbosity

__all__ = ("sweep_command",)

SWEEP_HELP = """Run every cell of a sweep file, judge it, and write DIR/results.csv, DIR/results.md and plots
of quality against mean tokens per record (and against cost with a price table), the Pareto front marked.

The sweep file names a base config (topology file or AFT reference config), the axes to vary (key
paths of the base file, each with a list of values), the prompts, the judge, and optionally limit,
prices and concurrency. Cells with identical engines share one engine, and every request two cells
send alike (the same proposals) is generated once: a request cache in DIR/cache.

Rerunning the same command resumes: finished cells are skipped, a half-done cell resumes per record.

Exit status: 0 every cell done; 1 some cell failed or is incomplete; 2 a usage mistake (nothing ran);
130 / 143 stopped by Ctrl-C / SIGTERM (rerun to resume).
"""


@click.command("sweep", help=SWEEP_HELP, short_help="Run, judge and plot a grid of topologies.")
@click.argument("sweep_file", type=click.Path(path_type=Path), metavar="FILE")
@click.option(
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    metavar="DIR",
    help="The sweep's folder.",
)
@click.option("--restart", is_flag=True, help="Remove the cells' earlier results first (the cache is kept).")
@log_json_option
@verbose_option
@click.pass_context
def sweep_command(
    ctx: click.Context, /, sweep_file: Path, output: Path, restart: bool, log_json: bool
) -> int:
    """``aftlib sweep``."""
    from ..evaluate import Sweep, SweepCell, markdown_table

    configure_output(verbosity(ctx), log_json)
    sweep = Sweep.load(sweep_file)
    sweep.build_judge()  # a bad judge section is a usage mistake, before any engine starts
    total = len(sweep.cells)
    position = {cell.id: i + 1 for i, cell in enumerate(sweep.cells)}

    def on_cell(cell: SweepCell, what: str) -> None:
        click.echo(f"cell {position[cell.id]}/{total} {cell.id}: {what}", err=True)

    async def work() -> Any:
        return await sweep.run(output, restart=restart, on_cell=on_cell)

    report = run_async(work, hint=f"rerun to resume the sweep in {output}")
    click.echo(markdown_table(report.results, sweep.columns), err=True)
    click.echo(
        f"tokens: {report.generated_tokens:,} generated, {report.reused_tokens:,} reused from the cache, "
        f"{report.engine_requests:,} engine requests ({report.skipped} cell(s) already done)",
        err=True,
    )
    if report.pareto:
        click.echo(f"Pareto front (quality against tokens per record): {', '.join(report.pareto)}", err=True)
    for name, path in report.files.items():
        click.echo(f"{name}: {path}", err=True)
    click.echo(f"cells: {output / 'cells'}", err=True)
    return 0 if all(r.status == "done" for r in report.results) else 1
