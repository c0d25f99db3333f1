"""The dataset runner: push every record of a file through a topology, pipelined, resumably.

Records are pipelined: each one runs its own layers as soon as they can, never waiting for other records.
How many are in flight adapts to the engines (:mod:`._admission`: enough to keep vLLM's batches full, no
more), or is a fixed ``concurrency``; every request goes at its priority by depth (:mod:`._priority`), so
an engine that schedules by priority finishes records one after another. The input is streamed. Each
finished record is appended to the output as one JSON line and flushed at once, so a crash loses at most
the records in flight; rerunning the same command skips the records already done, repairs a torn last
line, and retries records that failed. While it runs, the runner holds an exclusive lock on the output,
and the output's ``OUT.run.json`` records what made it (the input file and the topology, as fingerprints),
so a rerun with another input or topology is refused instead of mixing two datasets in one file.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
from attrs import define, field

from .._accounting import Ledger, PriceTable, usage_dict
from .._admission import Admission
from .._errors import ConfigError, InputError
from .._io import file_fingerprint, fingerprint, iter_json
from .._logging import context as log_context
from .._logging import get_logger
from .._records import BadLine, read_records
from .._records import InputRecord as Record
from .._topology import Topology
from .._util import unwrap_group
from ._answer import answer_record
from ._codecs import FORMATS, write_format
from ._journal import Journal, errors_path, record_key, run_journal, write_bad_lines
from ._shards import Shard, shard_spec
from ._stats import Latencies, RunStats, RunSummary, Throughput, loop_clock

__all__ = ("Runner", "describe_topology")

Format = Literal["jsonl", "aft", "alpaca_eval", "mt_bench"]


def describe_topology(topology: Topology) -> dict[str, Any]:
    """The topology as JSON: what decides its answers (agents, engines, models, templates, sampling).

    Per agent its class, name, engine name and model, template, sampling and LoRA adapter; per layer
    its agents, ``min_candidates`` and ``timeout``; then the final agent. Two topologies with the same
    description answer the same way, so the runner fingerprints it to tell whose records an output holds.
    """
    return {
        "layers": [
            {
                "agents": [agent.describe() for agent in layer.agents],
                "min_candidates": layer.min_candidates,
                "timeout": layer.timeout,
            }
            for layer in topology.layers
        ],
        "final": topology.final.describe(),
    }


def _count_records(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            head = handle.read(1024).lstrip()
            if head.startswith(b"["):
                return None
            handle.seek(0)
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def _optional_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


@define
class Runner:
    """Runs a topology over every record of an input file.

    Args:
        topology: The topology (its engines already started).
        input: A JSONL file (streamed) or a JSON array file.
        output: Where finished records go; None writes JSONL to standard output (no resume).
        concurrency: The most records in flight at once; None (the default) adapts to the engines: new
            records start while the first layer's engines have room in their batches (vLLM's
            ``max_num_seqs``), and 128 are in flight when an engine does not say its batch size.
        limit: Only the first ``limit`` input records (counted before sharding).
        shard: Only this shard's records (a :class:`~aftlib.Shard` or ``"I/N"``): the input items at
            positions ``I, I + N, ...``, bad lines included; recorded in ``OUT.run.json``, and a rerun
            of the output with another shard is refused. Merge shard outputs with
            :func:`~aftlib.merge_shards`.
        format: ``jsonl`` (one line per record, as it finishes), or a file written at the end from the
            journal (:func:`journal_path`): ``aft`` (the input items with a ``response``, one JSON array,
            input order), ``alpaca_eval`` (``instruction, output, generator``) or ``mt_bench`` (FastChat
            answers).
        trace: Add every layer's candidates to each output line.
        strict: Check the whole input first and stop before any generation if a line is bad.
        generator: The model name written into ``alpaca_eval`` and ``mt_bench`` outputs.
        on_progress: Called with the live :class:`RunStats` when the run starts and after each record.
        on_bad_line: Called with an :class:`~aftlib.InputError` (``FILE:LINE: what is wrong``) for each
            bad input line, instead of logging a warning.
        prices: A price table, to add costs to the output and the summary.
        restart: Start over: remove an earlier run's output and side files instead of resuming it.
        config_name: What the topology came from (a config file), recorded in ``OUT.run.json`` and named
            when a rerun is refused.
    """

    topology: Topology
    input: Path = field(converter=Path)
    output: Path | None = field(default=None, converter=_optional_path)
    concurrency: int | None = None
    limit: int | None = None
    format: str = "jsonl"
    trace: bool = False
    strict: bool = False
    generator: str = "aftlib"
    on_progress: Callable[[RunStats], None] | None = None
    prices: PriceTable | None = None
    run_id: str = field(factory=lambda: uuid.uuid4().hex[:12])
    on_bad_line: Callable[[InputError], None] | None = None
    restart: bool = False
    config_name: str | None = None
    shard: Shard | None = field(default=None, converter=shard_spec)
    stats: RunStats = field(factory=RunStats, init=False)
    _ledger: Ledger = field(init=False, repr=False)
    _counts: dict[str, int] = field(factory=dict, init=False, repr=False)
    _errors_file: Path | None = field(default=None, init=False, repr=False)
    _latency: Latencies = field(factory=lambda: Latencies(), init=False, repr=False)
    _journal: Journal | None = field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown output format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.format != "jsonl" and self.output is None:
            raise ConfigError(f"--format {self.format} needs an output file")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"limit must be >= 0, got {self.limit}")
        if self.output is not None and self.output.resolve() == self.input.resolve():
            raise ConfigError("the output file is the input file")
        self._ledger = Ledger(self.topology, self.prices)

    # --- the output: lock and origin ---------------------------------------------------------------

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Take the output for this run, before any engine starts; :meth:`run` does it when not done.

        Checks that the input can be read and that the output can be written (its folder exists, it
        is not a folder), holds an exclusive lock on the output for the block, removes an earlier
        run's files with ``restart``, and otherwise checks that the output's records came from the
        same input file and topology (``OUT.run.json``); the run records its own when it starts.

        Raises:
            InputError: The input is missing, a directory or unreadable.
            ConfigError: The output's folder does not exist, or the output is a directory; another
                process holds the output; or the output holds the records of another input or topology.
        """
        for _ in iter_json(self.input, what="input"):
            break
        if self.output is None:
            yield
            return
        journal = run_journal(self.output, self.format)
        compare = ("input_fingerprint", "topology_fingerprint", "shard")
        with journal.claim(self._origin(), compare=compare, refusal=_refusal, restart=self.restart):
            self._journal = journal
            try:
                yield
            finally:
                self._journal = None

    def _origin(self) -> dict[str, Any]:
        topology = describe_topology(self.topology)
        return {
            "input": str(self.input),
            "input_fingerprint": file_fingerprint(self.input),
            "config": self.config_name,
            "topology_fingerprint": fingerprint(topology),
            "topology": topology,
            "shard": None if self.shard is None else self.shard.as_dict(),
            "limit": self.limit,
            "format": self.format,
            "generator": self.generator,
        }

    # --- running --------------------------------------------------------------------------------------

    def _items(self) -> Iterator[Record | BadLine]:
        for position, item in enumerate(read_records(self.input)):
            if self.limit is not None and position >= self.limit:
                return
            if self.shard is None or self.shard.holds(position):
                yield item

    def _check(self) -> list[BadLine]:
        bad: list[BadLine] = []
        seen: set[str] = set()
        for item in self._items():
            if isinstance(item, BadLine):
                bad.append(item)
            elif record_key(item.id) in seen:
                bad.append(BadLine(item.line, f"duplicate id {item.id!r}", json.dumps(item.data)))
            else:
                seen.add(record_key(item.id))
        return bad

    def _total(self) -> int | None:
        total = _count_records(self.input)
        if self.limit is not None:
            total = min(total or self.limit, self.limit)
        if self.shard is not None and total is not None:
            total = self.shard.size(total)
        return total

    async def run(self) -> RunSummary:
        """Run every record and return the summary.

        The summary is also written next to the output (:func:`~aftlib.run.summary_path`), even when
        the run is cancelled; then it says ``"interrupted": true``. The output is claimed
        (:meth:`claim`) for the run unless the caller already holds it.

        Raises:
            InputError: The input cannot be read, or (with ``strict``) has bad lines; nothing ran.
            ConfigError: The output cannot be written, is in use, or holds another run's records.

        A programming error (in a custom agent, say) is not a failed record: it stops the run and
        comes through as itself, with its traceback.
        """
        with log_context(run_id=self.run_id), unwrap_group():
            if self._journal is not None or self.output is None:
                return await self._run(self._journal)
            with self.claim():
                return await self._run(self._journal)

    async def _run(self, journal: Journal | None) -> RunSummary:
        log = get_logger(__name__, input=str(self.input))
        errors = None if self.output is None else errors_path(self.output)
        if self.strict:
            bad = await anyio.to_thread.run_sync(self._check)
            if bad:
                if errors is not None:
                    write_bad_lines(errors, self.input, bad)
                first = bad[0]
                raise InputError(
                    f"{len(bad)} bad input line(s), nothing was run; first: {first.error}"
                    + (f" (all listed in {errors})" if errors else ""),
                    where=f"{self.input}:{first.line}",
                )
        # whole-file passes go to a worker thread: the loop keeps serving whatever else it runs
        total = await anyio.to_thread.run_sync(self._total)
        self.stats = RunStats(total=total, clock=loop_clock())
        if self.on_progress is not None:
            self.on_progress(self.stats)  # the run starts: nothing finished yet
        self._ledger = Ledger(self.topology, self.prices)
        self._latency = Latencies()
        self._counts = {"records": 0, "bad": 0}
        started = time.time()
        done_ids = set() if journal is None else await anyio.to_thread.run_sync(journal.resume)
        bad_lines: list[BadLine] = []
        finished = False
        log.info("run started", output=str(self.output) if self.output else None, resumed=len(done_ids))
        admission = Admission.for_topology(self.topology, self.concurrency)
        log.debug("admission", records_in_flight=admission.limit or "adaptive")
        try:
            with journal.appender() if journal is not None else _stdout_appender() as append:

                async def answer(record: Record, order: int) -> None:
                    try:
                        line, completion_tokens = await self._answer(record, order)
                    finally:
                        admission.finished()
                    append(line)  # no await: a record is written whole or not at all
                    if line["status"] == "done":
                        self.stats.done += 1
                    else:
                        self.stats.failed += 1
                    self.stats.completion_tokens += completion_tokens
                    if self.on_progress is not None:
                        self.on_progress(self.stats)

                orders = itertools.count()  # records' ages, oldest first, in this run
                async with anyio.create_task_group() as tg:
                    seen: set[str] = set()
                    for item in self._items():
                        self._counts["records"] += 1
                        key = None if isinstance(item, BadLine) else record_key(item.id)
                        if isinstance(item, Record) and key in seen:
                            item = BadLine(item.line, f"duplicate id {item.id!r}", json.dumps(item.data))
                        if isinstance(item, BadLine):
                            self._bad_line(item, log)
                            bad_lines.append(item)
                            continue
                        assert key is not None
                        seen.add(key)
                        if key in done_ids:
                            self.stats.resumed += 1
                            continue
                        await admission.wait()
                        admission.started()
                        tg.start_soon(answer, item, next(orders))
            if errors is not None:
                self._errors_file = write_bad_lines(errors, self.input, bad_lines)
            if journal is not None and self.format != "jsonl":
                await anyio.to_thread.run_sync(self._convert, journal)
            finished = True
        finally:
            summary = self.summary(interrupted=not finished, started=started)
            if journal is not None:
                journal.write_summary(summary.to_json(self.input))
            log.info(
                "run finished" if finished else "run interrupted",
                done=summary.done,
                failed=summary.failed,
                completion_tokens=summary.usage.completion_tokens,
            )
        return summary

    def _bad_line(self, item: BadLine, log: Any) -> None:
        self._counts["bad"] += 1
        self.stats.bad += 1
        where = f"{self.input}:{item.line}"
        if self.on_bad_line is not None:
            self.on_bad_line(InputError(item.error, where=where))
        else:
            log.warning("bad input line", where=where, error=item.error)

    def summary(self, *, interrupted: bool = False, started: float | None = None) -> RunSummary:
        """What the run has done so far (also while it runs, or after it was cancelled)."""
        elapsed = self.stats.elapsed
        return RunSummary(
            records=self._counts.get("records", 0),
            done=self.stats.done,
            resumed=self.stats.resumed,
            failed=self.stats.failed,
            bad=self._counts.get("bad", 0),
            usage=self._ledger.total,
            elapsed=elapsed,
            output=self.output,
            errors=self._errors_file,
            run_id=self.run_id,
            cost=self._ledger.total_cost,
            interrupted=interrupted,
            usage_report=self._ledger.usage_report(),
            latency=self._latency.latency(),
            throughput=Throughput(
                round(self.stats.done / elapsed, 4) if elapsed > 0 else None,
                round(self._ledger.total.completion_tokens / elapsed, 2) if elapsed > 0 else None,
            ),
            started=None if started is None else _iso(started),
            finished=None if started is None else _iso(time.time()),
        )

    async def _answer(self, record: Record, order: int) -> tuple[dict[str, Any], int]:
        """Answer one record (its requests at age ``order``); returns its output line and tokens."""
        with log_context(record=record.id):
            answered = await answer_record(self.topology, record, order=order, clock=self.stats.clock)
        for result in answered.results:
            self._ledger.add(result)
        self._ledger.count_failures(answered.quorum_failures)
        costs = [self._ledger.cost(r) for r in answered.results]
        known = [c for c in costs if c is not None]
        cost = sum(known) if costs and len(known) == len(costs) else None
        usage = answered.usage
        if answered.done:
            self._latency.add(answered.elapsed, answered.first_token)
        line = answered.line(usage=usage_dict(usage, cost), with_trace=self.trace)
        return line, usage.completion_tokens

    def _convert(self, journal: Journal) -> None:
        """Write the final output file in the chosen format from the journal, atomically."""
        assert self.output is not None
        answers = {record_key(value["id"]): value for _, value in journal.done()}
        order = [item for item in self._items() if isinstance(item, Record)]
        write_format(self.output, self.format, order, answers, self.generator)


@contextlib.contextmanager
def _stdout_appender() -> Iterator[Callable[[dict[str, Any]], None]]:
    with open(os.dup(1), "w", encoding="utf-8") as handle:

        def append(item: dict[str, Any]) -> None:
            handle.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")
            handle.flush()

        yield append


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _refusal(earlier: Any, origin: Any, changed: Any) -> str:
    sharded = bool(earlier.get("shard") or origin.get("shard"))
    return (
        f"holds the answers of another run: it was made from {_made_from(earlier, sharded)}; "
        f"this run gives {_made_from(origin, sharded)}"
    )


def _made_from(origin: dict[str, Any], sharded: bool = False) -> str:
    config = origin.get("config")
    made = f"input {origin.get('input')} (fingerprint {origin.get('input_fingerprint')}) and "
    made += f"config {config}" if config else "a topology built in Python"
    made += f" (topology fingerprint {origin.get('topology_fingerprint')})"
    if sharded:
        shard = origin.get("shard")
        made += f", shard {shard['index']}/{shard['count']}" if isinstance(shard, dict) else ", no shard"
    return made
