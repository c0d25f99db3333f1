"""Fault runs: a faulty MoA soak through `Runner`, and OpenAIEngine against a server that fails at random.

- soak: `aftlib.testing.soak` runs N records through a three-proposer MoA whose fake engines fail a
  share of their requests (raise, hang, mid-stream drop, rate limit, server error), each engine wrapped
  in a `RetryingEngine` (three attempts, 50 ms timeout), the proposers' layer needing 4 of 6 candidates.
- chaos: M concurrent `generate` calls through `RetryingEngine(OpenAIEngine(...))` against
  `aftlib.testing.chaos_server`, which answers 429, 500, drops connections before or in the middle of
  the answer for a seeded share of chat requests.

Each run checks that every record (request) ended exactly once and that nothing is left running, and
prints one row of a markdown table. Memory is traced with tracemalloc (the chaos server's threads run in
this process and are traced too).

    .venv/bin/python bench/bench_faults.py [--records 5000] [--requests 500]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import tracemalloc
from pathlib import Path

import anyio

from aftlib import ChatRequest, EngineError, Message, SamplingParams
from aftlib.engines import OpenAIEngine, RetryingEngine
from aftlib.testing import chaos_server, soak

MB = 1024 * 1024
HEADER = (
    "| run | records / requests | faults injected | done / error | lost | duplicated | leaked tasks "
    "| left in flight | peak traced memory (MB) | memory growth (MB) | wall time (s) |"
)


def _faults(faults: dict[str, int], requests: int) -> str:
    kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(faults.items()))
    return f"{kinds} ({sum(faults.values()):,} of {requests:,} requests)"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


async def _soak(records: int, rate: float, seed: int) -> str:
    with tempfile.TemporaryDirectory() as folder:
        report = await soak(Path(folder), records=records, rate=rate, seed=seed)
    return (
        f"| soak, rate {rate:g}, seed {seed} | {report.records:,} records "
        f"| {_faults(report.faults, report.requests)} | {report.done:,} / {report.failed:,} "
        f"| {report.lost} | {report.duplicated} | {report.leaked_tasks} | {report.in_flight} "
        f"| {_mb(report.peak_memory_mb)} | {_mb(report.memory_growth_mb)} | {report.elapsed:.1f} |"
    )


async def _chaos(requests: int, rate: float, seed: int) -> str:
    sampling = SamplingParams(n=2, max_tokens=64)
    done: set[int] = set()
    failed: set[int] = set()
    marks: list[int] = []
    before = len(anyio.get_running_tasks())
    try:
        with chaos_server(rate, seed=seed, retry_after=0.01) as server:
            inner = OpenAIEngine(server.model, server.base_url, timeout=30)
            async with RetryingEngine(inner, attempts=12, backoff=0.01, max_backoff=0.2) as engine:
                tracemalloc.start()  # after the start: the openai import is not the run's memory
                start = time.monotonic()

                async def one(k: int) -> None:
                    request = ChatRequest([Message("user", f"question {k}")], sampling)
                    try:
                        completion = await engine.generate(request)
                    except EngineError:
                        failed.add(k)
                        return
                    assert [s.text for s in completion.samples] == [
                        server.text(f"question {k}", i) for i in range(2)
                    ]
                    done.add(k)
                    if len(done) == max(requests // 10, 1):
                        marks.append(tracemalloc.get_traced_memory()[0])

                with anyio.fail_after(300):
                    async with anyio.create_task_group() as tg:
                        for k in range(requests):
                            tg.start_soon(one, k)
                current, peak = tracemalloc.get_traced_memory()
                elapsed = time.monotonic() - start
            for _ in range(200):  # a handler thread counts its answer just after sending it: wait <= 2 s
                if server.requests == server.completed + server.faults.total():
                    break
                await anyio.sleep(0.01)
            faults = server.faults
            received, completed = server.requests, server.completed
            # requests the server took in and neither answered in full nor failed on purpose
            unfinished = received - completed - faults.total()
    finally:
        tracemalloc.stop()
    leaked = len(anyio.get_running_tasks()) - before
    lost = requests - len(done | failed)
    duplicated = completed - len(done)  # answers the server sent in full beyond one per request
    growth = (current - marks[0]) / MB if marks else None
    return (
        f"| chaos, `OpenAIEngine` + `RetryingEngine`, rate {rate:g}, seed {seed} | {requests:,} requests "
        f"| {_faults(dict(faults), received)} | {len(done):,} / {len(failed):,} "
        f"| {lost} | {duplicated} | {leaked} | {unfinished} | {peak / MB:.2f} | {_mb(growth)} "
        f"| {elapsed:.1f} |"
    )


async def main(records: int, requests: int) -> None:
    logging.getLogger("aftlib").setLevel(logging.ERROR)  # every retry logs a warning
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|", flush=True)
    for rate, seed in ((0.1, 0), (0.1, 1), (0.3, 2)):
        print(await _soak(records, rate, seed), flush=True)
    print(await _chaos(requests, 0.3, 1), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    anyio.run(main, args.records, args.requests)
