"""The ``aftlib`` command line.

``aftlib run`` streams a dataset through a topology; ``aftlib demo`` (and ``aftlib run`` with no config)
runs the AFT topology on a tiny random model on CPU over sample prompts shipped with aftlib.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import structlog
import yaml

from . import config
from ._accounting import PriceTable
from ._errors import AftError, ConfigError, InputError
from ._runner import FORMATS, Progress, Runner, RunSummary, progress_path, summary_path
from ._topology import Topology
from ._util import unwrap_group
from .finetune import _data_cli as data_cli
from .finetune import _train_cli as train_cli

__all__ = ("main",)

_DEMO_NOTE = (
    "note: this demo runs a tiny model with random weights, so its text is meaningless. To run a real AFT "
    "model (linzw/Llama-AFT-On-Policy) use a GPU machine with aftlib[vllm] and a config whose model_name "
    "is that model: aftlib run --config aft.yaml --input prompts.jsonl --output out.jsonl"
)


def _data(name: str) -> Path:
    return Path(str(resources.files("aftlib") / "data" / name))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aftlib", description="Propose-and-aggregate LLM inference.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a topology over a dataset")
    demo = commands.add_parser("demo", help="run the AFT topology on a tiny CPU model over sample prompts")
    for sub in (run, demo):
        sub.add_argument("--config", type=Path, help="AFT reference YAML or topology config (default: demo)")
        sub.add_argument("--input", type=Path, help="JSONL or JSON array of records (default: samples)")
        sub.add_argument("--output", type=Path, help="output file (default: JSONL on standard output)")
        sub.add_argument("--concurrency", type=int, default=128, help="records in flight (default 128)")
        sub.add_argument("--limit", type=int, help="only the first K input records")
        sub.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default jsonl)")
        sub.add_argument("--trace", action="store_true", help="write every layer's candidates")
        sub.add_argument("--strict", action="store_true", help="check the whole input before generating")
        sub.add_argument("--prices", type=Path, help="price table (YAML: model -> per-million prices)")
        sub.add_argument("--log-json", action="store_true", help="log JSON lines to standard error")
    data_cli.add_parser(commands)
    train_cli.add_parser(commands)
    return parser


def _configure_logging(json_logs: bool) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _demo_topology() -> Topology:
    from .testing import tiny_model_path

    data = yaml.safe_load(_data("demo.yaml").read_text(encoding="utf-8"))
    data["model_name"] = str(tiny_model_path())
    return config.parse(data, source="aftlib demo")


def _generator(topology: Topology) -> str:
    return Path(topology.final.engine.name).name or "aftlib"


class _ProgressLine:
    """A one-line progress display on a terminal, redrawn at most twice a second."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, progress: Progress) -> None:
        now = anyio.current_time()
        if now - self.last >= 0.5 or progress.finished == progress.total:
            self.last = now
            sys.stderr.write("\r\033[K" + progress.line())
            sys.stderr.flush()


def _summary(summary: RunSummary) -> str:
    u = summary.usage
    lines = [
        f"run {summary.run_id}" + (" (interrupted)" if summary.interrupted else ""),
        f"records: {summary.records} read, {summary.done} done, {summary.resumed} already done, "
        f"{summary.failed} failed, {summary.bad} bad lines",
        f"tokens: {u.prompt_tokens:,} prompt ({u.cached_tokens:,} cached), "
        f"{u.completion_tokens:,} completion, {u.requests:,} requests",
    ]
    for layer in summary.report.get("layers", []):
        agents = ", ".join(
            f"{name} {a['prompt_tokens']:,}+{a['completion_tokens']:,}" for name, a in layer["agents"].items()
        )
        lines.append(f"  layer {layer['layer']}: {agents}")
    for failed in summary.report.get("failed_agents", []):
        lines.append(
            f"  agent {failed['agent']} of layer {failed['layer']} failed in {failed['records']} record(s)"
        )
    if summary.cost is not None:
        lines.append(f"cost: {summary.cost:,.4f}")
    lines.append(f"wall time: {summary.elapsed:,.1f}s")
    if summary.output is not None:
        lines.append(f"output: {summary.output}")
        lines.append(f"summary: {summary_path(summary.output)}")
    if summary.errors is not None:
        lines.append(f"bad lines: {summary.errors}")
    return "\n".join(lines)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _run(args: argparse.Namespace) -> tuple[RunSummary, int | None]:
    """Run the command; returns the summary and the signal that stopped it, if one did."""
    demo = args.config is None
    prices = None if args.prices is None else PriceTable.load(args.prices)
    topology = _demo_topology() if demo else config.load(args.config)
    runner = Runner(
        topology,
        args.input or _data("sample_prompts.jsonl"),
        args.output,
        concurrency=args.concurrency,
        limit=args.limit,
        format=args.format,
        trace=args.trace,
        strict=args.strict,
        generator=_generator(topology),
        on_progress=_ProgressLine() if sys.stderr.isatty() else None,
        prices=prices,
    )
    if args.input is not None and not args.input.is_file():
        raise InputError("no such input file", where=str(args.input))
    stopped_by: int | None = None

    async def watch(scope: anyio.CancelScope) -> None:
        nonlocal stopped_by
        with anyio.open_signal_receiver(*_SIGNALS) as signals:
            async for signum in signals:
                stopped_by = signum
                scope.cancel()  # aborts every request in flight; engines still close, shielded
                return

    summary: RunSummary | None = None
    with unwrap_group():  # a config or engine error reaches main() as itself
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            try:
                async with topology:
                    summary = await runner.run()
            finally:
                tg.cancel_scope.cancel()
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    if summary is None:  # stopped by a signal: the runner wrote what it had finished
        summary = runner.summary(interrupted=True)
    elif demo:
        print(_DEMO_NOTE, file=sys.stderr)
    return summary, stopped_by


def _quiet_vllm() -> None:
    """Keep standard output for results: vLLM logs to stderr, warnings and up, unless told otherwise."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: every record answered; 1: some records failed; 2: bad usage, config or input; 130 / 143: stopped
    by SIGINT (Ctrl-C) / SIGTERM, with the output left resumable.
    """
    args = _parser().parse_args(argv)
    _quiet_vllm()
    _configure_logging(getattr(args, "log_json", False))
    handler = getattr(args, "handler", None)
    if handler is not None:  # `aftlib data ...` and `aftlib train ...` own their error handling
        return int(handler(args))
    try:
        summary, stopped_by = anyio.run(_run, args, backend="asyncio")
    except (ConfigError, InputError) as exc:
        print(f"aftlib: error: {exc}", file=sys.stderr)
        return 2
    except AftError as exc:
        print(f"aftlib: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the run could watch for signals (while engines start)
        print("aftlib: interrupted before the run started", file=sys.stderr)
        return 130
    print(_summary(summary), file=sys.stderr)
    if stopped_by is not None:
        where = (
            "" if args.output is None else f"; rerun to resume from {progress_path(args.output, args.format)}"
        )
        print(f"aftlib: interrupted by {signal.Signals(stopped_by).name}{where}", file=sys.stderr)
        return 128 + stopped_by
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
