"""Tracing: log context on every line, replayable traces, and no prompt text in the logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from aftlib import (
    Aggregator,
    InputError,
    Layer,
    Proposer,
    Runner,
    SamplingParams,
    SequentialAggregator,
    Topology,
    traced_requests,
)
from aftlib.engines import RetryingEngine
from aftlib.testing import FakeEngine, FaultPlan

pytestmark = pytest.mark.anyio

SECRET_PROMPT = "the launch code is 0451-PRIVATE"


def write_prompts(path: Path, count: int) -> Path:
    rows = [{"id": f"r{i}", "prompt": f"{SECRET_PROMPT} / question {i}"} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def faulty_topology() -> tuple[Topology, FakeEngine, FakeEngine]:
    flaky = FakeEngine(name="flaky", latency=0.01, faults=FaultPlan(rate=0.5, kinds=("rate_limit",), seed=3))
    broken = FakeEngine(name="broken", faults=lambda number, request: "raise")
    layer = Layer(
        [
            Proposer(
                RetryingEngine(flaky, attempts=8, backoff=0.0), name="steady", sampling=SamplingParams(n=2)
            ),
            Proposer(broken, name="down"),
        ],
        min_candidates=2,
    )
    return Topology([layer], Aggregator(FakeEngine(name="judge"), name="judge")), flaky, broken


async def test_every_log_line_of_a_run_carries_run_record_layer_and_agent(tmp_path: Path) -> None:
    """Retries and failed agents are logged with the run id, record id, layer and agent bound."""
    topology, flaky, _ = faulty_topology()
    runner = Runner(topology, write_prompts(tmp_path / "in.jsonl", 6), tmp_path / "out.jsonl")
    with capture_logs() as logs:
        summary = await runner.run()
    assert summary.done == 6
    retries = [e for e in logs if e["event"] == "retrying"]
    failed = [e for e in logs if e["event"] == "agent failed"]
    assert len(retries) == flaky.injected["rate_limit"] > 0
    assert len(failed) == 6
    for entry in retries + failed:
        assert entry["run_id"] == summary.run_id
        assert entry["record"] in {f"r{i}" for i in range(6)}
        assert entry["layer"] == 0
    assert {e["agent"] for e in retries} == {"steady"}
    assert {e["agent"] for e in failed} == {"down"}
    assert all(e["run_id"] == summary.run_id for e in logs)


async def test_prompts_never_reach_the_logs(tmp_path: Path) -> None:
    """Nothing logged during a run with retries and failures contains the prompt's text."""
    topology, _, _ = faulty_topology()
    runner = Runner(topology, write_prompts(tmp_path / "in.jsonl", 4), tmp_path / "out.jsonl", trace=True)
    with capture_logs() as logs:
        await runner.run()
    assert logs
    assert not [e for e in logs if SECRET_PROMPT in repr(e)]
    assert SECRET_PROMPT in (tmp_path / "out.jsonl").read_text()  # the trace has it: it was asked for


async def test_a_trace_replays_the_same_requests(tmp_path: Path) -> None:
    """The requests read back from --trace output are the requests the engines got, in full."""
    engine = FakeEngine(name="m")
    topology = Topology(
        [
            [
                Proposer(
                    engine,
                    name="p",
                    sampling=SamplingParams(n=3, temperature=0.3, max_tokens=64, stop=["##"]),
                )
            ]
        ],
        SequentialAggregator(engine, name="seq", window=2, shuffle=7),
    )
    out = tmp_path / "out.jsonl"
    await Runner(topology, write_prompts(tmp_path / "in.jsonl", 3), out, trace=True, concurrency=1).run()
    replayed = [
        traced.request
        for line in out.read_text().splitlines()
        for entry in json.loads(line)["trace"]
        for traced in traced_requests(entry)
    ]
    assert len(replayed) == len(engine.requests) == 3 * (1 + 2)  # a proposer request, then 2 windows
    assert replayed == engine.requests
    first = json.loads(out.read_text().splitlines()[0])["trace"][0]
    assert [(r.layer, r.agent) for r in traced_requests(first)] == [(0, "p"), (1, "seq"), (1, "seq")]
    assert first["failures"] == []


async def test_a_trace_records_the_failed_agents(tmp_path: Path) -> None:
    """Agents that failed in a record that still completed are named in its line and its trace."""
    topology, _, _ = faulty_topology()
    out = tmp_path / "out.jsonl"
    await Runner(topology, write_prompts(tmp_path / "in.jsonl", 2), out, trace=True).run()
    for text in out.read_text().splitlines():
        line = json.loads(text)
        assert line["status"] == "done"
        (failure,) = line["failures"]
        assert failure["agent"] == "down"
        assert failure["reason"] == "error"
        assert line["trace"][0]["failures"] == [failure]


def test_a_malformed_trace_is_an_input_error() -> None:
    """Reading requests from a trace without them, or with a broken one, names what is wrong."""
    with pytest.raises(InputError, match="no 'requests'"):
        traced_requests({"layers": []})
    with pytest.raises(InputError, match="malformed request") as info:
        traced_requests({"requests": [{"layer": 0, "agent": "a", "messages": [], "lora": None}]})
    assert info.value.where == "requests[0]"
    assert "missing 'sampling'" in info.value.message


def test_a_traced_message_without_content_names_its_path() -> None:
    """A traced request whose message has no 'content' says so at requests[i].messages[j]."""
    request = {"layer": 0, "agent": "a", "sampling": {}, "lora": None, "messages": [{"role": "user"}]}
    with pytest.raises(InputError, match="missing 'content'") as info:
        traced_requests({"requests": [request]})
    assert info.value.where == "requests[0].messages[0]"
