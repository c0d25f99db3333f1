"""Answer-level aggregation: votes, reference subsets, Recursive Self-Aggregation and early exit."""

from __future__ import annotations

from collections import Counter

import pytest

from aftlib import (
    AnswerDone,
    AnswerExtractor,
    ConfigError,
    EarlyExit,
    Event,
    Layer,
    NoAnswerError,
    Proposer,
    SamplingParams,
    Subset,
    TokenDelta,
    Topology,
    Vote,
    presets,
)
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio

DRAFTS = [
    "3 apples and 4 apples make 7. #### 7",
    "Adding them gives 8. #### 8",
    "So the total is 7.\n#### 7",
    "No idea.",
    "The answer is 8",
    "7 + 0 = #### 7",
]


def scripted(drafts: list[str]) -> FakeEngine:
    """An engine whose n samples are the drafts, in order."""
    return FakeEngine(name="drafts", handler=lambda request, index: drafts[index])


async def test_vote_returns_the_majority_draft_and_its_counts() -> None:
    """Three 7s beat two 8s; the first draft holding 7 comes out whole; counts and agreement recorded."""
    engine = scripted(DRAFTS)
    topology = Topology([Layer(Proposer(engine, sampling=SamplingParams(n=6)))], Vote())
    result = await topology.run("How many apples?")
    assert result.text == DRAFTS[0]
    details = result.answer.details
    assert details["votes"] == {"7": 3, "8": 2}
    assert details["answer"] == "7"
    assert details["no_answer"] == 1
    assert details["agreement"] == pytest.approx(0.5)
    assert details["chosen"] == 0
    assert len(engine.requests) == 1  # the vote itself asks no engine
    assert result.answer_usage.requests == 0


async def test_a_tie_goes_to_the_answer_seen_first() -> None:
    """8 and 7 twice each: the answer whose first draft comes first wins (stated, deterministic)."""
    drafts = ["#### 8", "#### 7", "#### 7", "#### 8"]
    topology = Topology([[Proposer(scripted(drafts), sampling=SamplingParams(n=4))]], Vote())
    result = await topology.run("q")
    assert (result.text, result.answer.details["chosen"]) == ("#### 8", 0)


async def test_a_vote_with_no_answer_fails_or_falls_back_as_configured() -> None:
    """No candidate has an answer: NoAnswerError by default; with on_no_answer='first', the first draft."""
    drafts = ["no idea", "none at all"]
    extractor = AnswerExtractor(strategies=("####",))
    layer = [Proposer(scripted(drafts), sampling=SamplingParams(n=2))]
    with pytest.raises(NoAnswerError, match="none of the 2 candidates has an answer"):
        await Topology([layer], Vote(extractor=extractor)).run("q")
    result = await Topology([layer], Vote(extractor=extractor, on_no_answer="first")).run("q")
    assert result.text == "no idea"
    assert result.answer.details["fallback"] == "first"


async def test_a_final_vote_streams_its_answer_as_answer_deltas() -> None:
    """Answer deltas concatenate to the result's text, also when the final agent is a vote."""
    topology = Topology([[Proposer(scripted(DRAFTS), sampling=SamplingParams(n=6))]], Vote())
    events: list[Event] = []
    result = await topology.run("q", on_event=events.append)
    answer = "".join(e.text for e in events if isinstance(e, TokenDelta) and e.is_answer)
    assert answer == result.text
    assert isinstance(events[-1], AnswerDone)


def test_a_bad_extractor_regex_and_a_bad_fallback_are_config_errors() -> None:
    """A regex that does not compile and an unknown on_no_answer name the key."""
    with pytest.raises(ConfigError) as info:
        AnswerExtractor(strategies=("regex",), pattern="(unclosed")
    assert info.value.path == "pattern"
    with pytest.raises(ConfigError, match="on_no_answer"):
        Vote(on_no_answer="random")  # type: ignore[arg-type]


async def test_rsa_sends_one_request_per_member_and_reads_seeded_subsets() -> None:
    """rsa(population=8, k=3, steps=2): 1 + 8 + 8 requests; each aggregation reads 3 of 8, reproducibly."""
    engine = FakeEngine(handler=lambda request, index: f"draft {index} #### {index % 3}")
    topology = presets.rsa(engine, population=8, k=3, steps=2)
    first = await topology.run("What is 1 + 1?")
    assert len(engine.requests) == 1 + 8 + 8
    assert [r.sampling.n for r in engine.requests] == [8] + [1] * 16
    for layer in first.layers[1:]:
        assert [c.index for c in layer.candidates] == list(range(8))
        for candidate in layer.candidates:
            assert candidate.read is not None
            assert len(set(candidate.read)) == 3
            assert all(0 <= i < 8 for i in candidate.read)
            prompt = candidate.requests[0].messages[-1].content
            assert prompt.count("Candidate solution ") == 3
    reads = [[c.read for c in layer.candidates] for layer in first.layers[1:]]
    assert len({r for step in reads for r in step}) > 1  # members draw different subsets
    again = await topology.run("What is 1 + 1?")
    assert [[c.read for c in layer.candidates] for layer in again.layers[1:]] == reads
    other = await topology.run("What is 2 + 2?")
    assert [[c.read for c in layer.candidates] for layer in other.layers[1:]] != reads
    assert first.answer.agent == "vote"
    assert topology.generations_per_query == 24


def test_a_subset_larger_than_the_population_is_refused() -> None:
    """K larger than the candidates of the layer before is a ConfigError naming the layer's key."""
    with pytest.raises(ConfigError, match="cannot exceed the population"):
        presets.rsa(FakeEngine(), population=3, k=4)
    engine = FakeEngine()
    drafts = Layer(Proposer(engine, sampling=SamplingParams(n=3)))
    from aftlib import Aggregator

    with pytest.raises(ConfigError, match="reads subsets of 5 references") as info:
        Topology([drafts], Aggregator(engine, references=Subset(5)))
    assert info.value.path == "final.references.subset"


async def test_dropping_references_keeps_at_least_one() -> None:
    """A subset with drop=0.9 reads fewer references, never none, and records which ones."""
    from aftlib import Aggregator

    engine = FakeEngine(handler=lambda request, index: f"text {index}")
    drafts = Layer(Proposer(engine, sampling=SamplingParams(n=6)))
    reader = Aggregator(engine, references=Subset(drop=0.9, seed=1), sampling=SamplingParams(n=4))
    result = await Topology([drafts, Layer(reader)], Aggregator(engine, name="final")).run("q")
    reads = [c.read for c in result.layers[1].candidates]
    assert all(r is not None and 1 <= len(r) < 6 for r in reads)


async def test_early_exit_skips_the_remaining_layers_when_four_of_five_agree() -> None:
    """4 of 5 drafts say 42: the run stops after layer 0, the agreed draft answers, the saving is reported."""
    drafts = ["#### 42", "so #### 42", "#### 41", "I get #### 42", "#### 42 indeed"]
    engine = FakeEngine(handler=lambda request, index: drafts[index] if request.sampling.n == 5 else "x")
    topology = presets.aft(engine, n=5, num_aggregation=3)
    stopping = Topology(topology.layers, topology.final, early_exit=EarlyExit(min_agreement=0.8))
    events: list[Event] = []
    result = await stopping.run("q", on_event=events.append)
    assert len(engine.requests) == 1
    assert result.exit_layer == 0
    assert result.text == "#### 42"
    assert result.saved_generations == 5 + 5 + 1
    assert result.saved_tokens == round(11 * sum(len(d.split()) for d in drafts) / 5)
    assert "".join(e.text for e in events if isinstance(e, TokenDelta) and e.is_answer) == result.text
    not_enough = Topology(topology.layers, topology.final, early_exit=EarlyExit(min_agreement=0.9))
    engine.requests.clear()
    assert (await not_enough.run("q")).exit_layer is None
    assert len(engine.requests) == 4  # proposals, two aggregation layers, the final aggregation


async def test_early_exit_by_exact_text() -> None:
    """With by='text', only identical candidates agree."""
    engine = FakeEngine(handler=lambda request, index: "same" if request.sampling.n == 3 else "final")
    topology = presets.aft(engine, n=3, num_aggregation=2)
    result = await Topology(topology.layers, topology.final, early_exit=EarlyExit(by="text")).run("q")
    assert (result.exit_layer, result.text) == (0, "same")


async def test_a_run_that_exits_early_is_priced_and_counted_without_phantom_agents() -> None:
    """usage_by_agent of an early exit holds only the layers that ran."""
    engine = FakeEngine(handler=lambda request, index: "#### 1")
    topology = presets.aft(engine, n=2, num_aggregation=2)
    result = await Topology(topology.layers, topology.final, early_exit=EarlyExit()).run("q")
    assert list(result.usage_by_agent()) == [(0, "proposer")]


async def test_votes_count_answers_with_a_multiple_choice_extractor() -> None:
    """An extractor of choice letters votes over 'Answer: B' style drafts."""
    drafts = ["Answer: B", "(C) is right", "The answer is (B)", "Answer: C", "B."]
    extractor = AnswerExtractor(strategies=("choice",))
    topology = Topology(
        [[Proposer(scripted(drafts), sampling=SamplingParams(n=5))]], Vote(extractor=extractor)
    )
    result = await topology.run("Which?")
    assert result.answer.details["votes"] == dict(Counter({"B": 3, "C": 2}).most_common())
    assert result.text == "Answer: B"
