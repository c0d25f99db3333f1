"""aftlib's pipelined schedule against a batch-synchronous one, on a simulated GPU engine.

The engine is :class:`aftlib.testing.SimulatedEngine` (FCFS, as vLLM's default): continuous batching in
virtual time, every decode step costs ``a + b x active`` seconds and gives each active sequence one
token; a sequence admitted to the batch first pays a prefill of ``c x prompt tokens``; at most
``max_num_seqs`` sequences run at once, the rest wait in a queue. Sample lengths vary (seeded
log-normal, a function of the request), so a batch that waits for its slowest sample leaves the engine
idle. Time is virtual (trio's MockClock), so the figures do not depend on this machine.

Schedules, on the same 1,000 records and the same AFT topology (n=5, num_aggregation=2):
- aftlib: `Runner` (each record runs its next layer as soon as its own previous layer is done);
- batch-synchronous, like the AFT reference script: batches of 16 records, each layer waits for the
  whole batch before the next layer starts.

    .venv/bin/python bench/bench_simulated_gpu.py [--records 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import anyio
import trio.testing

from aftlib import Runner, presets
from aftlib._types import as_conversation
from aftlib.testing import SimulatedEngine

A, B, C = 0.012, 0.00005, 0.00002  # step overhead, per-sequence decode cost, per-prompt-token prefill
MAX_NUM_SEQS = 256


def simulated_gpu() -> SimulatedEngine:
    """The simulated engine of this benchmark: FCFS, as vLLM's default scheduler."""
    return SimulatedEngine(step_cost=A, seq_cost=B, prefill_cost=C, max_num_seqs=MAX_NUM_SEQS)


def _conversations(records: int) -> list[list[dict[str, str]]]:
    rng = random.Random(1)
    return [
        [{"role": "user", "content": f"record {k}: " + "question " * rng.randint(5, 60)}]
        for k in range(records)
    ]


async def _aftlib(records: int) -> float:
    engine = simulated_gpu()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.jsonl"
        source.write_text("".join(json.dumps({"query": c}) + "\n" for c in _conversations(records)))
        start = anyio.current_time()
        summary = await Runner(presets.aft(engine, max_tokens=1024), source, Path(folder) / "out.jsonl").run()
        elapsed = anyio.current_time() - start
    assert summary.done == records
    return elapsed


async def _batch_synchronous(records: int, batch: int = 16) -> float:
    engine = simulated_gpu()
    topology = presets.aft(engine, max_tokens=1024)
    conversations = [as_conversation(c) for c in _conversations(records)]
    start = anyio.current_time()
    for first in range(0, records, batch):
        chunk = conversations[first : first + batch]
        references: list[list[str]] = [[] for _ in chunk]
        for layer in [*topology.layers, None]:
            agent = topology.final if layer is None else layer.agents[0]
            texts: list[list[str]] = [[] for _ in chunk]

            async def one(i: int, agent=agent, texts=texts, references=references) -> None:  # type: ignore[no-untyped-def]
                request, _ = agent.prepare(chunk[i], references[i])
                completion = await engine.generate(request)
                texts[i] = [s.text for s in completion.samples]

            async with anyio.create_task_group() as layer_group:  # the barrier: the whole batch
                for i in range(len(chunk)):
                    layer_group.start_soon(one, i)
            references = texts
    return anyio.current_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1000)
    args = parser.parse_args()
    options = {"clock": trio.testing.MockClock(autojump_threshold=0)}
    pipelined = anyio.run(_aftlib, args.records, backend="trio", backend_options=options)
    options = {"clock": trio.testing.MockClock(autojump_threshold=0)}
    synchronous = anyio.run(_batch_synchronous, args.records, backend="trio", backend_options=options)
    print(
        json.dumps(
            {
                "records": args.records,
                "aftlib_virtual_s": round(pipelined, 1),
                "batch_sync_virtual_s": round(synchronous, 1),
                "aftlib_records_per_s": round(args.records / pipelined, 2),
                "batch_sync_records_per_s": round(args.records / synchronous, 2),
                "throughput_ratio": round(synchronous / pipelined, 2),
                "model": {"a": A, "b": B, "c": C, "max_num_seqs": MAX_NUM_SEQS},
            }
        )
    )


if __name__ == "__main__":
    main()
