"""``aftlib eval``: judge an answers file, one judgment per line, resumably, with a summary table."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from .._errors import ConfigError, InputError
from .._io import file_fingerprint, read_yaml
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


def _read_config(path: Path | None) -> tuple[dict[str, Any], Any]:
    """The config's judge settings and its engine spec (None without one)."""
    if path is None:
        return {}, None
    data = read_yaml(path, "the eval config")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the eval config is a mapping, got {type(data).__name__}", source=str(path))
    settings = {str(k): v for k, v in data.items() if k != "engine"}
    spec: Any = None
    if "engine" in data:
        from ..config import EngineSpec
        from ..config._converter import structure

        spec = structure(data["engine"], EngineSpec, source=str(path), path="engine")  # type: ignore[arg-type,unused-ignore]
    return settings, spec


def _extractor(value: Any, key: str, source: str | None) -> Any:
    from ..config._converter import at
    from ..evaluate import AnswerExtractor

    with at(key, source=source):
        if isinstance(value, str):
            return AnswerExtractor.preset(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"an extractor is a preset name or a mapping, got {type(value).__name__}")
        known = ("strategies", "pattern", "normalize", "preset")
        for name in value:
            if name not in known:
                from ..config._converter import unknown_key

                raise ConfigError(unknown_key(str(name), list(known)), path=str(name))
        if "preset" in value:
            return AnswerExtractor.preset(str(value["preset"]))
        strategies = value.get("strategies", ("####", "the answer is", "boxed", "last_number"))
        if not isinstance(strategies, str | list):
            raise ConfigError("strategies is a list of strategy names", path="strategies")
        return AnswerExtractor(
            strategies=strategies, pattern=value.get("pattern"), normalize=bool(value.get("normalize", True))
        )


def _math_judge(settings: dict[str, Any], source: str | None) -> Any:
    from ..config._converter import unknown_key
    from ..evaluate import MathJudge

    known = ["extractor", "gold_extractor"]
    for key in settings:
        if key not in known:
            raise ConfigError(unknown_key(key, known), path=key, source=source)
    return MathJudge(**{key: _extractor(value, key, source) for key, value in settings.items()})


def _engine_judge(
    name: str, settings: dict[str, Any], engine: Any, source: str | None, **defaults: Any
) -> Any:
    """The AlpacaEval or MT-Bench judge (imported only when used) with the config's settings."""
    import attrs

    from ..config._converter import at, unknown_key

    if name == "alpaca_eval":
        from ..evaluate._alpaca import AlpacaEvalJudge

        cls: Any = AlpacaEvalJudge
    else:
        from ..evaluate._mtbench import MTBenchJudge

        cls = MTBenchJudge
    known = [a.name for a in attrs.fields(cls) if a.init and a.name != "engine"]
    for key in settings:
        if key not in known:
            raise ConfigError(unknown_key(key, known), path=key, source=source)
    with at(None, source=source):
        try:
            return cls(engine, **{**defaults, **settings})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"a setting of the {name} judge is invalid: {exc}") from None


def _bad(errors: tuple[InputError, ...], display: Display) -> list[str]:
    for error in errors:
        display.bad_line(error)
    return [f"{len(errors)} bad line(s) skipped"] if errors else []


def _join(
    judge_name: str, answers_path: Path, options: dict[str, Any], display: Display
) -> tuple[Any, list[str], dict[str, Any], dict[str, Any]]:
    """The items (joined), the notes, the input fingerprints, and defaults for the judge."""
    from .. import evaluate as ev

    answers = ev.read_answers(answers_path)
    notes = _bad(answers.bad, display)
    if answers.errors:
        notes.append(f"{answers.errors} error record(s) in {answers_path} skipped")
    inputs: dict[str, Any] = {"answers": file_fingerprint(answers_path)}
    defaults: dict[str, Any] = {}
    baseline, questions, references = options["baseline"], options["questions"], options["references"]
    if judge_name == "alpaca_eval":
        if baseline is None:
            raise click.UsageError("the alpaca_eval judge needs --baseline FILE (AlpacaEval outputs)")
        outputs, bad = ev.read_baseline(baseline)
        notes += _bad(bad, display)
        inputs["baseline"] = file_fingerprint(baseline)
        joined = ev.join_alpaca_eval(answers, outputs)
        defaults["instructions"] = tuple(outputs)  # the baseline's order, for the length-controlled rate
    elif judge_name == "mt_bench":
        found = None
        refs = None
        if questions is not None:
            found, bad = ev.read_questions(questions)
            notes += _bad(bad, display)
            inputs["questions"] = file_fingerprint(questions)
        if references is not None:
            refs, bad = ev.read_references(references)
            notes += _bad(bad, display)
            inputs["references"] = file_fingerprint(references)
        joined = ev.join_mt_bench(answers, found, refs)
    else:
        gold = None
        if references is not None:
            gold = ev.read_gold(references)
            notes += _bad(gold.bad, display)
            inputs["references"] = file_fingerprint(references)
        joined = ev.join_math(answers, gold)
    return joined, notes, inputs, defaults


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
    source = None if config is None else str(config)
    settings, spec = _read_config(config)
    if judge_name == "math" and spec is not None:
        raise ConfigError("the math judge uses no engine; remove 'engine'", path="engine", source=source)
    if judge_name != "math" and spec is None:
        raise ConfigError(
            f"the {judge_name} judge needs a judge engine: give --config FILE with "
            "engine: {type: openai|vllm, ...}"
        )
    engine: Any = None if spec is None else spec.build("judge")
    if judge_name == "alpaca_eval":
        engine.check_logprobs("the AlpacaEval judge")  # before any file is read
    judge = _math_judge(settings, source) if judge_name == "math" else None
    display = Display()
    files = {"baseline": baseline, "questions": questions, "references": references}
    joined, notes, inputs, defaults = _join(judge_name, answers, files, display)
    if judge is None:
        judge = _engine_judge(judge_name, settings, engine, source, **defaults)
    items = joined.items if limit is None else joined.items[:limit]
    from ..evaluate import judge_settings

    judge_config = {"judge": judge_settings(judge), "config": settings, "engine": _describe_spec(spec)}
    evaluation = Evaluation(
        judge,
        items,
        output,
        concurrency=concurrency,
        on_progress=display.update,
        restart=restart,
        settings=judge_config,
        inputs=inputs,
        counts=joined.counts(),
        notes=[*joined.notes, *notes],
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


def _describe_spec(spec: Any) -> Any:
    if spec is None:
        return None
    import attrs

    return attrs.asdict(spec)


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
