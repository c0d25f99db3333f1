"""Layer quorums and timeouts: failed or slow agents, recorded failures, cancelled stragglers."""

from __future__ import annotations

import time

import anyio
import pytest

from aftlib import (
    AgentFailure,
    Aggregator,
    ChatRequest,
    ConfigError,
    Layer,
    Proposer,
    QuorumError,
    SamplingParams,
    Topology,
)
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio


class Hangs:
    """A handler that never answers, counting the requests it holds open."""

    def __init__(self) -> None:
        self.open = 0
        self.cancelled = 0

    async def __call__(self, request: ChatRequest, index: int) -> str:
        self.open += 1
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.open -= 1
        raise AssertionError("unreachable")


def fails(request: ChatRequest, index: int) -> str:
    raise ConnectionError("proposer c is down")


def three_proposers(third: FakeEngine, **policy: object) -> tuple[Topology, FakeEngine]:
    judge = FakeEngine(name="judge", handler=lambda r, i: "final")
    layer = Layer(
        [
            Proposer(FakeEngine(name="a", handler=lambda r, i: "draft a", latency=0.05), name="a"),
            Proposer(FakeEngine(name="b", handler=lambda r, i: "draft b", latency=0.05), name="b"),
            Proposer(third, name="c"),
        ],
        **policy,  # type: ignore[arg-type]
    )
    return Topology([layer], Aggregator(judge)), judge


async def test_one_failing_proposer_of_three_with_quorum_two_completes_and_is_named() -> None:
    """min_candidates=2: the record completes from the two drafts, and the failed agent is recorded."""
    topology, judge = three_proposers(FakeEngine(name="c", handler=fails), min_candidates=2)
    result = await topology.run("q")
    assert result.text == "final"
    assert result.layers[0].texts == ["draft a", "draft b"]
    (failure,) = result.failures
    assert (failure.layer, failure.agent, failure.reason) == (0, "c", "error")
    assert failure.error is not None
    assert "proposer c is down" in failure.error
    assert set(result.layers[0].usage_by_agent) == {"a", "b"}
    system = judge.requests[0].messages[0].content
    assert "1. draft a" in system
    assert "2. draft b" in system
    assert "3." not in system


async def test_one_failing_proposer_of_three_with_quorum_three_fails_clearly() -> None:
    """min_candidates=3 (or the default, all): the record fails at once, naming the failed agent.

    The slower agents, no longer of use, are cancelled.
    """
    for policy in ({"min_candidates": 3}, {}):
        topology, judge = three_proposers(FakeEngine(name="c", handler=fails), **policy)
        with pytest.raises(
            QuorumError, match=r"layer 0 got 0 of the 3 candidates it needs;.* c EngineError"
        ) as info:
            await topology.run("q")
        reasons = [(f.agent, f.reason) for f in info.value.failures]
        assert reasons == [("a", "cancelled"), ("b", "cancelled"), ("c", "error")]
        assert judge.requests == []


async def test_quorum_goes_on_at_once_and_cancels_the_straggler() -> None:
    """Without a timeout the layer goes on when the quorum is in; the hanging agent is cancelled."""
    hangs = Hangs()
    topology, _ = three_proposers(FakeEngine(name="c", handler=hangs), min_candidates=2)
    with anyio.fail_after(5):
        result = await topology.run("q")
    assert result.failures == (AgentFailure(0, "c", "cancelled"),)
    assert (hangs.open, hangs.cancelled) == (0, 1)


async def test_timeout_waits_for_more_then_goes_on_with_the_quorum() -> None:
    """With a timeout the layer waits for the slow agent until then, then goes on with the two drafts."""
    hangs = Hangs()
    topology, _ = three_proposers(FakeEngine(name="c", handler=hangs), min_candidates=2, timeout=0.3)
    start = time.monotonic()
    result = await topology.run("q")
    assert time.monotonic() - start >= 0.3
    assert result.layers[0].texts == ["draft a", "draft b"]
    assert result.failures == (AgentFailure(0, "c", "timeout"),)
    assert (hangs.open, hangs.cancelled) == (0, 1)


async def test_timeout_with_everything_in_early_does_not_wait() -> None:
    """A layer whose agents all answer before the timeout goes on without waiting for it."""
    topology, _ = three_proposers(FakeEngine(name="c", handler=lambda r, i: "draft c"), timeout=30)
    with anyio.fail_after(5):
        result = await topology.run("q")
    assert result.layers[0].texts == ["draft a", "draft b", "draft c"]
    assert result.failures == ()


async def test_timeout_without_the_quorum_fails_and_cancels() -> None:
    """At the timeout, too few candidates fail the record; the late agent is named with reason timeout."""
    hangs = Hangs()
    topology, _ = three_proposers(FakeEngine(name="c", handler=hangs), timeout=0.1)
    with pytest.raises(QuorumError, match="got 2 of the 3") as info:
        await topology.run("q")
    assert info.value.failures == (AgentFailure(0, "c", "timeout"),)
    assert hangs.open == 0


async def test_failures_that_make_the_quorum_unreachable_stop_the_wait() -> None:
    """Once failures leave too few candidates, the layer fails at once instead of waiting for the rest."""
    hangs = Hangs()
    judge = FakeEngine(name="judge")
    layer = Layer(
        [
            Proposer(FakeEngine(name="a", handler=fails), name="a"),
            Proposer(FakeEngine(name="b", handler=fails), name="b"),
            Proposer(FakeEngine(name="c", handler=hangs), name="c"),
        ],
        min_candidates=2,
    )
    with anyio.fail_after(5), pytest.raises(QuorumError) as info:
        await Topology([layer], Aggregator(judge)).run("q")
    assert [(f.agent, f.reason) for f in info.value.failures] == [
        ("a", "error"),
        ("b", "error"),
        ("c", "cancelled"),
    ]
    assert hangs.open == 0


async def test_quorum_counts_samples_not_agents() -> None:
    """An agent with n samples brings n candidates at once toward the quorum."""
    layer = Layer(
        [
            Proposer(FakeEngine(name="a"), name="a", sampling=SamplingParams(n=3)),
            Proposer(FakeEngine(name="b", handler=fails), name="b"),
        ],
        min_candidates=3,
    )
    result = await Topology([layer], Aggregator(FakeEngine(name="judge"))).run("q")
    assert len(result.layers[0].candidates) == 3
    assert [f.agent for f in result.failures] == ["b"]


def test_quorum_and_timeout_are_validated() -> None:
    """min_candidates outside 1..(the layer's candidates) and a non-positive timeout are config errors."""
    agents = [Proposer(FakeEngine(), name="a"), Proposer(FakeEngine(), name="b")]
    with pytest.raises(ConfigError, match="between 1 and the 2 candidates"):
        Layer(agents, min_candidates=3)
    with pytest.raises(ConfigError, match="between 1 and the 2"):
        Layer(agents, min_candidates=0)
    with pytest.raises(ConfigError, match="timeout must be a positive"):
        Layer(agents, timeout=0)
