"""aftlib's pipelined schedule against a batch-synchronous one, on a simulated GPU engine.

The engine follows continuous batching in virtual time: every decode step costs ``a + b x active``
seconds and gives each active sequence one token; a sequence admitted to the batch first pays a prefill
of ``c x prompt tokens``; at most ``max_num_seqs`` sequences run at once, the rest wait in a queue.
Sample lengths vary (as real answers do), so a batch that waits for its slowest sample leaves the
engine idle. Time is virtual (trio's MockClock), so the figures do not depend on this machine.

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
from collections import deque
from pathlib import Path

import anyio
import trio.testing
from attrs import define, field

from aftlib import ChatRequest, Completion, Runner, Sample, Usage, presets
from aftlib._types import as_conversation
from aftlib.engines import Engine

A, B, C = 0.012, 0.00005, 0.00002  # step overhead, per-sequence decode cost, per-prompt-token prefill
MAX_NUM_SEQS = 256


@define(eq=False)
class _Sequence:
    length: int
    prefill: float
    produced: int = 0
    done: anyio.Event = field(factory=anyio.Event)


@define(eq=False)
class SimulatedGPU(Engine):
    """An engine whose time follows continuous batching; sample lengths drawn from a seeded RNG."""

    rng: random.Random = field(factory=lambda: random.Random(0))
    queue: deque[_Sequence] = field(factory=deque)
    active: list[_Sequence] = field(factory=list)
    wake: anyio.Event = field(factory=anyio.Event)
    busy: float = 0.0

    async def generate(self, request: ChatRequest) -> Completion:
        prompt = sum(len(m.content) // 4 + 4 for m in request.messages)
        seqs = [
            _Sequence(
                min(request.sampling.max_tokens, int(self.rng.lognormvariate(5.0, 0.7))) or 1, C * prompt
            )
            for _ in range(request.sampling.n)
        ]
        self.queue.extend(seqs)
        self.wake.set()
        for seq in seqs:
            await seq.done.wait()
        samples = [Sample(i, "x " * s.length, "stop", s.length) for i, s in enumerate(seqs)]
        return Completion(samples, Usage(prompt, sum(s.length for s in seqs), 0, 1))

    async def serve(self) -> None:
        """The GPU loop: admit queued sequences, then run decode steps while anything is active."""
        while True:
            if not self.active and not self.queue:
                self.wake = anyio.Event()
                await self.wake.wait()
            cost = A + B * len(self.active)
            while self.queue and len(self.active) < MAX_NUM_SEQS:
                seq = self.queue.popleft()
                cost += seq.prefill
                self.active.append(seq)
            await anyio.sleep(cost)
            self.busy += cost
            still = []
            for seq in self.active:
                seq.produced += 1
                if seq.produced >= seq.length:
                    seq.done.set()
                else:
                    still.append(seq)
            self.active = still


def _conversations(records: int) -> list[list[dict[str, str]]]:
    rng = random.Random(1)
    return [[{"role": "user", "content": "question " * rng.randint(5, 60)}] for _ in range(records)]


async def _aftlib(records: int) -> float:
    engine = SimulatedGPU()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.jsonl"
        source.write_text("".join(json.dumps({"query": c}) + "\n" for c in _conversations(records)))
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.serve)
            start = anyio.current_time()
            summary = await Runner(
                presets.aft(engine, max_tokens=1024), source, Path(folder) / "out.jsonl"
            ).run()
            elapsed = anyio.current_time() - start
            tg.cancel_scope.cancel()
    assert summary.done == records
    return elapsed


async def _batch_synchronous(records: int, batch: int = 16) -> float:
    engine = SimulatedGPU()
    topology = presets.aft(engine, max_tokens=1024)
    conversations = [as_conversation(c) for c in _conversations(records)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(engine.serve)
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
        elapsed = anyio.current_time() - start
        tg.cancel_scope.cancel()
    return elapsed


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
