"""Adaptive admission: how many records the runner has in flight, from the engines' batch sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from attrs import define, field

from aftlib import ChatRequest, Completion, Runner, presets
from aftlib._admission import UNKNOWN_CAPACITY_RECORDS, Admission
from aftlib.engines import FakeEngine, WrapperEngine

pytestmark = pytest.mark.anyio


@define(eq=False)
class Batched(WrapperEngine):
    """A fake engine that says its batch size and counts the sequences it holds, as VLLMEngine does."""

    size: int = 10
    held: int = field(default=0, init=False)
    peak: int = field(default=0, init=False)

    @property
    def capacity(self) -> int | None:
        return self.size

    @property
    def load(self) -> int:
        return self.held

    async def generate(self, request: ChatRequest) -> Completion:
        self.held += request.sampling.n
        self.peak = max(self.peak, self.held)
        try:
            return await self.inner.generate(request)
        finally:
            self.held -= request.sampling.n


def _input(tmp_path: Path, records: int) -> Path:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "query": f"question {i}"}) + "\n" for i in range(records)))
    return source


async def test_records_start_while_the_batch_has_room_and_never_overfill_it(tmp_path: Path) -> None:
    """Capacity 10, drafts of n=3: the engine is kept at 8-10 sequences and never above 10."""
    engine = Batched(FakeEngine(latency=0.05), size=10)
    topology = presets.aft(engine, n=3, num_aggregation=1, max_tokens=8)
    summary = await Runner(topology, _input(tmp_path, 60), tmp_path / "out.jsonl").run()
    assert summary.done == 60
    assert 8 <= engine.peak <= 10


async def test_an_engine_without_a_batch_size_gets_a_fixed_number_of_records(tmp_path: Path) -> None:
    """FakeEngine says no capacity: 128 records in flight at most, as before adaptive admission."""
    engine = FakeEngine(latency=0.05)
    topology = presets.aft(engine, n=2, num_aggregation=1, max_tokens=8)
    assert Admission.for_topology(topology, None).limit == UNKNOWN_CAPACITY_RECORDS
    summary = await Runner(topology, _input(tmp_path, 200), tmp_path / "out.jsonl").run()
    assert summary.done == 200
    assert engine.peak_in_flight == UNKNOWN_CAPACITY_RECORDS


async def test_a_fixed_concurrency_is_kept_whatever_the_engine_says(tmp_path: Path) -> None:
    """concurrency=4 on an engine with room for 100 sequences: 4 records, so 4 draft requests at most."""
    inner = FakeEngine(latency=0.02)
    engine = Batched(inner, size=100)
    topology = presets.aft(engine, n=2, num_aggregation=1, max_tokens=8)
    summary = await Runner(topology, _input(tmp_path, 30), tmp_path / "out.jsonl", concurrency=4).run()
    assert summary.done == 30
    assert inner.peak_in_flight == 4


async def test_a_record_larger_than_the_batch_still_runs(tmp_path: Path) -> None:
    """Drafts of n=8 on an engine whose batch holds 5: one record at a time, never a stall."""
    engine = Batched(FakeEngine(latency=0.01), size=5)
    topology = presets.aft(engine, n=8, num_aggregation=1, max_tokens=8)
    summary = await Runner(topology, _input(tmp_path, 5), tmp_path / "out.jsonl").run()
    assert summary.done == 5
    assert engine.peak == 8
