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
import math
import os
import time
import uuid
from array import array
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
from attrs import define, field, frozen

from ._accounting import Ledger, PriceTable, usage_dict
from ._admission import Admission
from ._errors import AftError, ConfigError, InputError, QuorumError
from ._io import (
    atomic_write,
    exclusive_lock,
    file_fingerprint,
    fingerprint,
    iter_json,
    side_path,
    write_json_atomic,
    write_text_atomic,
)
from ._logging import context as log_context
from ._logging import get_logger
from ._records import BadLine, read_records
from ._records import InputRecord as Record
from ._results import AgentFailure, Result
from ._shards import Shard, shard_spec
from ._topology import Topology
from ._trace import failure_dict, trace
from ._types import Message, Usage
from ._util import unwrap_group

__all__ = (
    "FORMATS",
    "RunStats",
    "RunSummary",
    "Runner",
    "describe_topology",
    "journal_path",
    "run_path",
    "summary_path",
    "write_format",
)

Format = Literal["jsonl", "aft", "alpaca_eval", "mt_bench"]
FORMATS: tuple[str, ...] = ("jsonl", "aft", "alpaca_eval", "mt_bench")
_ADDED = ("id", "status", "response", "responses", "error", "failures", "usage", "timings", "trace")


@frozen
class RunSummary:
    """What a run did.

    Attributes:
        records: Records read from the input (bad lines included).
        done: Records answered in this run.
        resumed: Records skipped because the output already had them.
        failed: Records that failed at run time (written as error records).
        bad: Input lines that were not usable records (written to the errors file).
        usage: Tokens used in this run by every turn answered (the answered turns of a multi-turn record
            that failed later included; a failed or cancelled request's tokens are not known).
        elapsed: Wall-clock seconds.
        output: The output file, if any.
        errors: The errors file, if any bad line was found.
        run_id: The run's id, bound to every log line of the run.
        cost: The cost of :attr:`usage` from the price table, or None without one (or when a model
            has no price).
        interrupted: The run was cancelled before it read the whole input.
        report: Usage per layer, agent and engine, and the agents that failed, as written to the
            summary file.
    """

    records: int
    done: int
    resumed: int
    failed: int
    bad: int
    usage: Usage
    elapsed: float
    output: Path | None
    errors: Path | None
    run_id: str = ""
    cost: float | None = None
    interrupted: bool = False
    report: dict[str, Any] = field(factory=dict, eq=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when every record has an answer."""
        return not (self.failed or self.bad)


@define
class RunStats:
    """Live counters of a run, for a progress display.

    Attributes:
        total: The records the run will read (None when not known ahead, for a JSON array).
        done: Records answered in this run.
        failed: Records that failed in this run.
        resumed: Records skipped because the output already had them.
        bad: Input lines that were not usable records.
        completion_tokens: Tokens generated in this run.
        started: When the run started, on :attr:`clock`.
        clock: The clock of the run's times (the runner passes ``anyio.current_time``, so a run under a
            virtual clock is timed in virtual seconds).
    """

    total: int | None = None
    done: int = 0
    failed: int = 0
    resumed: int = 0
    completion_tokens: int = 0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, kw_only=True)
    started: float = field(kw_only=True)
    bad: int = 0

    @started.default
    def _now(self) -> float:
        return self.clock()

    @property
    def finished(self) -> int:
        """Records (and bad lines) finished in any way."""
        return self.done + self.failed + self.resumed + self.bad

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return max(self.clock() - self.started, 1e-9)

    @property
    def rate(self) -> float:
        """Generated tokens per second."""
        return self.completion_tokens / self.elapsed

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace of the records answered so far, or None when not known."""
        worked = self.done + self.failed
        if self.total is None or not worked:
            return None
        return max(self.total - self.finished, 0) * self.elapsed / worked

    def line(self) -> str:
        """One line: records done of total, generated tokens per second, time left."""
        total = "?" if self.total is None else str(self.total)
        text = f"records {self.finished}/{total}"
        if self.failed:
            text += f" ({self.failed} failed)"
        if self.bad:
            text += f" ({self.bad} bad)"
        text += f" | {self.rate:,.0f} tok/s | {self.elapsed:,.0f}s"
        eta = self.eta
        if eta is not None:
            text += f" | ETA {eta:,.0f}s"
        return text


def journal_path(output: Path, fmt: str) -> Path:
    """Where a run appends its finished records: the output itself for JSONL, else ``OUT.journal.jsonl``.

    The journal is what a rerun resumes from; the other formats are written from it at the end.
    """
    return output if fmt == "jsonl" else side_path(output, ".journal.jsonl")


def _errors_path(output: Path) -> Path:
    return side_path(output, ".errors.jsonl")


def summary_path(output: Path) -> Path:
    """Where a run writes its summary (counts, usage per layer, agent and engine, cost)."""
    return side_path(output, ".summary.json")


def run_path(output: Path) -> Path:
    """Where a run records what made the output (input and topology fingerprints): ``OUT.run.json``."""
    return side_path(output, ".run.json")


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


@define
class Latencies:
    """The time to answer and to the first answer token of every record answered, in seconds.

    Kept as arrays of doubles (8 bytes a record), so a long run's memory barely grows with them.
    """

    answer: array[float] = field(factory=lambda: array("d"))
    first_token: array[float] = field(factory=lambda: array("d"))

    def add(self, answer: float, first_token: float | None) -> None:
        """Count one answered record."""
        self.answer.append(answer)
        if first_token is not None:
            self.first_token.append(first_token)

    def report(self) -> dict[str, Any]:
        """``{"p50", "p90", "p99", "mean", "first_token": {...the same}}``, seconds (None when empty)."""
        return {**percentiles(self.answer), "first_token": percentiles(self.first_token)}


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99 (nearest rank) and the mean of ``values``, rounded to the millisecond."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(math.ceil(p * len(ordered)) - 1, 0)], 3)

    return {
        "p50": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


def _key(rid: Any) -> str:
    return json.dumps(rid)


def _resume(path: Path) -> set[str]:
    """Read the ids already done from an earlier run's output, repairing it in place if needed.

    A torn last line (a run killed while writing) and error records (retried now) are dropped; the file is
    rewritten atomically only when something is dropped.
    """
    if not path.exists():
        return set()
    done: set[str] = set()
    keep: list[str] = []
    dropped = 0
    with path.open(encoding="utf-8") as handle:
        for text in handle:
            try:
                value = json.loads(text)
                ok = text.endswith("\n") and value.get("status") == "done" and _key(value["id"]) not in done
            except (json.JSONDecodeError, AttributeError, KeyError):
                ok = False
            if ok:
                done.add(_key(value["id"]))
                keep.append(text)
            else:
                dropped += 1
    if dropped:
        write_text_atomic(path, "".join(keep))
        get_logger(__name__, output=str(path)).info("repaired output", kept=len(keep), dropped=dropped)
    return done


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


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


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
    _claimed: bool = field(default=False, init=False, repr=False)
    _origin_record: dict[str, Any] | None = field(default=None, init=False, repr=False)

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

    # --- the output: paths, lock and origin ---------------------------------------------------------

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
        output = self.output
        if output.is_dir():
            raise ConfigError("the output is a directory, not a file", source=str(output))
        if not output.parent.is_dir():
            raise ConfigError(f"the output's folder {output.parent} does not exist", source=str(output))
        with exclusive_lock(output, what="output"):
            if self.restart:
                self._remove_outputs()
            self._check_origin()
            self._claimed = True
            try:
                yield
            finally:
                self._claimed = False

    def _outputs(self) -> tuple[Path, ...]:
        assert self.output is not None
        out = self.output
        journal = journal_path(out, self.format)
        return (out, journal, summary_path(out), _errors_path(out), run_path(out))

    def _remove_outputs(self) -> None:
        removed = []
        for path in self._outputs():
            if path.is_file():
                path.unlink()
                removed.append(path.name)
        if removed:
            get_logger(__name__, output=str(self.output)).info("started over", removed=removed)

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

    def _check_origin(self) -> None:
        assert self.output is not None
        origin = self._origin()
        path = run_path(self.output)
        journal = journal_path(self.output, self.format)
        earlier: Any = None
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):
                earlier = json.loads(path.read_text(encoding="utf-8"))
        has_records = journal.is_file() and journal.stat().st_size > 0
        if has_records and isinstance(earlier, dict):
            keys = ("input_fingerprint", "topology_fingerprint", "shard")
            if any(earlier.get(key) != origin[key] for key in keys):
                sharded = bool(earlier.get("shard") or origin["shard"])
                raise ConfigError(
                    f"holds the answers of another run: it was made from {_made_from(earlier, sharded)}; "
                    f"this run gives {_made_from(origin, sharded)}. Rerun with --restart to start over (the "
                    "output and its side files are removed), or write to another output",
                    source=str(self.output),
                )
        created = earlier.get("created") if has_records and isinstance(earlier, dict) else None
        self._origin_record = {**origin, "created": created or _iso(time.time())}

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
            elif _key(item.id) in seen:
                bad.append(BadLine(item.line, f"duplicate id {item.id!r}", json.dumps(item.data)))
            else:
                seen.add(_key(item.id))
        return bad

    async def run(self) -> RunSummary:
        """Run every record and return the summary.

        The summary is also written next to the output (:func:`summary_path`), even when the run is
        cancelled; then it says ``"interrupted": true``. The output is claimed (:meth:`claim`) for the
        run unless the caller already holds it.

        Raises:
            InputError: The input cannot be read, or (with ``strict``) has bad lines; nothing ran.
            ConfigError: The output cannot be written, is in use, or holds another run's records.

        A programming error (in a custom agent, say) is not a failed record: it stops the run and
        comes through as itself, with its traceback.
        """
        with log_context(run_id=self.run_id), unwrap_group():
            if self._claimed:
                return await self._run()
            with self.claim():
                return await self._run()

    async def _run(self) -> RunSummary:
        log = get_logger(__name__, input=str(self.input))
        errors_path = None if self.output is None else _errors_path(self.output)
        if self.strict:
            bad = self._check()
            if bad:
                self._write_bad(errors_path, bad)
                first = bad[0]
                raise InputError(
                    f"{len(bad)} bad input line(s), nothing was run; first: {first.error}"
                    + (f" (all listed in {errors_path})" if errors_path else ""),
                    where=f"{self.input}:{first.line}",
                )
        total = _count_records(self.input)
        if self.limit is not None:
            total = min(total or self.limit, self.limit)
        if self.shard is not None and total is not None:
            total = self.shard.size(total)
        self.stats = RunStats(total=total, clock=_loop_clock())
        if self.on_progress is not None:
            self.on_progress(self.stats)  # the run starts: nothing finished yet
        self._ledger = Ledger(self.topology, self.prices)
        self._latency = Latencies()
        self._counts = {"records": 0, "bad": 0}
        started = time.time()
        journal = None if self.output is None else journal_path(self.output, self.format)
        done_ids = set() if journal is None else _resume(journal)
        if self.output is not None and self._origin_record is not None:  # checked by claim()
            write_json_atomic(run_path(self.output), self._origin_record)
        bad_lines: list[BadLine] = []
        finished = False
        log.info("run started", output=str(self.output) if self.output else None, resumed=len(done_ids))
        admission = Admission.for_topology(self.topology, self.concurrency)
        log.debug("admission", records_in_flight=admission.limit or "adaptive")
        try:
            with (
                open(journal, "a", encoding="utf-8")  # noqa: ASYNC230 - appends of one line
                if journal is not None
                else open(os.dup(1), "w", encoding="utf-8")  # noqa: ASYNC230
            ) as out:

                async def answer(record: Record, order: int) -> None:
                    try:
                        line, completion_tokens = await self._answer(record, order)
                    finally:
                        admission.finished()
                    # no await from here on: a record is written whole or not at all
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
                    out.flush()
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
                        if isinstance(item, Record) and _key(item.id) in seen:
                            item = BadLine(item.line, f"duplicate id {item.id!r}", json.dumps(item.data))
                        if isinstance(item, BadLine):
                            self._bad_line(item, log)
                            bad_lines.append(item)
                            continue
                        seen.add(_key(item.id))
                        if _key(item.id) in done_ids:
                            self.stats.resumed += 1
                            continue
                        await admission.wait()
                        admission.started()
                        tg.start_soon(answer, item, next(orders))
            self._write_bad(errors_path, bad_lines)
            self._errors_file = errors_path if bad_lines else None
            if self.output is not None and self.format != "jsonl":
                self._convert()
            finished = True
        finally:
            summary = self.summary(interrupted=not finished, started=started)
            self._write_summary(summary)
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
        report = self._ledger.report()
        report["run_id"] = self.run_id
        report["interrupted"] = interrupted
        elapsed = self.stats.elapsed
        report["latency"] = self._latency.report()
        report["throughput"] = {
            "records_per_s": round(self.stats.done / elapsed, 4) if elapsed > 0 else None,
            "completion_tokens_per_s": round(self._ledger.total.completion_tokens / elapsed, 2)
            if elapsed > 0
            else None,
        }
        if started is not None:
            report["started"] = _iso(started)
            report["finished"] = _iso(time.time())
        return RunSummary(
            records=self._counts.get("records", 0),
            done=self.stats.done,
            resumed=self.stats.resumed,
            failed=self.stats.failed,
            bad=self._counts.get("bad", 0),
            usage=self._ledger.total,
            elapsed=self.stats.elapsed,
            output=self.output,
            errors=self._errors_file,
            run_id=self.run_id,
            cost=self._ledger.total_cost,
            interrupted=interrupted,
            report=report,
        )

    def _write_summary(self, summary: RunSummary) -> None:
        if self.output is None:
            return
        data = {
            "run_id": summary.run_id,
            "input": str(self.input),
            "output": str(self.output),
            "interrupted": summary.interrupted,
            "records": {
                "read": summary.records,
                "done": summary.done,
                "resumed": summary.resumed,
                "failed": summary.failed,
                "bad": summary.bad,
            },
            "elapsed": round(summary.elapsed, 3),
            **{k: v for k, v in summary.report.items() if k not in ("run_id", "interrupted")},
        }
        write_json_atomic(summary_path(self.output), data)

    def _write_bad(self, path: Path | None, bad: list[BadLine]) -> None:
        if path is None:
            return
        if not bad:
            path.unlink(missing_ok=True)
            return
        with atomic_write(path) as handle:
            for item in bad:
                entry = {"file": str(self.input), "line": item.line, "error": item.error, "text": item.text}
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")

    async def _answer(self, record: Record, order: int) -> tuple[dict[str, Any], int]:
        """Answer one record (its requests at age ``order``); returns its output line and tokens."""
        with log_context(record=record.id):
            log = get_logger(__name__)
            clock = self.stats.clock
            start = clock()
            first_token: float | None = None

            def on_answer(event: object) -> None:
                nonlocal first_token
                if first_token is None:
                    first_token = clock() - start

            conversation = list(record.conversation)
            results: list[Result] = []
            line: dict[str, Any] = {**record.data, "id": record.id}
            failures: list[AgentFailure] = []
            try:
                for followup in (None, *record.followups):
                    if followup is not None:
                        conversation += [Message("assistant", results[-1].text), Message("user", followup)]
                    results.append(await self.topology.run(conversation, on_answer=on_answer, order=order))
            except AftError as exc:  # a failed record is written, never dropped; a bug propagates
                log.warning("record failed", error=f"{type(exc).__name__}: {exc}")
                line.update(status="error", error=f"{type(exc).__name__}: {exc}")
                if isinstance(exc, QuorumError):
                    failures += exc.failures
                    self._ledger.count_failures(exc.failures)
            else:
                line.update(status="done", response=results[-1].text)
                if record.followups:
                    line["responses"] = [r.text for r in results]
            for result in results:
                self._ledger.add(result)
            failures = [f for r in results for f in r.failures] + failures
            if failures:
                line["failures"] = [failure_dict(f) for f in failures]
            costs = [self._ledger.cost(r) for r in results]
            known = [c for c in costs if c is not None]
            cost = sum(known) if costs and len(known) == len(costs) else None
            usage = Usage.sum(r.usage for r in results)
            line["usage"] = usage_dict(usage, cost)
            elapsed = clock() - start
            line["timings"] = {"elapsed": round(elapsed, 4)}
            if first_token is not None:
                line["timings"]["first_token"] = round(first_token, 4)
            if line["status"] == "done":
                self._latency.add(elapsed, first_token)
            if self.trace:
                line["trace"] = [trace(r) for r in results]
            return line, usage.completion_tokens

    def _convert(self) -> None:
        """Write the final output file in the chosen format from the journal, atomically."""
        assert self.output is not None
        answers: dict[str, dict[str, Any]] = {}
        with journal_path(self.output, self.format).open(encoding="utf-8") as handle:
            for text in handle:
                value = json.loads(text)
                if value.get("status") == "done":
                    answers[_key(value["id"])] = value
        order = [item for item in self._items() if isinstance(item, Record)]
        write_format(self.output, self.format, order, answers, self.generator)


def write_format(
    path: Path, fmt: str, order: Sequence[Record], answers: dict[str, dict[str, Any]], generator: str
) -> None:
    """Write answered records as ``fmt`` (``aft``, ``alpaca_eval`` or ``mt_bench``) to ``path``, atomically.

    Args:
        path: The output file.
        fmt: The format (see :class:`Runner`'s ``format``).
        order: The input records, in input order; those without an answer are left out.
        answers: Each answered record's output line, by its id's key (its id as JSON).
        generator: The model name written into ``alpaca_eval`` and ``mt_bench`` rows.
    """
    with atomic_write(path) as handle:
        if fmt == "aft":
            items = []
            for record in order:
                answer = answers.get(_key(record.id))
                if answer is not None:
                    items.append({**record.data, "response": answer["response"]})
            json.dump(items, handle, ensure_ascii=False, indent=4)
        elif fmt == "alpaca_eval":
            rows = []
            for record in order:
                answer = answers.get(_key(record.id))
                if answer is not None:
                    instruction = record.data.get("instruction", record.conversation[-1].content)
                    output = answer["response"]
                    rows.append({"instruction": instruction, "output": output, "generator": generator})
            json.dump(rows, handle, ensure_ascii=False, indent=2)
        else:
            for record in order:
                answer = answers.get(_key(record.id))
                if answer is None:
                    continue
                turns = answer.get("responses", [answer["response"]])
                row = {
                    "question_id": record.data.get("question_id", record.id),
                    "answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{generator}/{record.id}").hex,
                    "model_id": generator,
                    "choices": [{"index": 0, "turns": turns}],
                    "tstamp": time.time(),
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _loop_clock() -> Callable[[], float]:
    """The event loop's clock (virtual under a mock clock).

    Read after the loop has ended, the same clock carried on by ``time.monotonic``.
    """
    offset = anyio.current_time() - time.monotonic()

    def now() -> float:
        try:
            return anyio.current_time()
        except Exception:  # no event loop any more (a summary after an interrupted run)
            return time.monotonic() + offset

    return now


def _made_from(origin: dict[str, Any], sharded: bool = False) -> str:
    config = origin.get("config")
    made = f"input {origin.get('input')} (fingerprint {origin.get('input_fingerprint')}) and "
    made += f"config {config}" if config else "a topology built in Python"
    made += f" (topology fingerprint {origin.get('topology_fingerprint')})"
    if sharded:
        shard = origin.get("shard")
        made += f", shard {shard['index']}/{shard['count']}" if isinstance(shard, dict) else ", no shard"
    return made
