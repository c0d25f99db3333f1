"""Library overhead on a zero-latency FakeEngine: CPU per request and peak memory of `Runner`.

10,000 records x (5 + 5 + 1) generations in 3 engine requests each, streamed from a JSONL file to a JSONL
file, as `aftlib run` does. Targets: at most 0.5 ms of CPU per generation request, peak RSS under 1 GB.

    .venv/bin/python bench/bench_overhead.py [--records 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import anyio

from aftlib import Runner, presets
from aftlib.testing import FakeEngine


async def main(records: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.jsonl"
        with source.open("w") as handle:
            for i in range(records):
                handle.write(
                    json.dumps({"query": [{"role": "user", "content": f"question number {i}"}]}) + "\n"
                )
        engine = FakeEngine(handler=lambda request, index: "a short answer of eight words here ok")
        topology = presets.aft(engine, n=5, num_aggregation=2, max_tokens=64)
        runner = Runner(topology, source, Path(folder) / "out.jsonl", concurrency=concurrency)
        cpu, wall = time.process_time(), time.perf_counter()
        summary = await runner.run()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert summary.done == records, summary
    requests = summary.usage.requests
    generations = records * topology.generations_per_query
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "records": records,
                "requests": requests,
                "generations": generations,
                "cpu_s": round(cpu, 2),
                "wall_s": round(wall, 2),
                "cpu_ms_per_request": round(1000 * cpu / requests, 3),
                "cpu_ms_per_generation": round(1000 * cpu / generations, 3),
                "peak_rss_mb": round(peak_mb, 1),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    anyio.run(main, args.records, args.concurrency)
