"""``aftlib eval``: judge an answers file, one judgment per line, resumably, with a summary table."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from .._errors import ConfigError
from ._common import (
    Interrupted,
    check_output,
    configure_output,
    log_json_option,
    output_option,
    run_async,
    verbose_option,
    verbosity,
)
from ._display import Display

__all__ = ("eval_command",)

F = TypeVar("F", bound=Callable[..., Any])

JUDGES = ("alpaca_eval", "mt_bench", "math")

EVAL_HELP = """Judge an answers file and write one judgment per line to --output, with a summary in
OUTPUT.summary.json and a table on standard output.

--answers is aftlib run's JSONL, an AlpacaEval JSON list (instruction, output, generator) or a
FastChat model_answer JSONL. What it is judged against: --baseline (alpaca_eval: an AlpacaEval outputs
file, joined by the exact instruction), --questions and --references (mt_bench: FastChat question.jsonl
and reference answers), or --references (math: GSM8K-layout {"question", "answer"} records, joined by
id or question text; without it, each answer's own "answer" field). Answers with no counterpart are
counted and left out.

--config names the judge engine (YAML: engine: {type: openai|vllm|fake, ...}) and judge settings
(alpaca_eval, mt_bench: seed, ...; math: extractor, gold_extractor). The math judge needs no engine
and no config.

Rerunning the same command resumes: items already judged are skipped, failed judge calls retried.

Exit status: 0 every item judged; 1 some judge calls failed; 2 a usage mistake (nothing ran); 130 /
143 stopped by Ctrl-C / SIGTERM (rerun to resume).
"""


def _file(name: str, help: str) -> Callable[[F], F]:
    return click.option(name, type=click.Path(path_type=Path), metavar="FILE", help=help)


@click.command("eval", help=EVAL_HELP, short_help="Judge an answers file (AlpacaEval, MT-Bench, math).")
@click.option("--judge", "judge_name", type=click.Choice(JUDGES), required=True, help="The judge.")
@click.option(
    "--answers",
    type=click.Path(path_type=Path),
    required=True,
    metavar="FILE",
    help="The answers: aftlib JSONL, AlpacaEval JSON or FastChat model_answer JSONL.",
)
@output_option(required=True, help="The judgments file (JSONL; resumed when rerun).")
@_file("--baseline", "AlpacaEval outputs of the baseline (alpaca_eval).")
@_file("--questions", "FastChat question.jsonl (mt_bench).")
@_file("--references", "Reference answers: FastChat model_answer (mt_bench) or GSM8K layout (math).")
@_file("--config", "The judge engine and settings (YAML); the math judge needs none.")
@click.option("--concurrency", type=int, default=16, show_default=True, help="Judge calls in flight at once.")
@click.option("--limit", type=int, metavar="K", help="Only the first K matched answers.")
@click.option("--restart", is_flag=True, help="Start over: remove the judgments and their side files.")
@log_json_option
@verbose_option
@click.pass_context
def eval_command(ctx: click.Context, /, log_json: bool, **options: Any) -> int:
    """``aftlib eval``."""
    configure_output(verbosity(ctx), log_json)
    return _execute(**options)


def _execute(
    *,
    judge_name: str,
    answers: Path,
    output: Path,
    baseline: Path | None,
    questions: Path | None,
    references: Path | None,
    config: Path | None,
    concurrency: int,
    limit: int | None,
    restart: bool,
) -> int:
    from ..evaluate import EvalReport, Evaluation

    if limit is not None and limit < 0:
        raise click.BadParameter(f"must be >= 0, got {limit}", param_hint="'--limit'")
    if concurrency < 1:
        raise click.BadParameter(f"must be at least 1, got {concurrency}", param_hint="'--concurrency'")
    if judge_name == "alpaca_eval" and baseline is None:
        raise click.UsageError("the alpaca_eval judge needs --baseline FILE (AlpacaEval outputs)")
    if output.resolve() == answers.resolve():
        raise ConfigError("the output file is the answers file")
    check_output(output)
    from ..evaluate import join_answers, judge_from_config, read_judge_config

    read_judge_config(config)  # a bad config is refused before any answers file is read
    display = Display()
    joined = join_answers(
        judge_name,
        answers,
        baseline=baseline,
        questions=questions,
        references=references,
        on_bad=display.bad_line,
    )
    setup = judge_from_config(judge_name, config, instructions=joined.instructions)
    engine = setup.engine
    items = joined.items if limit is None else joined.items[:limit]
    evaluation = Evaluation(
        setup.judge,
        items,
        output,
        concurrency=concurrency,
        on_progress=display.update,
        restart=restart,
        settings=setup.settings,
        inputs=joined.inputs,
        counts=joined.counts,
        notes=joined.notes,
    )
    hint = f"rerun to resume from {output}"
    started: dict[str, float] = {}
    with evaluation.claim():

        async def work() -> EvalReport:
            with display:
                if engine is not None:
                    display.starting("starting the judge engine")
                async with engine if engine is not None else contextlib.nullcontext():
                    started["engine"] = time.monotonic()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(display.tick)
                        try:
                            report = await evaluation.run()
                        finally:
                            tg.cancel_scope.cancel()
                            display.finish()
                return report

        try:
            report = run_async(work, hint=hint)
        except Interrupted as stop:
            if "engine" not in started:
                raise Interrupted(
                    stop.signum, "the judge engine had not started, nothing was judged"
                ) from None
            click.echo(render_report(evaluation.report(interrupted=True)), err=True)
            raise
    click.echo(render_report(report))
    return 0 if report.ok else 1


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_report(report: Any) -> str:
    """The summary as a plain two-column table, then its notes and files."""
    data = report.to_json()
    skip = {"judge", "notes", "tokens", "run", "output"}
    rows = [("judge", str(data["judge"])), ("n", str(data["n"]))]
    rows += [(key, _value(value)) for key, value in data.items() if key not in skip and key != "n"]
    tokens = data["tokens"]
    rows.append(("tokens", f"{tokens['prompt_tokens']:,} prompt, {tokens['completion_tokens']:,} completion"))
    run = data["run"]
    rows.append(
        ("this run", f"{run['judged']} judged, {run['resumed']} already judged, {run['failed']} failed")
    )
    width = max(len(key) for key, _ in rows)
    lines = [f"{key.ljust(width)}  {value}" for key, value in rows]
    lines += [f"note: {note}" for note in data["notes"]]
    lines.append(f"judgments: {report.output}")
    lines.append(f"summary: {report.output}.summary.json")
    return "\n".join(lines)
