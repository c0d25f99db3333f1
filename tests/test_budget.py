"""Context budget: aggregation prompts are fitted to the engine's context, every cut recorded."""

from __future__ import annotations

import pytest

from aftlib import ChatRequest, ContextLengthError, Proposer, QuorumError, SamplingParams, Topology, presets
from aftlib._budget import TRUNCATION_MARKER, fair_shares
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio


def test_fair_shares_cut_the_longest_first() -> None:
    """Short lengths stay whole; the longest are lowered to a common level that fills the budget."""
    assert fair_shares([10, 100, 1000], 300) == [10, 100, 190]
    assert fair_shares([10, 400, 1000], 300) == [10, 145, 145]
    assert fair_shares([50, 60], 500) == [50, 60]
    assert sum(fair_shares([7, 300, 301, 5], 100)) <= 100


def lengths_by_index(request: ChatRequest, index: int) -> str:
    """Proposals of 5, 80 and 120 words; aggregations of 3 words."""
    if request.messages[0].content == "\n":
        return " ".join(f"w{index}x{k}" for k in range(5 if index == 0 else 40 * (index + 1)))
    return "short aggregated answer"


async def test_references_are_cut_to_fit_and_recorded() -> None:
    """With a 200-token context, the long drafts are cut (marked), the short one kept, and it all fits."""
    engine = FakeEngine(handler=lengths_by_index, context_window=200)
    result = await presets.aft(engine, n=3, num_aggregation=2, max_tokens=100).run("q")
    aggregation = engine.requests[1]
    prompt = engine.count_tokens(aggregation.messages)
    assert prompt + aggregation.sampling.max_tokens <= 200
    assert aggregation.sampling.max_tokens >= 50, "room for the answer is kept"
    system = aggregation.messages[0].content
    assert result.layers[0].texts[0] in system, "the short draft is kept whole"
    assert system.count(TRUNCATION_MARKER) == 2
    cuts = result.layers[1].candidates[0].cuts
    assert [(c.reference, c.tokens) for c in cuts] == [(1, 80), (2, 120)]
    assert cuts[0].kept == cuts[1].kept < 80
    assert result.layers[0].candidates[0].cuts == ()


async def test_fitting_prompts_are_sent_unchanged() -> None:
    """When everything fits, references are not touched and max_tokens stays as asked."""
    engine = FakeEngine(context_window=10_000)
    result = await presets.aft(engine, n=2, max_tokens=64).run("q")
    assert all(r.sampling.max_tokens == 64 for r in engine.requests)
    assert all(c.cuts == () for layer in result.layers for c in layer.candidates)


async def test_max_tokens_is_lowered_when_the_prompt_is_long() -> None:
    """A proposal whose prompt leaves less room than max_tokens gets max_tokens lowered to the room left."""
    engine = FakeEngine(context_window=60)
    await Topology([], Proposer(engine, sampling=SamplingParams(max_tokens=100))).run(" ".join(["word"] * 30))
    (request,) = engine.requests
    assert request.sampling.max_tokens == 60 - engine.count_tokens(request.messages)


async def test_a_prompt_that_cannot_fit_is_a_context_length_error() -> None:
    """A conversation longer than the context fails clearly before any generation.

    The layer's QuorumError names the agent and chains the ContextLengthError.
    """
    engine = FakeEngine(context_window=20)
    with pytest.raises(QuorumError, match=r"proposer ContextLengthError: .*context is 20") as info:
        await presets.aft(engine).run(" ".join(["word"] * 50))
    assert isinstance(info.value.__cause__, ContextLengthError)
    assert engine.requests == []
