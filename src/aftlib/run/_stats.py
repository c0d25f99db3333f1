"""What a run reports: live counters for a progress display, and the summary of a finished run."""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from attrs import define, field, frozen

from .._accounting import UsageReport
from .._types import Usage

__all__ = (
    "Latencies",
    "Latency",
    "Percentiles",
    "RunStats",
    "RunSummary",
    "Throughput",
    "loop_clock",
    "percentiles",
)


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
        usage_report: Usage per layer, agent and engine, and the agents that failed.
        latency: Time to answer and to the first answer token of the records answered.
        throughput: Records and generated tokens per second.
        started: When the run started (UTC, ISO 8601), when known.
        finished: When it ended (UTC, ISO 8601), when known.
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
    usage_report: UsageReport = field(factory=UsageReport, eq=False, repr=False)
    latency: Latency = field(factory=lambda: Latency(), eq=False, repr=False)
    throughput: Throughput = field(factory=lambda: Throughput(), eq=False, repr=False)
    started: str | None = field(default=None, eq=False, repr=False)
    finished: str | None = field(default=None, eq=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when every record has an answer."""
        return not (self.failed or self.bad)

    def to_json(self, input: Path | None = None) -> dict[str, Any]:
        """The summary file (``OUT.summary.json``) of a run of ``input``."""
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "input": None if input is None else str(input),
            "output": None if self.output is None else str(self.output),
            "interrupted": self.interrupted,
            "records": {
                "read": self.records,
                "done": self.done,
                "resumed": self.resumed,
                "failed": self.failed,
                "bad": self.bad,
            },
            "elapsed": round(self.elapsed, 3),
            **self.usage_report.to_json(),
            "tokens": {"saved": self.usage.saved_tokens},
            "latency": self.latency.to_json(),
            "throughput": {
                "records_per_s": self.throughput.records_per_s,
                "completion_tokens_per_s": self.throughput.completion_tokens_per_s,
            },
        }
        if self.started is not None:
            data["started"] = self.started
            data["finished"] = self.finished
        return data


@frozen
class Percentiles:
    """p50, p90 and p99 (nearest rank) and the mean of some times, in seconds (None when there are none)."""

    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None

    def to_json(self) -> dict[str, float | None]:
        """``{"p50", "p90", "p99", "mean"}``."""
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean}


@frozen
class Latency:
    """Time to answer a record, and to the first token of its answer."""

    answer: Percentiles = Percentiles()
    first_token: Percentiles = Percentiles()

    def to_json(self) -> dict[str, Any]:
        """The answer's percentiles, with ``first_token``'s nested, as the summary file has them."""
        return {**self.answer.to_json(), "first_token": self.first_token.to_json()}


@frozen
class Throughput:
    """Records answered and tokens generated per second of the run (None before any time passed)."""

    records_per_s: float | None = None
    completion_tokens_per_s: float | None = None


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

    def latency(self) -> Latency:
        """The percentiles of both."""
        return Latency(Percentiles(**percentiles(self.answer)), Percentiles(**percentiles(self.first_token)))


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


def loop_clock() -> Callable[[], float]:
    """The event loop's clock (virtual under a mock clock).

    Read after the loop has ended, the same clock carried on by ``time.monotonic``.
    """
    offset = anyio.current_time() - time.monotonic()

    def now() -> float:
        try:
            return anyio.current_time()
        except RuntimeError:  # no event loop any more (a summary after an interrupted run)
            return time.monotonic() + offset

    return now
