"""The dataset runner on the FakeEngine: record shapes, output formats, resume, bad input, pipelining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from aftlib import ChatRequest, ConfigError, InputError, Proposer, Runner, Topology, presets
from aftlib._io import fingerprint
from aftlib._records import BadLine, InputRecord, read_records
from aftlib.run import describe_topology, summary_path
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def echo_engine() -> FakeEngine:
    """Answers every request with its last user turn, so outputs can be checked against inputs."""
    return FakeEngine(handler=lambda request, i: f"answer to {request.messages[-1].content}")


def test_every_record_shape_is_recognised(tmp_path: Path) -> None:
    """AFT, messages, MT-Bench, AlpacaEval and prompt records; ids are their own or the line number."""
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"query": [{"role": "user", "content": "a"}]},
            {"messages": [{"role": "user", "content": "b"}], "id": "m1"},
            {"question_id": 81, "turns": ["t1", "t2"], "category": "writing"},
            {"instruction": "do it", "input": "with this", "dataset": "x"},
            "",
            {"prompt": "p"},
        ],
    )
    items = list(read_records(path))
    assert all(isinstance(i, InputRecord) for i in items)
    records = [i for i in items if isinstance(i, InputRecord)]
    assert [(r.id, r.kind) for r in records] == [
        (1, "aft"),
        ("m1", "messages"),
        (81, "mt_bench"),
        (4, "alpaca_eval"),
        (6, "prompt"),
    ]
    assert records[2].followups == ("t2",)
    assert records[3].conversation[0].content == "do it\n\nwith this"


def test_json_arrays_are_read_with_positions(tmp_path: Path) -> None:
    """A JSON array input gives one record per item, numbered by position."""
    path = tmp_path / "in.json"
    path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}, {"nope": 1}], indent=2))
    items = list(read_records(path))
    assert [getattr(i, "id", None) for i in items[:2]] == [1, 2]
    assert isinstance(items[2], BadLine)
    assert items[2].line == 3


async def test_bad_lines_are_reported_and_the_rest_runs(tmp_path: Path) -> None:
    """A malformed line 3 goes to the errors file as line 3; the other records are answered."""
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [{"prompt": "one"}, {"prompt": "two"}, '{"prompt": "three"', {"prompt": "four"}, {"colour": "red"}],
    )
    out = tmp_path / "out.jsonl"
    summary = await Runner(presets.aft(echo_engine(), n=2), path, out).run()
    assert (summary.done, summary.bad, summary.ok) == (3, 2, False)
    assert sorted(r["id"] for r in read_jsonl(out)) == [1, 2, 4]
    errors = read_jsonl(summary.errors)  # type: ignore[arg-type]
    assert [(e["line"], e["error"][:14]) for e in errors] == [(3, "not valid JSON"), (5, "unrecognised r")]
    assert errors[0]["text"] == '{"prompt": "three"'


async def test_strict_checks_everything_before_generating(tmp_path: Path) -> None:
    """--strict: a bad line stops the run before any request, naming FILE:LINE."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "one"}, {"prompt": 3}])
    engine = echo_engine()
    with pytest.raises(InputError, match=r"in\.jsonl:2: .*'prompt' must be a non-empty string"):
        await Runner(presets.aft(engine), path, tmp_path / "out.jsonl", strict=True).run()
    assert engine.requests == []
    assert not (tmp_path / "out.jsonl").exists()


async def test_runtime_failures_are_error_records_then_retried(tmp_path: Path) -> None:
    """A record whose generation fails is written as an error record; a rerun retries only it."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "ok"}, {"prompt": "fails"}, {"prompt": "fine"}])
    out = tmp_path / "out.jsonl"
    broken = True

    def handler(request: ChatRequest, index: int) -> str:
        if broken and "fails" in request.messages[-1].content:
            raise TimeoutError("server went away")
        return "fine answer"

    engine = FakeEngine(handler=handler)
    first = await Runner(presets.aft(engine, n=2), path, out).run()
    assert (first.done, first.failed) == (2, 1)
    failed = [r for r in read_jsonl(out) if r["status"] == "error"]
    assert failed[0]["id"] == 2
    assert "server went away" in failed[0]["error"]

    broken = False
    engine.requests.clear()
    second = await Runner(presets.aft(engine, n=2), path, out).run()
    assert (second.done, second.resumed, second.failed) == (1, 2, 0)
    assert len(engine.requests) == 3, "only the failed record ran again"
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == [1, 2, 3]
    assert all(r["status"] == "done" for r in rows)


async def test_a_bug_in_a_custom_agent_propagates_with_its_traceback(tmp_path: Path) -> None:
    """A TypeError in a custom agent is not an ordinary failed record: it stops the run and comes through.

    Records already answered stay in the output and the summary says the run was interrupted.
    """
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "ok"}, {"prompt": "buggy"}])
    out = tmp_path / "out.jsonl"

    class Buggy(Proposer):
        async def run(self, conversation: Any, references: Any, **kwargs: Any) -> Any:
            if "buggy" in conversation[-1].content:
                return len(None)  # type: ignore[arg-type]  # the programming error under test
            return await super().run(conversation, references, **kwargs)

    topology = Topology([], Buggy(echo_engine()))
    with pytest.raises(TypeError, match="has no len"):
        await Runner(topology, path, out, concurrency=1).run()
    assert [r["id"] for r in read_jsonl(out)] == [1]
    summary = json.loads(summary_path(out).read_text())
    assert summary["interrupted"] is True


async def test_resume_repairs_a_torn_last_line(tmp_path: Path) -> None:
    """A half-written last line (a killed run) is dropped and its record runs again, exactly once."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(5)])
    out = tmp_path / "out.jsonl"
    await Runner(presets.aft(echo_engine(), n=2), path, out, limit=3).run()
    text = out.read_text()
    out.write_text(text[: len(text) - 20])  # tear the last line
    summary = await Runner(presets.aft(echo_engine(), n=2), path, out).run()
    assert (summary.resumed, summary.done) == (2, 3)
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == [1, 2, 3, 4, 5]


async def test_mt_bench_runs_turn_by_turn(tmp_path: Path) -> None:
    """MT-Bench: turn 2 sees turn 1's answer as the assistant turn; FastChat answer lines keep both."""
    path = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 81, "turns": ["first?", "second?"]}])
    engine = echo_engine()
    out = tmp_path / "answers.jsonl"
    await Runner(presets.aft(engine, n=2), path, out, format="mt_bench", generator="tiny").run()
    second_turn = engine.requests[3].messages
    assert [(m.role, m.content) for m in second_turn[1:]] == [
        ("user", "first?"),
        ("assistant", "answer to first?"),
        ("user", "second?"),
    ]
    (row,) = read_jsonl(out)
    assert row["question_id"] == 81
    assert row["model_id"] == "tiny"
    assert row["choices"] == [{"index": 0, "turns": ["answer to first?", "answer to second?"]}]
    assert set(row) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}


async def test_aft_and_alpaca_eval_formats(tmp_path: Path) -> None:
    """--format aft: the input items plus response, input order; alpaca_eval: instruction/output/generator."""
    items = [{"query": [{"role": "user", "content": f"q{i}"}], "extra": i} for i in range(4)]
    path = tmp_path / "in.json"
    path.write_text(json.dumps(items))
    out = tmp_path / "out.json"
    await Runner(presets.aft(echo_engine(), n=2), path, out, format="aft", concurrency=3).run()
    assert json.loads(out.read_text()) == [
        {**item, "response": f"answer to q{i}"} for i, item in enumerate(items)
    ]

    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "say hi", "dataset": "helpful_base"}])
    out2 = tmp_path / "alpaca_out.json"
    await Runner(presets.aft(echo_engine(), n=2), alpaca, out2, format="alpaca_eval", generator="m").run()
    assert json.loads(out2.read_text()) == [
        {"instruction": "say hi", "output": "answer to say hi", "generator": "m"}
    ]


async def test_jsonl_output_carries_fields_usage_and_trace(tmp_path: Path) -> None:
    """Each JSONL line keeps the input's fields and adds id, response, usage, timings and the trace."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "x", "dataset": "d"}])
    out = tmp_path / "out.jsonl"
    await Runner(presets.aft(echo_engine(), n=3), path, out, trace=True).run()
    (row,) = read_jsonl(out)
    assert row["dataset"] == "d"
    assert row["response"] == "answer to x"
    assert row["usage"]["requests"] == 3
    assert row["timings"]["elapsed"] >= 0
    (turn,) = row["trace"]
    assert [len(layer) for layer in turn["layers"]] == [3, 3]
    assert turn["answer"]["text"] == "answer to x"


async def test_records_are_pipelined_not_batched(tmp_path: Path) -> None:
    """A slow record does not hold back the others: fast records finish while it is still running."""
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"prompt": "slow"}, *({"prompt": f"fast{i}"} for i in range(5))]
    )

    async def handler(request: ChatRequest, index: int) -> str:
        await anyio.sleep(1.0 if "slow" in request.messages[-1].content else 0.01)
        return "x"

    out = tmp_path / "out.jsonl"
    await Runner(presets.aft(FakeEngine(handler=handler), n=1), path, out, concurrency=4).run()
    ids = [r["id"] for r in read_jsonl(out)]
    assert ids[-1] == 1, "the slow record should finish last"
    assert len(ids) == 6


async def test_concurrency_bounds_records_in_flight(tmp_path: Path) -> None:
    """No more than `concurrency` records run at once."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(20)])
    active = peak = 0

    async def handler(request: ChatRequest, index: int) -> str:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.01)
        active -= 1
        return "x"

    topology = presets.aft(FakeEngine(handler=handler), n=1, num_aggregation=1)
    await Runner(topology, path, tmp_path / "out.jsonl", concurrency=3).run()
    assert peak == 3


async def test_duplicate_ids_are_bad_lines(tmp_path: Path) -> None:
    """Two records with one id: the second is reported, not run twice under one id."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    summary = await Runner(presets.aft(echo_engine(), n=1), path, tmp_path / "out.jsonl").run()
    assert (summary.done, summary.bad) == (1, 1)


async def test_limit_takes_the_first_records(tmp_path: Path) -> None:
    """--limit K runs only the first K input records."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": f"q{i}"} for i in range(10)])
    out = tmp_path / "out.jsonl"
    summary = await Runner(presets.aft(echo_engine(), n=1), path, out, limit=4).run()
    assert summary.records == 4
    assert sorted(r["id"] for r in read_jsonl(out)) == [1, 2, 3, 4]


# --- the output's origin, lock and callbacks -----------------------------------------------------------


async def test_an_output_of_another_input_or_topology_is_refused(tmp_path: Path) -> None:
    """OUT.run.json records the input and topology; another of either is refused until restart=True."""
    first = write_jsonl(tmp_path / "a.jsonl", [{"prompt": f"a{i}"} for i in range(3)])
    second = write_jsonl(tmp_path / "b.jsonl", [{"prompt": f"b{i}"} for i in range(2)])
    out = tmp_path / "out.jsonl"
    await Runner(presets.aft(echo_engine(), n=2), first, out, config_name="a.yaml").run()
    origin = json.loads((tmp_path / "out.jsonl.run.json").read_text())
    assert (origin["input"], origin["config"]) == (str(first), "a.yaml")
    with pytest.raises(ConfigError, match=r"holds the answers of another run: .* input .*a\.jsonl"):
        await Runner(presets.aft(echo_engine(), n=2), second, out).run()
    with pytest.raises(ConfigError, match="another run"):
        await Runner(presets.aft(echo_engine(), n=3), first, out).run()  # another sampling n
    assert len(read_jsonl(out)) == 3
    summary = await Runner(presets.aft(echo_engine(), n=2), second, out, restart=True).run()
    assert summary.done == 2
    assert [r["prompt"] for r in read_jsonl(out)] == ["b0", "b1"]


def test_the_topology_description_names_what_decides_the_answers() -> None:
    """The topology description has what decides answers; another sampling, another fingerprint.

    Per agent: class, name, engine, model, template, sampling and LoRA; per layer: min_candidates, timeout.
    """
    described = describe_topology(presets.aft(FakeEngine(name="e"), n=2, num_aggregation=1))
    (propose,) = described["layers"][0]["agents"]
    assert {k: propose[k] for k in ("class", "engine", "template", "lora")} == {
        "class": "Proposer",
        "engine": "e",
        "template": "aft_propose",
        "lora": None,
    }
    assert propose["sampling"]["n"] == 2
    assert set(described["layers"][0]) == {"agents", "min_candidates", "timeout"}
    assert described["final"]["class"] == "Aggregator"
    other = describe_topology(presets.aft(FakeEngine(name="e"), n=3, num_aggregation=1))
    assert fingerprint(described) != fingerprint(other)


async def test_a_running_output_is_locked(tmp_path: Path) -> None:
    """While a runner holds its output, another runner on it is refused naming the process."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "q"}])
    out = tmp_path / "out.jsonl"
    runner = Runner(presets.aft(echo_engine(), n=1), path, out)
    with runner.claim():
        with pytest.raises(ConfigError, match=r"in use by another aftlib process \(pid \d+\)"):
            await Runner(presets.aft(echo_engine(), n=1), path, out).run()
        await runner.run()  # the holder runs
    assert not (tmp_path / "out.jsonl.lock").exists()


async def test_callbacks_see_the_start_each_record_and_bad_lines(tmp_path: Path) -> None:
    """on_progress is called at the start (nothing finished) and per record; on_bad_line gets FILE:LINE."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, "nope", {"prompt": "b"}])
    finished: list[int] = []
    bad: list[str] = []
    runner = Runner(
        presets.aft(echo_engine(), n=1),
        path,
        tmp_path / "out.jsonl",
        on_progress=lambda stats: finished.append(stats.finished),
        on_bad_line=lambda error: bad.append(str(error)),
    )
    await runner.run()
    assert finished[0] == 0
    assert finished[-1] == 3
    assert bad == [f"{path}:2: not valid JSON: Expecting value (column 1)"]
