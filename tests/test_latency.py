"""Latency in every report: time to the first answer token and to the answer, per record and in summaries."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from aftlib import ChatRequest, Event, Runner, TokenDelta, presets
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio


class Counting(FakeEngine):
    """A FakeEngine that counts streamed and whole requests apart."""

    streamed: int = 0
    whole: int = 0

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[Any]:
        self.streamed += 1
        return super().stream(request)

    async def generate(self, request: ChatRequest):  # type: ignore[no-untyped-def]
        self.whole += 1
        return await super().generate(request)


async def test_on_answer_streams_only_the_final_agent() -> None:
    """on_answer gets the answer's deltas (they make its text); the drafts are not streamed."""
    engine = Counting(handler=lambda request, index: "one two three")
    topology = presets.aft(engine, n=3, num_aggregation=2)
    seen: list[Event] = []
    result = await topology.run("q", on_answer=seen.append)
    assert all(isinstance(e, TokenDelta) and e.is_answer for e in seen)
    assert "".join(e.text for e in seen if isinstance(e, TokenDelta)) == result.text
    assert (engine.whole, engine.streamed) == (2, 1)


async def test_the_runner_reports_time_to_answer_and_first_token(tmp_path: Path) -> None:
    """Each line has timings.first_token <= elapsed; the summary has p50/p90/p99 and throughput."""
    engine = FakeEngine(handler=lambda request, index: "a b c d", latency=0.02)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(12)))
    output = tmp_path / "out.jsonl"
    async with presets.aft(engine, n=2, num_aggregation=2) as topology:
        summary = await Runner(topology, source, output, concurrency=4).run()
    lines = [json.loads(text) for text in output.read_text().splitlines()]
    for line in lines:
        timings = line["timings"]
        assert 0 < timings["first_token"] <= timings["elapsed"]
    latency = summary.latency.to_json()
    assert 0 < latency["first_token"]["p50"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p50"] >= 0.06  # three requests of 20 ms each
    written = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert written["latency"]["p90"] == latency["p90"]
    assert written["throughput"]["records_per_s"] > 0
