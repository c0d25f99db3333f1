"""``aftlib run`` and ``aftlib demo``: a dataset through a topology, with progress and a summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio
import click
from attrs import define, evolve, field

from .. import config
from .._accounting import PriceTable
from .._agents import Emit, WrappedAgent
from .._extract import AnswerExtractor
from .._io import iter_json, read_yaml
from .._results import Candidate
from .._topology import Topology
from .._types import Completion, Message
from ..run import FORMATS, Runner, RunSummary, Shard, journal_path, shard_spec, summary_path
from ._common import (
    Interrupted,
    configure_output,
    input_option,
    log_json_option,
    output_option,
    run_async,
    verbose_option,
    verbosity,
)
from ._display import Display

__all__ = ("demo", "run")

F = TypeVar("F", bound=Callable[..., Any])

_DEMO_NOTE = (
    "note: a toy model (0.92M parameters, trained here on two-step arithmetic) on a toy task; see "
    "docs/miniature.md. To run a real AFT model (linzw/Llama-AFT-On-Policy) use a GPU machine with "
    "aftlib[vllm] and a config whose model_name is that model: "
    "aftlib run --config aft.yaml --input prompts.jsonl --output out.jsonl"
)

RUN_HELP = """Run a topology over a dataset: every record of --input goes through the layers of --config,
and its answer is written as one JSON line as soon as it is done.

--config takes the AFT reference YAML unchanged, or a topology config (engines, agents, layers,
final). Rerunning the same command resumes: records already done are skipped, failed ones retried.
Without --config, runs the embedded demo (see aftlib demo).

Exit status: 0 every record answered; 1 some failed or bad input lines; 2 a usage mistake (nothing
ran); 130 / 143 stopped by Ctrl-C / SIGTERM (rerun to resume).
"""

DEMO_HELP = """Run the AFT topology with the shipped arithmetic AFT model on CPU over 16 sample problems
shipped with aftlib: 5 drafts, then one aggregation, per problem, in about a minute once the engine is
installed. Prints how often the drafts were right and how often the answers were.

The model is a toy (0.92M parameters trained on two-step arithmetic word problems); to run a real model,
use aftlib run --config.
"""


def _data(name: str) -> Path:
    return Path(str(resources.files("aftlib") / "data" / name))


def run_options(func: F) -> F:
    """The options of ``run`` and ``demo`` (all but ``--config``)."""
    options = [
        input_option(required=False, help="JSONL or JSON array of records (default: the sample prompts)."),
        output_option(required=False, help="The output file (default: JSONL on standard output, no resume)."),
        click.option(
            "--concurrency",
            type=click.IntRange(min=1),
            default=None,
            help="Records in flight at once (default: adapt to the engines' batch sizes; 128 for engines "
            "that do not say theirs).",
        ),
        click.option(
            "--limit", type=int, metavar="K", help="Only the first K input records (counted before --shard)."
        ),
        click.option(
            "--shard",
            metavar="I/N",
            callback=lambda ctx, param, value: shard_spec(value),
            help="Only shard I of N (I counts from 0): the input records at positions I, I+N, I+2N, ... "
            "(bad lines included); merge the shard outputs with aftlib merge.",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(FORMATS),
            default="jsonl",
            show_default=True,
            help="Output format; other than jsonl, written at the end from OUT.journal.jsonl.",
        ),
        click.option("--trace", is_flag=True, help="Write every layer's candidates."),
        click.option("--strict", is_flag=True, help="Check the whole input before generating."),
        click.option(
            "--prices",
            type=click.Path(path_type=Path),
            metavar="FILE",
            help="Price table (YAML: model -> prices per million tokens).",
        ),
        click.option(
            "--restart",
            is_flag=True,
            help="Start over: remove the output and its side files instead of resuming.",
        ),
        log_json_option,
        verbose_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("run", help=RUN_HELP, short_help="Run a topology over a dataset.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="AFT reference YAML or topology config (default: the demo).",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    help="Request cache: serve requests already answered (with the same seed) from DIR, store new ones.",
)
@click.option(
    "--cache-unseeded", is_flag=True, help="With --cache, reuse requests without a seed too (same samples)."
)
@run_options
@click.pass_context
def run(ctx: click.Context, /, config_path: Path | None, log_json: bool, **options: Any) -> int:
    """``aftlib run``."""
    configure_output(verbosity(ctx), log_json)
    return _execute(config_path, **options)


@click.command("demo", help=DEMO_HELP, short_help="Run the AFT topology on a tiny CPU model.")
@run_options
@click.pass_context
def demo(ctx: click.Context, /, log_json: bool, **options: Any) -> int:
    """``aftlib demo``."""
    configure_output(verbosity(ctx), log_json)
    return _execute(None, **options)


def _demo_topology() -> tuple[Topology, _Tally]:
    """The demo's AFT topology on the shipped AFT model, its final agent counting what is right."""
    from ..testing import arithmetic_model

    data = read_yaml(_data("demo.yaml"), "the demo config")
    data["model_name"] = str(arithmetic_model("aft"))
    topology = config.parse(data, source="aftlib demo")
    gold = {}
    for item in iter_json(_data("sample_problems.jsonl"), what="input"):
        gold[item.value["prompt"]] = item.value["answer"]
    tally = _Tally(topology.final, gold=gold)
    return evolve(topology, final=tally), tally


@define(eq=False)
class _Tally(WrappedAgent):
    """A final agent as it is, that also counts how often its references and its answers are right.

    The demo's topology has one aggregation (``num_aggregation: 1``), so the references are the drafts.
    """

    reads_references: ClassVar[bool] = True
    gold: dict[str, str] = field(kw_only=True)
    drafts: list[bool] = field(factory=list)
    answers: list[bool] = field(factory=list)

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Run the inner agent; count the drafts and the answer against the gold answer."""
        candidates, completion = await self.agent.run(
            conversation, references, layer=layer, emit=emit, is_answer=is_answer
        )
        gold = self.gold.get(conversation[-1].content) if conversation else None
        if gold is not None:
            self.drafts.extend(_right(gold, text) for text in references)
            self.answers.extend(_right(gold, c.text) for c in candidates)
        return candidates, completion

    def report(self) -> str:
        """``drafts right 38/80 (48 %), answers right 13/16 (81 %)``."""

        def share(values: list[bool]) -> str:
            percent = f" ({100 * sum(values) / len(values):.0f} %)" if values else ""
            return f"{sum(values)}/{len(values)}{percent}"

        return f"drafts right {share(self.drafts)}, answers right {share(self.answers)}"


def _right(gold: str, text: str) -> bool:
    from ..evaluate._math import answers_match

    extractor = AnswerExtractor()
    expected, answer = extractor.extract(gold).answer, extractor.extract(text).answer
    return expected is not None and answer is not None and answers_match(expected, answer)[0]


def _cached(directory: Path, unseeded: bool) -> Any:
    """Wrap each engine of the config in a request cache on ``directory``."""
    from ..engines import CachingEngine

    return lambda key, build: CachingEngine(build(), directory, reuse_unseeded=unseeded)


def _generator(topology: Topology) -> str:
    engines = topology.final.engines or topology.engines
    return (Path(engines[0].name).name if engines else "") or "aftlib"


def _empty(path: Path) -> bool:
    for _ in iter_json(path, what="input"):
        return False
    return True


def _execute(
    config_path: Path | None,
    *,
    input_path: Path | None,
    output: Path | None,
    concurrency: int | None,
    limit: int | None,
    fmt: str,
    trace: bool,
    strict: bool,
    prices: Path | None,
    restart: bool,
    cache: Path | None = None,
    cache_unseeded: bool = False,
    shard: Shard | None = None,
) -> int:
    demo = config_path is None
    price_table = None if prices is None else PriceTable.load(prices)
    hook = None if cache is None else _cached(cache, cache_unseeded)
    tally = None
    if config_path is None:
        topology, tally = _demo_topology()
    else:
        topology = config.load(config_path, engine_hook=hook)
    source = input_path or _data("sample_problems.jsonl")
    # answers written to a terminal would run through a live bar on the same screen: plain lines then
    display = Display(live=False) if output is None and sys.stdout.isatty() else Display()
    runner = Runner(
        topology,
        source,
        output,
        concurrency=concurrency,
        limit=limit,
        format=fmt,
        trace=trace,
        strict=strict,
        generator=_generator(topology),
        on_progress=display.update,
        on_bad_line=display.bad_line,
        prices=price_table,
        restart=restart,
        config_name="aftlib demo" if config_path is None else str(config_path),
        shard=shard,
    )
    hint = None if output is None else f"rerun to resume from {journal_path(output, fmt)}"
    timings: dict[str, float] = {}
    with runner.claim():  # the input readable, the output writable and ours: before any engine starts
        if limit == 0 or _empty(source):
            anyio.run(runner.run, backend="asyncio")  # writes the empty output and its summary
            why = " (--limit 0)" if limit == 0 else ""
            click.echo(f"aftlib: 0 records in {source}{why}; nothing to run", err=True)
            return 0

        async def work() -> RunSummary:
            with display:
                start = time.monotonic()
                engines = len(topology.engines)
                display.starting(f"starting {engines} engine{'s' if engines != 1 else ''}")
                async with topology:
                    timings["engine start"] = time.monotonic() - start
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(display.tick)
                        try:
                            result = await runner.run()
                        finally:
                            tg.cancel_scope.cancel()
                            display.finish()  # before the engines close: the times are the run's
                return result

        try:
            summary = run_async(work, hint=hint)
        except Interrupted as stop:
            if "engine start" not in timings:
                raise Interrupted(stop.signum, "the engines had not started, nothing was run") from None
            click.echo(_summary(runner.summary(interrupted=True), timings), err=True)  # what it did
            raise
    click.echo(_summary(summary, timings), err=True)
    if tally is not None:
        click.echo(tally.report(), err=True)
    if demo:
        click.echo(_DEMO_NOTE, err=True)
    return 0 if summary.ok else 1


def _summary(summary: RunSummary, timings: dict[str, float]) -> str:
    u = summary.usage
    saved = f", about {u.saved_tokens:,} saved by drafting" if u.saved_tokens else ""
    lines = [
        f"run {summary.run_id}" + (" (interrupted)" if summary.interrupted else ""),
        f"records: {summary.records} read, {summary.done} done, {summary.resumed} already done, "
        f"{summary.failed} failed, {summary.bad} bad lines",
        f"tokens: {u.prompt_tokens:,} prompt ({u.cached_tokens:,} cached), "
        f"{u.completion_tokens:,} completion generated, {u.reused_tokens:,} reused from the cache, "
        f"{u.requests:,} requests{saved}",
    ]
    for layer in summary.usage_report.layers:
        agents = ", ".join(
            f"{name} {a.usage.prompt_tokens:,}+{a.usage.completion_tokens:,}"
            for name, a in layer.agents.items()
        )
        lines.append(f"  layer {layer.layer}: {agents}")
    for failed in summary.usage_report.failed_agents:
        lines.append(f"  agent {failed.agent} of layer {failed.layer} failed in {failed.records} record(s)")
    if summary.cost is not None:
        lines.append(f"cost: {summary.cost:,.4f}")
    if "engine start" in timings:
        lines.append(f"engine start: {timings['engine start']:,.1f}s")
    lines.append(f"generation: {summary.elapsed:,.1f}s")
    answer, first = summary.latency.answer, summary.latency.first_token
    throughput = summary.throughput
    if answer.p50 is not None and answer.p90 is not None and answer.p99 is not None:
        line = f"time to answer: p50 {answer.p50:,.2f}s, p90 {answer.p90:,.2f}s, p99 {answer.p99:,.2f}s"
        if first.p50 is not None and first.p90 is not None:
            line += f"; first answer token p50 {first.p50:,.2f}s, p90 {first.p90:,.2f}s"
        lines.append(line)
        lines.append(
            f"throughput: {throughput.records_per_s or 0:,.2f} records/s, "
            f"{throughput.completion_tokens_per_s or 0:,.0f} generated tokens/s"
        )
    if summary.output is not None:
        lines.append(f"output: {summary.output}")
        lines.append(f"summary: {summary_path(summary.output)}")
    if summary.errors is not None:
        lines.append(f"bad lines: {summary.errors}")
    return "\n".join(lines)
