"""Priority by depth against first come, first served, and least-loaded replicas against round-robin.

All on :class:`aftlib.testing.SimulatedEngine` (continuous batching in virtual time: a step costs
``step_cost + seq_cost x running`` seconds, each sequence entering the batch prefills its prompt,
``max_num_seqs`` sequences at most, seeded log-normal sample lengths that depend on the request only, so
every scheduler does the same work), with the AFT topology (n=5, num_aggregation=2: drafts, one
aggregation, the final answer) over the same 1,000 records. Time is trio's MockClock, so the figures do
not depend on this machine.

1. Priority, through :class:`aftlib.Runner`: the same engine with ``policy="fcfs"``, with
   ``policy="priority"`` (waiting queue by ``(priority, arrival)``, preemption of lower-priority running
   sequences when the batch is full) and with the priority queue without preemption, at the same records
   in flight: the runner's default (adaptive to the engine's batch), fixed concurrencies, and every
   record at once.
2. Priority with open arrivals: records arrive one by one (Poisson) at shares of the rate the engine
   sustains, each run at once by ``topology.run``, as at a chat front end.
3. Replicas, through the runner: four engines, one half as fast (every cost doubled), behind
   ``aftlib.engines.Replicas`` (each request to the replica with the fewest requests in flight) and
   behind a round-robin engine written here, as a baseline.

Time to answer is the runner's own (``OUT.summary.json`` ``latency``: from a record's start to its
answer), and ``from_start`` counts from the start of the run; with open arrivals it counts from a
record's arrival. Throughput is generated tokens (and records) per virtual second of the whole run.
Prints one JSON object.

    .venv/bin/python bench/bench_priority.py [--records 1000] [--concurrency 128 512] [--loads 0.9 1 1.25]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import trio.testing
from attrs import define, field

from aftlib import ChatRequest, Completion, Runner, RunStats, presets
from aftlib.engines import Engine, Replicas
from aftlib.testing import SimulatedEngine

MAX_TOKENS = 1024


def queries(records: int) -> list[str]:
    """``records`` distinct queries of 5 to 60 words."""
    rng = random.Random(1)
    return [f"record {k}: " + "question " * rng.randint(5, 60) for k in range(records)]


def write_records(path: Path, records: int) -> Path:
    """The queries as a JSONL input file."""
    lines = (json.dumps({"id": f"r{k}", "query": q}) + "\n" for k, q in enumerate(queries(records)))
    path.write_text("".join(lines))
    return path


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Nearest-rank p50/p90/p99, as the runner's summary."""
    ordered = sorted(values)

    def at(p: float) -> float:
        return round(ordered[max(math.ceil(p * len(ordered)) - 1, 0)], 3)

    return {"p50_s": at(0.5), "p90_s": at(0.9), "p99_s": at(0.99)}


async def open_arrivals(engine: SimulatedEngine, texts: Sequence[str], rate: float) -> dict[str, Any]:
    """Records arrive one by one (Poisson, ``rate`` a second), as at a chat front end; each runs at once.

    Time to answer counts from a record's arrival to its answer.
    """
    topology = presets.aft(engine, max_tokens=MAX_TOKENS)
    rng = random.Random(2)
    times: list[float] = []
    start = anyio.current_time()

    async def one(order: int, text: str) -> None:
        arrival = anyio.current_time()
        await topology.run(text, order=order)
        times.append(anyio.current_time() - arrival)

    async with anyio.create_task_group() as tg:
        for order, text in enumerate(texts):
            tg.start_soon(one, order, text)
            await anyio.sleep(rng.expovariate(rate))
    elapsed = anyio.current_time() - start
    return {
        "done": len(times),
        "virtual_s": round(elapsed, 1),
        "generated_tokens_per_s": round(engine.stats.generated_tokens / elapsed, 1),
        "records_per_s": round(len(times) / elapsed, 3),
        **percentiles(times),
        "preemptions": engine.stats.preemptions,
        "recomputed_tokens": engine.stats.recomputed_tokens,
        "peak_waiting": engine.stats.peak_waiting,
        "busy_share": round(engine.stats.busy / elapsed, 3),
    }


def _engines(value: Iterable[Engine]) -> tuple[Engine, ...]:
    return tuple(value)


@define(eq=False)
class RoundRobin(Engine):
    """The baseline router: each request to the next replica in turn, whatever their loads."""

    replicas: tuple[Engine, ...] = field(converter=_engines)
    _turn: itertools.count[int] = field(factory=itertools.count, init=False)

    async def generate(self, request: ChatRequest) -> Completion:
        return await self.replicas[next(self._turn) % len(self.replicas)].generate(request)

    @property
    def supports_priority(self) -> bool:
        return all(r.supports_priority for r in self.replicas)

    @property
    def capacity(self) -> int | None:  # as Replicas: the runner admits records the same way for both
        sizes = [r.capacity for r in self.replicas]
        return None if None in sizes else sum(s for s in sizes if s is not None)

    @property
    def load(self) -> int:
        return sum(r.load for r in self.replicas)


async def run_records(
    engine: Engine, records: Path, concurrency: int | None, stats: Callable[[], Sequence[SimulatedEngine]]
) -> dict[str, Any]:
    """Run the AFT topology over ``records`` on ``engine``; the run's figures in virtual seconds."""
    finished: list[float] = []  # each record's answer, from the run's start
    start = anyio.current_time()

    def progress(run: RunStats) -> None:
        while len(finished) < run.done:
            finished.append(anyio.current_time() - start)

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "out.jsonl"
        runner = Runner(
            presets.aft(engine, max_tokens=MAX_TOKENS),
            records,
            output,
            concurrency=concurrency,
            on_progress=progress,
        )
        summary = await runner.run()
        elapsed = anyio.current_time() - start
    engines = stats()
    generated = sum(e.stats.generated_tokens for e in engines)
    latency = summary.latency.to_json()
    return {
        "done": summary.done,
        "virtual_s": round(elapsed, 1),
        "generated_tokens_per_s": round(generated / elapsed, 1),
        "records_per_s": round(summary.done / elapsed, 3),
        "p50_s": latency["p50"],
        "p90_s": latency["p90"],
        "p99_s": latency["p99"],
        "first_record_s": round(finished[0], 2) if finished else None,
        "from_start": percentiles(finished),
        "preemptions": sum(e.stats.preemptions for e in engines),
        "recomputed_tokens": sum(e.stats.recomputed_tokens for e in engines),
        "peak_waiting": max(e.stats.peak_waiting for e in engines),
        "busy_share": round(sum(e.stats.busy for e in engines) / (elapsed * len(engines)), 3),
    }


def virtual(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` on trio in virtual time."""
    options = {"clock": trio.testing.MockClock(autojump_threshold=0)}
    return anyio.run(function, *args, backend="trio", backend_options=options)


def ratios(fcfs: dict[str, Any], prio: dict[str, Any]) -> dict[str, Any]:
    """Priority over FCFS."""

    def ratio(key: str) -> float | None:
        return round(prio[key] / fcfs[key], 3) if fcfs.get(key) and prio.get(key) is not None else None

    p50, throughput = ratio("p50_s"), ratio("generated_tokens_per_s")
    return {
        "p50": p50,
        "p90": ratio("p90_s"),
        "p99": ratio("p99_s"),
        "first_record": ratio("first_record_s"),
        "p50_from_start": (
            round(prio["from_start"]["p50_s"] / fcfs["from_start"]["p50_s"], 3)
            if "from_start" in fcfs
            else None
        ),
        "throughput": throughput,
        "target_met": p50 is not None and throughput is not None and p50 <= 0.5 and throughput >= 0.97,
    }


def priority_bench(records: Path, concurrencies: Sequence[int | None]) -> list[dict[str, Any]]:
    rows = []
    for concurrency in concurrencies:
        row: dict[str, Any] = {
            "concurrency": "runner default (adaptive)" if concurrency is None else concurrency
        }
        for policy, preempt in (("fcfs", None), ("priority", None), ("priority_no_preempt", False)):
            engine = SimulatedEngine(policy=policy.removesuffix("_no_preempt"), preempt=preempt)  # type: ignore[arg-type]
            row[policy] = virtual(run_records, engine, records, concurrency, lambda e=engine: [e])
        row["priority_over_fcfs"] = ratios(row["fcfs"], row["priority"])
        row["no_preempt_over_fcfs"] = ratios(row["fcfs"], row["priority_no_preempt"])
        rows.append(row)
    return rows


def arrivals_bench(records: int, saturated: float, loads: Sequence[float]) -> list[dict[str, Any]]:
    rows = []
    texts = queries(records)
    for load in loads:
        rate = load * saturated
        row: dict[str, Any] = {"load": load, "arrivals_per_s": round(rate, 3)}
        for policy in ("fcfs", "priority"):
            row[policy] = virtual(open_arrivals, SimulatedEngine(policy=policy), texts, rate)
        row["priority_over_fcfs"] = ratios(row["fcfs"], row["priority"])
        rows.append(row)
    return rows


def replicas_bench(records: Path, concurrencies: Sequence[int | None], policy: str) -> list[dict[str, Any]]:
    def engines() -> list[SimulatedEngine]:
        fast = [SimulatedEngine(policy=policy, name=f"fast{k}") for k in range(3)]  # type: ignore[arg-type]
        slow = SimulatedEngine(
            policy=policy,  # type: ignore[arg-type]
            step_cost=2 * 0.012,
            seq_cost=2 * 0.00005,
            prefill_cost=2 * 0.00002,
            name="slow",
        )
        return [slow, *fast]

    rows = []
    for concurrency in concurrencies:
        row: dict[str, Any] = {"concurrency": "runner default" if concurrency is None else concurrency}
        for router in ("round_robin", "least_loaded"):
            replicas = engines()
            engine = RoundRobin(replicas) if router == "round_robin" else Replicas(replicas)
            result = virtual(run_records, engine, records, concurrency, lambda r=replicas: r)
            result["requests_per_replica"] = [len(r.stats.requests) for r in replicas]
            row[router] = result
        rr, ll = row["round_robin"], row["least_loaded"]
        row["least_loaded_over_round_robin"] = {
            "p50": round(ll["p50_s"] / rr["p50_s"], 3),
            "p90": round(ll["p90_s"] / rr["p90_s"], 3),
            "throughput": round(ll["generated_tokens_per_s"] / rr["generated_tokens_per_s"], 3),
        }
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="*",
        default=[128, 512],
        help="fixed records in flight, besides the runner's default and every record at once",
    )
    parser.add_argument(
        "--loads", type=float, nargs="*", default=[0.9, 1.0, 1.25], help="open arrivals: shares of saturation"
    )
    parser.add_argument("--replicas-policy", choices=("fcfs", "priority"), default="priority")
    parser.add_argument("--skip", nargs="*", default=[], choices=("closed", "open", "replicas"))
    args = parser.parse_args()
    concurrencies: list[int | None] = [None, *args.concurrency, args.records]
    model = SimulatedEngine()
    result: dict[str, Any] = {
        "records": args.records,
        "topology": "presets.aft(n=5, num_aggregation=2, max_tokens=1024)",
        "engine": {
            "max_num_seqs": model.max_num_seqs,
            "step_cost": model.step_cost,
            "seq_cost": model.seq_cost,
            "prefill_cost": model.prefill_cost,
            "lengths": f"lognormal(mu={model.mean_log}, sigma={model.sigma_log}), capped at {MAX_TOKENS}",
        },
    }
    with tempfile.TemporaryDirectory() as folder:
        records = write_records(Path(folder) / "in.jsonl", args.records)
        if "closed" not in args.skip:
            result["runner"] = priority_bench(records, concurrencies)
        if "open" not in args.skip:
            saturated = (
                result["runner"][0]["fcfs"]["records_per_s"]
                if "runner" in result
                else virtual(run_records, (e := SimulatedEngine()), records, None, lambda: [e])[
                    "records_per_s"
                ]
            )
            result["open_arrivals"] = {
                "saturated_records_per_s": saturated,
                "runs": arrivals_bench(args.records, saturated, args.loads),
            }
        if "replicas" not in args.skip:
            result["replicas"] = {
                "replicas": "4 SimulatedEngine, one with every cost doubled",
                "policy": args.replicas_policy,
                "runs": replicas_bench(records, concurrencies, args.replicas_policy),
            }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
