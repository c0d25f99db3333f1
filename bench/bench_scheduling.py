"""Scheduling on one real vLLM engine (the `cpu` extra, the tiny model): FCFS against priority by depth,
a fixed number of records in flight against adaptive admission, and the AFT reference's schedule.

AFT topology n=5, num_aggregation=2, max_tokens=64, over the first 256 prompts of an AlpacaEval prompt
file (no per-request seed, as in `bench_real_engine.py`). Two engines of the same model are started, one
with vLLM's first-come-first-served scheduler and one with its priority scheduler (aftlib's default),
and these schedules run on them in turn:

- `fcfs@128`, `priority@128`: `Runner(concurrency=128)` (the old default number of records in flight);
- `fcfs@auto`, `priority@auto`: `Runner()`, whose admission adapts to the engine's batch size (the
  default of `aftlib run`);
- `batch16`: the AFT reference's `inference.py` schedule: batches of 16 records, each layer waiting for
  the whole batch (a hand-written client of vLLM's AsyncLLM, on the FCFS engine).

Each schedule reports its wall time, generated tokens per second, the time to answer per record (from
the record's start to its answer: p50 and p90; for `batch16`, from its batch's start) and the time to
the first finished record (from the schedule's start). The schedules alternate (the first one rotates
every round) after a short warm-up; medians over rounds are reported. These machines are shared and
noisy: compare the ratios, not the seconds.

    .venv/bin/python bench/bench_scheduling.py --prompts PATH/alpaca_eval_prompts.jsonl [--records 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from bench_real_engine import MAX_TOKENS, NUM_AGGREGATION, Direct, N, run_batch_sync

from aftlib import Runner, RunStats, presets
from aftlib.engines import VLLMEngine
from aftlib.run import percentiles, summary_path
from aftlib.testing import tiny_model_path

Measure = dict[str, Any]


async def run_aftlib(engine: VLLMEngine, source: Path, folder: Path, concurrency: int | None) -> Measure:
    topology = presets.aft(engine, n=N, num_aggregation=NUM_AGGREGATION, max_tokens=MAX_TOKENS)
    out = folder / f"out-{uuid.uuid4().hex}.jsonl"
    start = time.perf_counter()
    first: list[float] = []

    def on_progress(stats: RunStats) -> None:
        if stats.done and not first:
            first.append(time.perf_counter() - start)

    summary = await Runner(topology, source, out, concurrency=concurrency, on_progress=on_progress).run()
    wall = time.perf_counter() - start
    assert summary.done == summary.records, summary
    latency = json.loads(summary_path(out).read_text())["latency"]
    return {
        "wall_s": wall,
        "tokens": summary.usage.completion_tokens,
        "p50_s": latency["p50"],
        "p90_s": latency["p90"],
        "first_record_s": first[0],
    }


async def run_batch16(direct: Direct, conversations: list[list[dict[str, str]]]) -> Measure:
    start = time.perf_counter()
    answers: list[float] = []
    began = [start]

    def on_batch(records: int) -> None:
        now = time.perf_counter()
        answers.extend([now - began[0]] * records)  # every record of a batch answers when the batch does
        began[0] = now

    tokens = await run_batch_sync(direct, conversations, 16, on_batch)
    wall = time.perf_counter() - start
    shares = percentiles(answers)
    return {
        "wall_s": wall,
        "tokens": tokens,
        "p50_s": shares["p50"],
        "p90_s": shares["p90"],
        "first_record_s": answers[0],
    }


def _engine(policy: str) -> VLLMEngine:
    return VLLMEngine(
        str(tiny_model_path()),
        name=policy,
        max_model_len=2048,
        kv_cache_memory_bytes=2 << 30,
        enforce_eager=True,
        seed=0,
        scheduling_policy=policy,
    )


async def main(prompts: Path, records: int, repeats: int, warmup: int) -> None:
    lines = prompts.read_text().splitlines()[:records]
    conversations = [json.loads(line)["query"] for line in lines]
    fcfs, priority = _engine("fcfs"), _engine("priority")
    async with fcfs, priority:
        direct = Direct(fcfs)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            source, small = folder / "in.jsonl", folder / "warmup.jsonl"
            source.write_text("\n".join(lines) + "\n")
            small.write_text("\n".join(lines[:warmup]) + "\n")
            for engine in (fcfs, priority):  # warm-up: compile paths, fill caches
                await run_aftlib(engine, small, folder, None)
            schedules: dict[str, Callable[[], Awaitable[Measure]]] = {
                "fcfs@128": lambda: run_aftlib(fcfs, source, folder, 128),
                "priority@128": lambda: run_aftlib(priority, source, folder, 128),
                "priority@auto": lambda: run_aftlib(priority, source, folder, None),
                "fcfs@auto": lambda: run_aftlib(fcfs, source, folder, None),
                "batch16": lambda: run_batch16(direct, conversations),
            }
            names = list(schedules)
            measured: dict[str, list[Measure]] = {name: [] for name in names}
            for round_ in range(repeats):
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    result = await schedules[name]()
                    measured[name].append(result)
                    shown = {k: round(v, 2) for k, v in result.items()}
                    print(f"round {round_} {name}: {json.dumps(shown)}", flush=True)
    table: dict[str, dict[str, float]] = {}
    for name, results in measured.items():
        row = {key: statistics.median(r[key] for r in results) for key in results[0]}
        row["tokens_per_s"] = statistics.median(r["tokens"] / r["wall_s"] for r in results)
        table[name] = {k: round(v, 2) for k, v in row.items()}
    ratios = {
        "priority_over_fcfs@128": {
            "p50": round(table["priority@128"]["p50_s"] / table["fcfs@128"]["p50_s"], 3),
            "p90": round(table["priority@128"]["p90_s"] / table["fcfs@128"]["p90_s"], 3),
            "throughput": round(table["priority@128"]["tokens_per_s"] / table["fcfs@128"]["tokens_per_s"], 3),
        },
        "auto_over_batch16_wall": {
            "priority@auto": round(table["priority@auto"]["wall_s"] / table["batch16"]["wall_s"], 3),
            "fcfs@auto": round(table["fcfs@auto"]["wall_s"] / table["batch16"]["wall_s"], 3),
        },
    }
    print(json.dumps({"records": len(lines), "repeats": repeats, "median": table, "ratios": ratios}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=32)
    args = parser.parse_args()
    anyio.run(main, args.prompts, args.records, args.repeats, args.warmup, backend="asyncio")
