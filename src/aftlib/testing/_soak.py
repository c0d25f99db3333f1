"""A soak run: many records through a MoA topology whose engines fail at random, checked end to end."""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import anyio
from attrs import frozen

from .._agents import Aggregator, Proposer
from .._topology import Layer, Topology
from .._types import SamplingParams
from ..engines._fake import FakeEngine, FaultPlan
from ..engines._retrying import RetryingEngine
from ..run import Runner, RunStats

__all__ = ("SoakReport", "soak")


@frozen
class SoakReport:
    """What a soak run did, and whether every record ended exactly once.

    Attributes:
        records: Records in the input.
        done: Records answered.
        failed: Records written as errors.
        lost: Input records with no output line.
        duplicated: Output lines beyond one per record.
        requests: Requests the engines received (retries included).
        faults: Faults injected, by kind.
        failed_agents: Agents that gave no candidates, summed over records, by reason.
        leaked_tasks: Tasks still running after the run, beyond those running before it.
        in_flight: Requests still open in the engines after the run.
        memory_growth_mb: Traced memory at the end minus at the first tenth of the records, each read
            after a garbage collection (None when memory is not traced): what the run keeps per record.
        peak_memory_mb: Peak traced memory during the run (None when memory is not traced).
        elapsed: Wall-clock seconds.
    """

    records: int
    done: int
    failed: int
    lost: int
    duplicated: int
    requests: int
    faults: dict[str, int]
    failed_agents: dict[str, int]
    leaked_tasks: int
    in_flight: int
    memory_growth_mb: float | None
    peak_memory_mb: float | None
    elapsed: float


async def soak(
    folder: Path, *, records: int = 5000, rate: float = 0.1, seed: int = 0, trace_memory: bool = True
) -> SoakReport:
    """Run ``records`` prompts through a three-proposer MoA whose engines fail at random, and check it.

    Each engine injects every fault kind (raise, hang, mid-stream drop, rate limit, server error) into a
    ``rate`` share of its requests. Engines are wrapped in a :class:`~aftlib.engines.RetryingEngine`
    (three attempts, a short timeout that ends hangs); the proposers' layer needs 4 of its 6 candidates.

    Args:
        folder: Where the input, output and summary files go.
        records: How many records.
        rate: The share of requests that fail.
        seed: Seeds the faults.
        trace_memory: Measure memory with :mod:`tracemalloc` (slower).
    """
    proposers = [FakeEngine(name=f"model-{i}", faults=FaultPlan(rate, seed=seed + i)) for i in range(3)]
    judge = FakeEngine(name="judge", faults=FaultPlan(rate, seed=seed + 3))
    engines = [*proposers, judge]

    def wrap(engine: FakeEngine) -> RetryingEngine:
        # The timeout ends hangs; a quarter second leaves room for a loaded machine.
        return RetryingEngine(engine, attempts=3, backoff=0.0, timeout=0.25)

    layer = Layer(
        [Proposer(wrap(e), name=e.name, sampling=SamplingParams(n=2)) for e in proposers], min_candidates=4
    )
    topology = Topology([layer], Aggregator(wrap(judge), name="judge"))
    source, output = folder / "soak.jsonl", folder / "soak.out.jsonl"
    with source.open("w", encoding="utf-8") as handle:
        for i in range(records):
            handle.write(json.dumps({"id": i, "prompt": f"question {i}: explain item {i} briefly"}) + "\n")
    requests = 0
    marks: list[int] = []

    def on_progress(progress: RunStats) -> None:
        nonlocal requests
        for engine in engines:  # the fake keeps every request; a real engine keeps none
            requests += len(engine.requests)
            engine.requests.clear()
        if trace_memory and progress.finished == max(records // 10, 1):
            gc.collect()  # count what the run keeps, not cyclic garbage (failed requests' tracebacks)
            marks.append(tracemalloc.get_traced_memory()[0])

    before = len(anyio.get_running_tasks())
    if trace_memory:
        tracemalloc.start()
    start = time.monotonic()
    try:
        async with topology:
            await Runner(topology, source, output, concurrency=64, on_progress=on_progress).run()
        gc.collect()
        current, peak = tracemalloc.get_traced_memory() if trace_memory else (0, 0)
    finally:
        if trace_memory:
            tracemalloc.stop()
    elapsed = time.monotonic() - start
    leaked = len(anyio.get_running_tasks()) - before
    lines = [json.loads(text) for text in output.read_text(encoding="utf-8").splitlines()]
    ids = Counter(line["id"] for line in lines)
    failed_agents: Counter[str] = Counter()
    for line in lines:
        failed_agents.update(f["reason"] for f in line.get("failures", []))
    faults: Counter[str] = Counter()
    for engine in engines:
        faults.update(engine.injected)
        requests += len(engine.requests)
    mb = 1024 * 1024
    return SoakReport(
        records=records,
        done=sum(line["status"] == "done" for line in lines),
        failed=sum(line["status"] == "error" for line in lines),
        lost=records - len(ids),
        duplicated=len(lines) - len(ids),
        requests=requests,
        faults=dict(faults),
        failed_agents=dict(failed_agents),
        leaked_tasks=leaked,
        in_flight=sum(e.in_flight for e in engines),
        memory_growth_mb=(current - marks[0]) / mb if trace_memory and marks else None,
        peak_memory_mb=peak / mb if trace_memory else None,
        elapsed=elapsed,
    )
