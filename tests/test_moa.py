"""Mixture-of-Agents presets on FakeEngines: the Together MoA requests, Self-MoA and Self-MoA-Seq."""

from __future__ import annotations

import pytest

from aftlib import ChatRequest, ConfigError, presets
from aftlib.testing import FakeEngine

from .test_templates import MOA_INSTRUCTION

pytestmark = pytest.mark.anyio

CONVERSATION = [{"role": "user", "content": "Plan a picnic."}]


def moa_system(references: list[str]) -> str:
    """The Together MoA aggregation system prompt, built as Together's code builds it."""
    return MOA_INSTRUCTION + "".join(f"\n{i + 1}. {r}" for i, r in enumerate(references))


def named(name: str) -> FakeEngine:
    return FakeEngine(name=name, handler=lambda request, i: f"{name} says {len(request.messages[0].content)}")


async def test_moa_three_layers_sends_the_together_requests() -> None:
    """moa([e1, e2, e3], agg, layers=3): conversation unchanged, then MoA prompt over layer 1, then agg."""
    proposers = [named("e1"), named("e2"), named("e3")]
    aggregator = named("agg")
    result = await presets.moa(proposers, aggregator, layers=3).run(CONVERSATION)

    layer1 = [c.text for c in result.layers[0].candidates]
    layer2 = [c.text for c in result.layers[1].candidates]
    for engine in proposers:
        first, second = engine.requests
        assert first.messages == CONVERSATION
        assert (first.sampling.n, first.sampling.temperature) == (1, 0.7)
        assert second.messages == [{"role": "system", "content": moa_system(layer1)}, *CONVERSATION]
    (final,) = aggregator.requests
    assert final.messages == [{"role": "system", "content": moa_system(layer2)}, *CONVERSATION]
    assert result.text == result.answer.text
    assert result.text.startswith("agg says")
    assert [c.agent for c in result.layers[1].candidates] == ["proposer1", "proposer2", "proposer3"]


async def test_moa_keeps_the_users_system_message_first() -> None:
    """With a system message, the MoA block is appended to it after a blank line; layer 1 keeps it as is."""
    engine = named("e")
    conversation = [{"role": "system", "content": "Answer in French."}, *CONVERSATION]
    result = await presets.moa_lite([engine], named("agg")).run(conversation)
    assert engine.requests[0].messages == conversation
    assert len(result.layers) == 1


async def test_self_moa_samples_k_drafts_in_one_request() -> None:
    """self_moa(engine, k=4): one request with n=4, then one aggregation over the 4 drafts."""
    engine = FakeEngine()
    result = await presets.self_moa(engine, 4).run(CONVERSATION)
    drafts, final = engine.requests
    assert drafts.sampling.n == 4
    assert drafts.messages == CONVERSATION
    assert final.messages[0].content == moa_system(result.layers[0].texts)


async def test_self_moa_seq_carries_a_running_synthesis() -> None:
    """self_moa_seq(k=5, window=3): drafts 1-3, then synthesis + 4-5; only the last deltas are the answer."""

    def handler(request: ChatRequest, index: int) -> str:
        if request.sampling.n == 5:
            return f"d{index + 1}"
        return f"synthesis of {request.messages[0].content.count(chr(10))} lines"

    engine = FakeEngine(handler=handler)
    events: list[object] = []
    result = await presets.self_moa_seq(engine, 5, 3).run(CONVERSATION, on_event=events.append)
    _, first, second = engine.requests
    assert first.messages[0].content == moa_system(["d1", "d2", "d3"])
    synthesis = "synthesis of 5 lines"
    assert second.messages[0].content == moa_system([synthesis, "d4", "d5"])
    answer = "".join(getattr(e, "text", "") for e in events if getattr(e, "is_answer", False))
    assert answer == result.text
    assert result.usage.requests == 3


async def test_shuffled_references_are_seeded_per_conversation() -> None:
    """shuffle=seed permutes an aggregation's references, the same way for the same conversation."""
    engines = [named(f"e{i}") for i in range(6)]
    aggregator = named("agg")
    topology = presets.moa(engines, aggregator, layers=2, shuffle=3)
    await topology.run(CONVERSATION)
    await topology.run(CONVERSATION)
    first, again = (r.messages[0].content for r in aggregator.requests)
    assert first == again
    drafts = [f"e{i} says 14" for i in range(6)]
    assert first != moa_system(drafts)
    listed = [line.split(". ", 1)[1] for line in first.split("Responses from models:\n")[1].splitlines()]
    assert sorted(listed) == drafts


def test_moa_bad_parameters() -> None:
    """No proposers, too few layers, or a window below 2 are ConfigErrors."""
    with pytest.raises(ConfigError, match="at least one proposer"):
        presets.moa([], FakeEngine())
    with pytest.raises(ConfigError, match="at least 2 layers"):
        presets.moa([FakeEngine()], FakeEngine(), layers=1)
    with pytest.raises(ConfigError, match="window must be at least 2"):
        presets.self_moa_seq(FakeEngine(), 4, 1)


def test_generations_per_query_counts_every_window() -> None:
    """Self-MoA-Seq with k=6, window=3 generates 6 drafts and 3 window aggregations."""
    assert presets.self_moa_seq(FakeEngine(), 6, 3).generations_per_query == 9
    assert presets.self_moa_seq(FakeEngine(), 3, 3).generations_per_query == 4
    assert presets.self_moa(FakeEngine(), 6).generations_per_query == 7


async def test_sequential_shuffle_orders_the_drafts_once() -> None:
    """With shuffle, the drafts are permuted once; the running synthesis always comes first."""
    from aftlib import SequentialAggregator, Topology

    def handler(request: ChatRequest, index: int) -> str:
        return f"d{index}" if request.sampling.n == 6 else "SYN"

    engine = FakeEngine(handler=handler)
    final = SequentialAggregator(engine, template="moa_aggregate", window=3, shuffle=5)
    drafts = presets.self_moa(engine, 6).layers[0]
    await Topology([drafts], final).run(CONVERSATION)
    seen = []
    for request in engine.requests[1:]:
        listed = [
            line.split(". ", 1)[1] for line in request.messages[0].content.split("models:\n")[1].splitlines()
        ]
        seen.append(listed)
    assert [row[0] == "SYN" for row in seen] == [False, True, True]
    drafts_read = [d for row in seen for d in row if d != "SYN"]
    assert sorted(drafts_read) == [f"d{i}" for i in range(6)]
    assert drafts_read != [f"d{i}" for i in range(6)]


def test_a_sequential_aggregator_refuses_a_reference_subset() -> None:
    """A subset on a sequential aggregator would draw from each window, not from the layer: refused."""
    from aftlib import SequentialAggregator, Subset

    with pytest.raises(ConfigError, match="would apply to each window, not to the layer"):
        SequentialAggregator(FakeEngine(), window=3, references=Subset(k=2))
