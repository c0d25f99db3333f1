"""AFT training data: off-policy, on-policy (fake engine), mixing, traces, the data card and bad input."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from aftlib import (
    Aggregator,
    ChatRequest,
    ConfigError,
    InputError,
    Message,
    PromptTemplate,
    Proposer,
    Runner,
    SamplingParams,
    Topology,
)
from aftlib._templates import builtin_templates
from aftlib.cli import main
from aftlib.finetune import (
    DataCard,
    Example,
    Skip,
    aggregation_example,
    build_off_policy,
    build_on_policy,
    card_path,
    choose_proposals,
    direct_example,
    examples_from_trace,
    read_preferences,
    skipped_path,
    write_dataset,
)
from aftlib.finetune._drafts import DraftCache, drafts_path
from aftlib.testing import FakeEngine

from .conftest import reference_aggregation_system

pytestmark = pytest.mark.anyio

DATA = Path(__file__).parent / "data"
UF = DATA / "ultrafeedback_5.jsonl"
BINARIZED = DATA / "binarized_3.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def raw_records(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path)


def best_response(record: dict[str, Any]) -> str:
    """The best-rated non-empty response, worked out from the raw record (first among equals)."""
    usable = [c for c in record["completions"] if c["response"].strip()]
    top = max(c["overall_score"] for c in usable)
    return next(c["response"] for c in usable if c["overall_score"] == top)


async def collect(build: AbstractAsyncContextManager[AsyncIterator[Example | Skip]]) -> list[Example | Skip]:
    """Every item a builder gives."""
    async with build as items:
        return [item async for item in items]


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def uf_record(instruction: str, scores: list[float | None], **extra: Any) -> dict[str, Any]:
    completions = []
    for i, score in enumerate(scores):
        completion: dict[str, Any] = {"model": f"m{i}", "response": f"{instruction} answer {i}"}
        if score is not None:
            completion["overall_score"] = score
        completions.append(completion)
    return {"instruction": instruction, "completions": completions, **extra}


# --- off-policy --------------------------------------------------------------------------------------


def test_off_policy_cli_renders_three_responses_with_the_aggregate_template(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """k=3: system = AFT aggregation prompt over 3 of the responses, user = instruction, assistant = best."""
    out = tmp_path / "agg.jsonl"
    assert (
        main(["data", "off-policy", "--input", str(UF), "--output", str(out), "--k", "3", "--seed", "0"]) == 0
    )
    raw = raw_records(UF)
    rows = read_jsonl(out)
    assert [r["source"]["line"] for r in rows] == [1, 2, 5]
    for row in rows:
        record = raw[row["source"]["line"] - 1]
        assert row["kind"] == "aggregation"
        system, user, assistant = row["messages"]
        responses = [c["response"] for c in record["completions"] if c["response"].strip()]
        proposals = system["content"].split("Responses from models:\n", 1)[1]
        chosen = [r for r in responses if f". {r}" in proposals]
        assert len(chosen) == 3
        order = sorted(chosen, key=lambda r: proposals.index(f". {r}"))
        assert system == {"role": "system", "content": reference_aggregation_system(order)}
        assert user == {"role": "user", "content": record["instruction"]}
        assert assistant == {"role": "assistant", "content": best_response(record)}
        template = PromptTemplate("aft_aggregate").messages([Message("user", record["instruction"])], order)
        assert row["messages"][:2] == template
    card = DataCard.read(card_path(out))
    assert (card.records_read, card.records_used, card.examples) == (5, 3, {"aggregation": 3, "direct": 0})
    assert card.skipped == {"too few responses": 1, "missing score": 1}
    assert card.skipped_examples["missing score"][0]["line"] == 4
    assert "completions[1] has no 'overall_score'" in card.skipped_examples["missing score"][0]["detail"]
    assert card.sources["k"] == 3
    assert card.sources["target"] == {"mode": "best"}
    assert [r["line"] for r in read_jsonl(skipped_path(out))] == [3, 4]
    assert "too few responses: 1 (line 3)" in capsys.readouterr().err


def test_target_is_spared_from_the_proposals_only_when_enough_remain() -> None:
    """With 4 responses and k=3 the best one is not a proposal; with k=4, or 3 usable responses, it is."""
    records = [r for r in read_preferences(UF) if not isinstance(r, Skip)]
    first, _, fifth = records[0], records[1], records[-1]
    assert first.best == 0
    assert (fifth.dropped, len(fifth.responses)) == (1, 3)
    best = first.responses[0].text
    assert best not in (choose_proposals(first, 3, 0, spare_best=True) or [])
    assert best in (choose_proposals(first, 4, 0, spare_best=True) or [])
    assert fifth.responses[0].text in (choose_proposals(fifth, 3, 0, spare_best=True) or [])
    assert choose_proposals(fifth, 4, 0, spare_best=True) is None


async def test_same_seed_same_examples_other_seed_other_order() -> None:
    """Proposals are a seeded per-record choice: seed 0 twice gives the same examples, seed 1 others."""

    async def build(seed: int) -> list[list[Message]]:
        items = await collect(build_off_policy(read_preferences(UF), k=3, seed=seed))
        return [list(e.messages) for e in items if isinstance(e, Example)]

    first, again, other = await build(0), await build(0), await build(1)
    assert first == again
    assert first != other
    assert [m[1:] for m in first] == [m[1:] for m in other]  # same conversations and targets


async def test_binarized_records_use_chosen_as_target_and_need_no_scores() -> None:
    """Binarized: k=2 proposes chosen and rejected, targets chosen, needs no scores; k=3 is too many."""
    raw = raw_records(BINARIZED)
    items = await collect(build_off_policy(read_preferences(BINARIZED), k=2, seed=0))
    assert all(isinstance(i, Example) for i in items)
    for item, record in zip(items, raw, strict=True):
        assert isinstance(item, Example)
        assert item.source.id == record["prompt_id"]
        assert list(item.messages[1:]) == record["chosen"]
        refs = [record["chosen"][-1]["content"], record["rejected"][-1]["content"]]
        assert item.messages[0].content in {
            reference_aggregation_system(refs),
            reference_aggregation_system(refs[::-1]),
        }
    short = await collect(build_off_policy(read_preferences(BINARIZED), k=3, seed=0))
    assert [s.reason for s in short if isinstance(s, Skip)] == ["too few responses"] * 3


async def test_bad_records_are_skipped_with_reasons_and_lines(tmp_path: Path) -> None:
    """Bad JSON, layouts, fields, empty texts, duplicate ids: skips naming the line, all in the card."""
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps(uf_record("good one", [5, 3, 4])),
        '{"instruction": "torn", "completions": [',
        json.dumps({"question": "where are the answers?"}),
        json.dumps({"instruction": "", "completions": []}),
        json.dumps({"instruction": "x", "completions": [{"response": 3}]}),
        json.dumps(uf_record("all empty", [1, 2]) | {"completions": [{"response": " ", "overall_score": 1}]}),
        json.dumps(uf_record("with id", [1, 2, 3], id="a")),
        json.dumps(uf_record("same id", [1, 2, 3], id="a")),
        json.dumps(uf_record("nan score", [1.0, float("nan"), 2.0])),
        "",
    ]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    card = await write_dataset(out, build_off_policy(read_preferences(path), k=2, seed=0))
    skipped = {row["line"]: (row["reason"], row["detail"]) for row in read_jsonl(skipped_path(out))}
    assert {line: reason for line, (reason, _) in skipped.items()} == {
        2: "invalid JSON",
        3: "unrecognised layout",
        4: "malformed record",
        5: "malformed record",
        6: "too few responses",
        8: "duplicate id",
        9: "missing score",
    }
    assert "'instruction' must be a non-empty string" in skipped[4][1]
    assert "completions[0].response must be a string" in skipped[5][1]
    assert "already used on line 7" in skipped[8][1]
    assert "nan, not a number" in skipped[9][1]
    assert [r["source"]["line"] for r in read_jsonl(out)] == [1, 7]
    assert (card.records_read, card.records_used, card.total_skipped) == (9, 2, 7)


# --- engine targets -----------------------------------------------------------------------------------


def aggregator_topology(handler: Any) -> tuple[Topology, FakeEngine]:
    engine = FakeEngine(handler=handler, name="strong")
    topology = Topology([Proposer(engine, name="p")], Aggregator(engine, name="judge"))
    return topology, engine


async def test_engine_target_is_the_final_aggregators_answer_over_the_proposals() -> None:
    """--target engine: the final aggregator reads exactly the example's prompt; its answer is the target."""

    def handler(request: ChatRequest, index: int) -> str:
        return f"synthesis of {request.messages[-1].content}"

    topology, engine = aggregator_topology(handler)
    items = await collect(build_off_policy(read_preferences(UF), k=3, seed=0, target=topology))
    examples = [i for i in items if isinstance(i, Example)]
    assert [e.source.line for e in examples] == [1, 2, 4, 5]  # no score needed: line 4 is used
    assert [(s.source.line, s.reason) for s in items if isinstance(s, Skip)] == [(3, "too few responses")]
    by_prompt = {tuple(r.messages): r for r in engine.requests}
    for example in examples:
        request = by_prompt[example.prompt]
        assert example.target == f"synthesis of {example.prompt[-1].content}"
        assert request.sampling.n == 1


async def test_failing_target_engine_skips_only_that_record() -> None:
    """A target engine that fails on one record skips it with the engine's error; the rest are built."""

    def handler(request: ChatRequest, index: int) -> str:
        if "17 multiplied" in request.messages[-1].content:
            raise RuntimeError("GPU fell off the bus")
        return "fine"

    topology, _ = aggregator_topology(handler)
    records = [r for r in read_preferences(UF) if not isinstance(r, Skip) and len(r.responses) >= 3]
    items = await collect(build_off_policy(records, k=3, seed=0, target=topology))
    (skip,) = [i for i in items if isinstance(i, Skip)]
    assert skip.reason == "target engine failed"
    assert skip.source.line == 2
    assert "GPU fell off the bus" in skip.detail
    assert sum(isinstance(i, Example) for i in items) == 3


def test_cli_engine_target_failure_exits_1_and_lists_the_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target engine whose context cannot hold the prompt: every record is skipped, the exit status is 1."""
    config = tmp_path / "target.yaml"
    config.write_text(
        "engines:\n  tiny: {type: fake, context_window: 10}\n"
        "agents:\n  p: {engine: tiny}\n  judge: {role: aggregator, engine: tiny}\n"
        "layers: [[p]]\nfinal: judge\n"
    )
    out = tmp_path / "agg.jsonl"
    args = ["--input", str(BINARIZED), "--output", str(out), "--k", "2", "--target", "engine"]
    assert main(["data", "off-policy", *args, "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "target engine failed: 3" in err
    assert "no example was written" in err
    rows = read_jsonl(skipped_path(out))
    assert [r["id"] for r in rows] == ["3f1c0a9e5b", "a94d27c1e0", "77be01d4f2"]
    assert all("the context is 10" in r["detail"] for r in rows)


def test_target_config_must_end_with_an_aggregator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target topology whose final agent is a proposer is refused before anything runs (exit 2)."""
    config = tmp_path / "target.yaml"
    config.write_text(
        "engines:\n  f: {type: fake}\nagents:\n  p: {engine: f}\n  q: {engine: f}\nlayers: [[p]]\nfinal: q\n"
    )
    out = tmp_path / "agg.jsonl"
    args = ["--input", str(UF), "--output", str(out), "--target", "engine", "--target-config", str(config)]
    assert main(["data", "off-policy", *args]) == 2
    assert "must be an aggregator" in capsys.readouterr().err
    assert not out.exists()


# --- mixing -------------------------------------------------------------------------------------------


async def test_direct_examples_are_the_proposal_prompt_and_the_same_target() -> None:
    """direct_ratio=1: each record also gets [system newline, user, target] after its aggregation example."""
    items = await collect(build_off_policy(read_preferences(UF), k=3, seed=0, direct_ratio=1.0))
    examples = [i for i in items if isinstance(i, Example)]
    assert [e.kind for e in examples] == ["aggregation", "direct"] * 3
    for aggregation, direct in zip(examples[::2], examples[1::2], strict=True):
        assert direct.source == aggregation.source
        assert list(direct.messages) == [
            {"role": "system", "content": "\n"},
            aggregation.messages[1],
            aggregation.messages[2],
        ]


async def test_direct_ratio_picks_a_seeded_share_of_records(tmp_path: Path) -> None:
    """direct_ratio=0.3 over 400 records gives about 120 direct examples, the same ones for the same seed."""
    path = write_jsonl(tmp_path / "many.jsonl", [uf_record(f"q{i}", [1, 2, 3]) for i in range(400)])

    async def directs(seed: int) -> list[int]:
        items = await collect(build_off_policy(read_preferences(path), k=2, seed=seed, direct_ratio=0.3))
        return [i.source.line for i in items if isinstance(i, Example) and i.kind == "direct"]

    first = await directs(0)
    assert 90 <= len(first) <= 150
    assert first == await directs(0)
    assert first != await directs(1)


def test_direct_ratio_out_of_range_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--direct-ratio 2 is refused with exit 2 and a message naming it."""
    args = ["--input", str(UF), "--output", str(tmp_path / "o.jsonl"), "--direct-ratio", "2"]
    assert main(["data", "off-policy", *args]) == 2
    assert "direct_ratio" in capsys.readouterr().err


# --- on-policy ----------------------------------------------------------------------------------------


def drafts_handler(request: ChatRequest, index: int) -> str:
    return f"draft {index} of {request.messages[-1].content}"


async def test_on_policy_drafts_with_the_icl_prompt_and_best_target() -> None:
    """One n=k request per record with the ICL system message; drafts, in sample order, are the proposals."""
    engine = FakeEngine(handler=drafts_handler)
    sampling = SamplingParams(temperature=0.9, top_p=0.8, max_tokens=64)
    items = await collect(build_on_policy(engine, read_preferences(UF), k=2, seed=3, sampling=sampling))
    examples = [i for i in items if isinstance(i, Example)]
    assert [s.reason for s in items if isinstance(s, Skip)] == ["missing score"]
    assert len(examples) == len(engine.requests) == 4
    icl = PromptTemplate("aft_icl_propose").render(system=None, references=[])
    raw = raw_records(UF)
    for example, request in zip(examples, engine.requests, strict=True):
        instruction = raw[example.source.line - 1]["instruction"]
        assert list(request.messages) == [Message("system", icl), Message("user", instruction)]
        assert (request.sampling.n, request.sampling.temperature, request.sampling.max_tokens) == (2, 0.9, 64)
        assert request.sampling.seed is not None
        drafts = [f"draft {i} of {instruction}" for i in range(2)]
        assert example.messages[0].content == reference_aggregation_system(drafts)
        assert example.target == best_response(raw[example.source.line - 1])
    assert len({r.sampling.seed for r in engine.requests}) == 4


async def test_records_with_too_few_drafts_are_skipped() -> None:
    """Drafts with no text are dropped; a record left with fewer than k is skipped as 'too few drafts'."""
    engine = FakeEngine(handler=lambda request, index: "" if index == 0 else "text")
    records = [r for r in read_preferences(BINARIZED) if not isinstance(r, Skip)]
    items = await collect(build_on_policy(engine, records, k=2))
    assert [(i.reason, i.detail) for i in items if isinstance(i, Skip)] == [
        ("too few drafts", "1 of 2 drafts have text")
    ] * 3


async def test_on_policy_resumes_from_the_draft_cache(tmp_path: Path) -> None:
    """Drafts are kept as they finish: a rerun drafts only the record that failed, and a torn line is cut."""
    cache = tmp_path / "out.drafts.jsonl"
    records = [r for r in read_preferences(BINARIZED) if not isinstance(r, Skip)]

    def flaky(request: ChatRequest, index: int) -> str:
        if "synonym" in request.messages[-1].content:
            raise RuntimeError("out of memory")
        return drafts_handler(request, index)

    first = await collect(build_on_policy(FakeEngine(handler=flaky), records, k=2, cache=cache))
    assert [i.reason for i in first if isinstance(i, Skip)] == ["drafting engine failed"]
    with cache.open("a") as handle:
        handle.write('{"key": "torn')
    engine = FakeEngine(handler=drafts_handler)
    second = await collect(build_on_policy(engine, records, k=2, cache=cache))
    assert [r.messages[-1].content for r in engine.requests] == ["Give me a synonym for 'happy'."]
    assert [i.source.line for i in second if isinstance(i, Example)] == [1, 2, 3]
    assert [e.messages for e in first if isinstance(e, Example)] == [
        e.messages for e in second if isinstance(e, Example) and e.source.line != 2
    ]
    assert all(json.loads(line) for line in cache.read_text().splitlines())
    other = FakeEngine(handler=drafts_handler)
    await collect(build_on_policy(other, records, k=2, seed=9, cache=cache))
    assert len(other.requests) == 3  # another seed: the stored drafts are not reused


def test_a_draft_cache_refuses_a_foreign_file_naming_the_line(tmp_path: Path) -> None:
    """A draft cache over a file of other JSON lines is an InputError at FILE:LINE; nothing is added."""
    path = drafts_path(tmp_path / "o.jsonl")
    assert path == tmp_path / "o.jsonl.drafts.jsonl"
    entry = {"key": "id 1", "part": "drafts", "settings": "abc", "value": ["d"]}
    path.write_text(json.dumps(entry) + "\n\n" + '{"not": "ours"}\n')
    with pytest.raises(InputError) as info:
        DraftCache(path).open()
    assert info.value.where == f"{path}:3"
    assert "not a draft cache" in info.value.message
    assert path.read_text().count("\n") == 3
    path.write_text(json.dumps(entry) + "\n")
    cache = DraftCache(path)
    cache.open()
    try:
        assert len(cache) == 1
        assert cache.get("id 1", "drafts", "abc") == ["d"]
        assert cache.get("id 1", "drafts", "other settings") is None
    finally:
        cache.close()


def test_on_policy_cli_with_fake_configs_and_an_engine_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """on-policy --config drafts with the first agent; --target engine takes prompt-only records."""
    drafts = tmp_path / "drafts.yaml"
    drafts.write_text(
        "engines:\n  base: {type: fake}\n"
        "agents:\n  draft: {engine: base, sampling: {n: 5, temperature: 0.6, max_tokens: 32}}\n"
        "  final: {role: aggregator, engine: base}\nlayers: [[draft]]\nfinal: final\n"
    )
    target = tmp_path / "target.yaml"
    target.write_text(
        "engines:\n  strong: {type: fake}\n"
        "agents:\n  p: {engine: strong}\n"
        "  judge: {role: aggregator, engine: strong, template: moa_aggregate}\n"
        "layers: [[p]]\nfinal: judge\n"
    )
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"query": [{"role": "user", "content": "hi"}]}, {"instruction": "Name a colour."}, {"nope": 1}],
    )
    out = tmp_path / "onpolicy.jsonl"
    args = ["--input", str(prompts), "--output", str(out), "--config", str(drafts), "--k", "3"]
    status = main(["data", "on-policy", *args, "--target", "engine", "--target-config", str(target)])
    assert status == 0, capsys.readouterr().err
    rows = read_jsonl(out)
    assert [r["messages"][1]["content"] for r in rows] == ["hi", "Name a colour."]
    assert all(r["messages"][-1]["content"].startswith("strong answer") for r in rows)
    card = DataCard.read(card_path(out))
    assert card.skipped == {"unrecognised layout": 1}
    assert card.sources["drafts"]["temperature"] == 0.6
    assert card.sources["drafts"]["template"] == "aft_icl_propose"
    assert card.sources["target"]["template"] == "moa_aggregate"
    assert (tmp_path / "onpolicy.jsonl.drafts.jsonl").is_file()


def test_on_policy_needs_a_drafter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """on-policy without --config or --model is a usage error: exit 2 and a line naming both options."""
    assert main(["data", "on-policy", "--input", str(UF), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "one of the options --config or --model is required" in capsys.readouterr().err


# --- traces -------------------------------------------------------------------------------------------


async def traced_run(tmp_path: Path, source: Path, handler: Any) -> Path:
    engine = FakeEngine(handler=handler)
    topology = Topology([Proposer(engine, sampling=SamplingParams(n=2))], Aggregator(engine))
    out = tmp_path / "traced.jsonl"
    await Runner(topology, source, out, trace=True, concurrency=4).run()
    return out


def answer_handler(request: ChatRequest, index: int) -> str:
    role = "agg" if "aggregator" in request.messages[0].content else "prop"
    turns = sum(m.role == "user" for m in request.messages)
    return f"{role} {index} turn {turns}"


async def test_traces_give_one_example_per_turn(tmp_path: Path) -> None:
    """An MT-Bench trace gives two examples; the second turn's conversation holds the first answer."""
    traced = await traced_run(tmp_path, DATA / "mt_bench_2.jsonl", answer_handler)
    raw = raw_records(DATA / "mt_bench_2.jsonl")
    items = list(examples_from_trace(traced))
    assert all(isinstance(i, Example) for i in items)
    assert len(items) == 4
    for i, example in enumerate(items):
        assert isinstance(example, Example)
        turns = raw[i // 2]["turns"]
        turn = i % 2 + 1
        expected = [Message("user", turns[0])]
        if turn == 2:
            expected += [Message("assistant", "agg 0 turn 1"), Message("user", turns[1])]
        assert list(example.messages[1:-1]) == expected
        assert example.messages[0].content == reference_aggregation_system(
            [f"prop 0 turn {turn}", f"prop 1 turn {turn}"]
        )
        assert example.target == f"agg 0 turn {turn}"


async def test_failed_run_records_are_skipped_and_counted(tmp_path: Path) -> None:
    """Trace lines with status 'error' become 'run failed' skips; lines without a trace 'no trace'."""

    def handler(request: ChatRequest, index: int) -> str:
        if "Broadway" in request.messages[-1].content:
            raise RuntimeError("boom")
        return answer_handler(request, index)

    source = write_jsonl(tmp_path / "in.jsonl", read_jsonl(DATA / "alpaca_eval_20.jsonl")[:3])
    traced = await traced_run(tmp_path, source, handler)
    with traced.open("a") as handle:
        handle.write(
            json.dumps({"id": 9, "query": [{"role": "user", "content": "x"}], "status": "done"}) + "\n"
        )
    out = tmp_path / "distilled.jsonl"
    card = await write_dataset(out, examples_from_trace(traced))
    assert card.examples == {"aggregation": 2, "direct": 0}
    assert card.skipped == {"run failed": 1, "no trace": 1}
    assert "boom" in card.skipped_examples["run failed"][0]["detail"]


def test_from_trace_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`aftlib data from-trace` on the output of `aftlib run --trace` writes the examples and the card."""
    traced = tmp_path / "run.jsonl"
    config = Path(__file__).parents[1] / "examples" / "configs" / "dry_run.yaml"
    args = ["--config", str(config), "--input", str(DATA / "mt_bench_2.jsonl"), "--output", str(traced)]
    rc = main(["run", *args, "--trace"])
    assert rc == 0
    out = tmp_path / "distilled.jsonl"
    assert (
        main(["data", "from-trace", "--input", str(traced), "--output", str(out), "--direct-ratio", "1"]) == 0
    )
    rows = read_jsonl(out)
    assert [r["kind"] for r in rows] == ["aggregation", "direct"] * 4
    run = read_jsonl(traced)
    for row in rows[::2]:
        record = next(r for r in run if r["id"] == int(row["source"]["id"]))
        assert row["messages"][-1]["content"] in record["responses"]
        drafts = row["messages"][0]["content"].split("Responses from models:\n", 1)[1]
        assert drafts.count("\n") == 4  # the 5 samples of the last layer
    assert card_path(out).is_file()


# --- one builder of messages --------------------------------------------------------------------------


async def test_the_same_inputs_give_the_same_example_on_every_path(tmp_path: Path) -> None:
    """An off-policy example and a trace with the same conversation, drafts and answer are identical."""
    (example,) = [
        i
        for i in await collect(build_off_policy(read_preferences(BINARIZED), k=2, seed=0))
        if isinstance(i, Example) and i.source.line == 1
    ]
    drafts = example.messages[0].content.split("Responses from models:\n", 1)[1].split("\n")
    trace_line = {
        "id": 1,
        "query": [{"role": "user", "content": example.messages[1].content}],
        "status": "done",
        "response": example.target,
        "trace": [
            {
                "layers": [[{"agent": "p", "index": i, "text": d[3:]} for i, d in enumerate(drafts)]],
                "answer": {"agent": "a", "index": 0, "text": example.target},
            }
        ],
    }
    (from_trace,) = examples_from_trace(write_jsonl(tmp_path / "t.jsonl", [trace_line]))
    assert isinstance(from_trace, Example)
    assert from_trace.messages == example.messages
    assert from_trace.to_json()["messages"] == example.to_json()["messages"]
    assert list(example.messages) == aggregation_example(
        [{"role": "user", "content": example.messages[1].content}], [d[3:] for d in drafts], example.target
    )


def test_example_builders_refuse_empty_targets_and_missing_drafts() -> None:
    """aggregation_example needs drafts and a target; direct_example keeps a conversation's system message."""
    with pytest.raises(InputError, match="at least one draft"):
        aggregation_example("q", [], "t")
    with pytest.raises(InputError, match="target is empty"):
        aggregation_example("q", ["d"], "  ")
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]
    assert direct_example(conversation, "t") == [*conversation, {"role": "assistant", "content": "t"}]


def test_icl_template_renders_its_demonstrations() -> None:
    """aft_icl_propose is a built-in template: a system message with demonstrations, the user's own first."""
    assert "aft_icl_propose" in builtin_templates()
    template = PromptTemplate("aft_icl_propose")
    system, user = template.messages([Message("user", "What is 2+2?")], [])
    assert user == Message("user", "What is 2+2?")
    assert system.role == "system"
    assert system.content.count("# User:") == 3
    assert system.content.count("# Assistant:") == 3
    own = template.messages([Message("system", "Answer in French."), Message("user", "q")], [])
    assert own[0].content.startswith("Answer in French.\n\nBelow are conversations")


# --- the dataset file and the card --------------------------------------------------------------------


def test_dataset_loads_with_datasets_as_chat_messages(tmp_path: Path) -> None:
    """The JSONL loads with datasets.load_dataset('json') with one schema: messages, kind, source."""
    import datasets

    out = tmp_path / "agg.jsonl"
    assert (
        main(
            [
                "data",
                "off-policy",
                "--input",
                str(UF),
                "--output",
                str(out),
                "--k",
                "2",
                "--direct-ratio",
                "1",
            ]
        )
        == 0
    )
    table = datasets.load_dataset("json", data_files=str(out), split="train")
    assert table.num_rows == 8
    assert table.column_names == ["messages", "kind", "source"]
    assert table[1]["messages"][0] == {"role": "system", "content": "\n"}
    assert table[0]["source"] == {"file": str(UF), "line": 1, "id": "1"}


async def test_card_counts_tokens_with_a_tokenizer(tmp_path: Path, tiny_model: Path) -> None:
    """With a tokenizer, the card's target lengths are the tokenizer's counts of the targets."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    out = tmp_path / "agg.jsonl"
    card = await write_dataset(
        out, build_off_policy(read_preferences(UF), k=3), sources={"k": 3}, tokenizer=str(tiny_model)
    )
    targets = [
        len(tokenizer.encode(r["messages"][-1]["content"], add_special_tokens=False)) for r in read_jsonl(out)
    ]
    stats = card.lengths["aggregation"]["target"]
    assert (stats["count"], stats["min"], stats["max"]) == (3, min(targets), max(targets))
    assert stats["mean"] == round(sum(targets) / 3, 2)
    assert card.length_unit.startswith("tokens (")
    assert card.lengths["aggregation"]["prompt"]["min"] > 100
    assert DataCard.read(card_path(out)) == card


async def test_a_failed_build_leaves_the_previous_dataset(tmp_path: Path) -> None:
    """An error while building removes the partial file and keeps the earlier dataset untouched."""
    out = tmp_path / "agg.jsonl"
    out.write_text("old\n")

    def items() -> Iterable[Example | Skip]:
        yield from (i for i in [])
        raise InputError("broken array", where="x.json")

    with pytest.raises(InputError):
        await write_dataset(out, items())
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agg.jsonl"]  # noqa: ASYNC240


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Missing input, output over input, --target engine without a config, k=0: exit 2, one clear line."""
    out = str(tmp_path / "o.jsonl")
    cases = [
        (["--input", str(tmp_path / "nope.jsonl"), "--output", out], "nope.jsonl: no such input file"),
        (["--input", str(UF), "--output", str(UF)], "the output file is the input file"),
        (
            ["--input", str(UF), "--output", out, "--target", "engine"],
            "--target engine needs --target-config",
        ),
        (["--input", str(UF), "--output", out, "--k", "0"], "k must be an integer of at least 1"),
    ]
    for args, message in cases:
        assert main(["data", "off-policy", *args]) == 2
        err = capsys.readouterr().err
        assert message in err
        assert "Traceback" not in err


async def test_config_errors_name_the_parameter() -> None:
    """Builder parameters are checked before any record is read: a bad k or ratio is a ConfigError."""
    with pytest.raises(ConfigError, match="k must"):
        await collect(build_off_policy(read_preferences(UF), k=0))
    with pytest.raises(ConfigError, match="direct_ratio"):
        await collect(build_on_policy(FakeEngine(), read_preferences(UF), direct_ratio=-0.5))


def test_model_option_drafts_on_a_vllm_engine_with_cli_sampling(tmp_path: Path) -> None:
    """on-policy --model builds (without starting) a vLLM engine of that folder; sampling flags override."""
    from aftlib.cli._data import _drafter, _namespace, on_policy
    from aftlib.engines import VLLMEngine

    args = ["--input", str(UF), "--output", str(tmp_path / "o.jsonl")]
    options = ["--model", str(tmp_path / "base"), "--max-model-len", "4096", "--top-p", "0.5"]
    with on_policy.make_context("on-policy", [*args, *options]) as ctx:
        engine, sampling, lora, topology = _drafter(_namespace("on-policy", ctx.params))
    assert isinstance(engine, VLLMEngine)
    assert (engine.model, engine.engine_args, engine.name) == (
        str(tmp_path / "base"),
        {"max_model_len": 4096},
        "base",
    )
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (0.7, 0.5, 1024)
    assert (lora, topology) == (None, None)


def test_a_file_that_is_not_a_draft_cache_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A draft cache path holding something else stops the run with exit 2 naming the file and line."""
    out = tmp_path / "o.jsonl"
    (tmp_path / "o.jsonl.drafts.jsonl").write_text('{"not": "ours"}\n')
    config = Path(__file__).parents[1] / "examples" / "configs" / "dry_run.yaml"
    args = ["--input", str(UF), "--output", str(out), "--config", str(config), "--k", "2"]
    assert main(["data", "on-policy", *args]) == 2
    assert "o.jsonl.drafts.jsonl:1: not a draft cache" in capsys.readouterr().err
