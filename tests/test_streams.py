"""Streams own their tasks: slow consumers, failing layers, early exits, timeouts that count engine time."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TypeVar

import anyio
import pytest

from aftlib import (
    AnswerDone,
    ChatRequest,
    EngineTimeoutError,
    Event,
    Layer,
    Message,
    Proposer,
    QuorumError,
    RateLimitError,
    TokenDelta,
    Topology,
    presets,
)
from aftlib.engines import LimitedEngine, RetryingEngine, StreamItem
from aftlib.testing import FakeEngine

from .conftest import run_fresh, run_mocked

T = TypeVar("T")

LONG = " ".join(f"word{i}" for i in range(40))


def fast_engine() -> FakeEngine:
    return FakeEngine(handler=lambda request, index: LONG)


class CountingEngine(FakeEngine):
    """A FakeEngine that counts the stream items it has produced."""

    produced: int = 0

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        async with aclosing(super()._stream(request)) as items:
            async for item in items:
                self.produced += 1
                yield item


def failing_layer_topology() -> Topology:
    """Two proposers, one of which always fails, in a layer that needs both."""
    good = fast_engine()
    bad = FakeEngine(name="bad", faults=lambda number, request: "raise")
    layer = Layer([Proposer(good, name="good"), Proposer(bad, name="bad")])
    return Topology([layer], Proposer(good, name="final"))


async def slow_on_event_with_retry_timeout() -> str:
    engine = RetryingEngine(fast_engine(), timeout=0.2, backoff=0.0)
    topology = presets.aft(engine, n=1, num_aggregation=1, max_tokens=64)
    tokens = 0

    async def slow(event: Event) -> None:
        nonlocal tokens
        if isinstance(event, TokenDelta):
            tokens += 1
            await anyio.sleep(0.05)

    result = await topology.run("q", on_event=slow)
    assert tokens >= 2 * 40, "every draft and answer token reached the callback"
    return result.text


def test_a_slow_on_event_consumer_does_not_time_out_a_fast_engine() -> None:
    """With RetryingEngine(timeout=0.2), a callback awaiting 50 ms per token still completes (>2 s waits).

    On a mock clock: the waits are the test's seconds, not the machine's.
    """
    assert run_mocked(slow_on_event_with_retry_timeout) == LONG


async def consume(topology: Topology, delay: float) -> tuple[BaseException, int]:
    seen = 0
    try:
        async with topology.stream("q") as events:
            async for _ in events:
                seen += 1
                await anyio.sleep(delay)
    except BaseException as exc:  # the test compares what escapes
        return exc, seen
    raise AssertionError("the failing layer did not fail the stream")


async def both_speeds() -> list[tuple[BaseException, int]]:
    return [await consume(failing_layer_topology(), delay) for delay in (0.0, 0.02)]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_failing_layer_raises_the_same_quorum_error_whatever_the_consumer_speed(backend: str) -> None:
    """A fast and a slow consumer of stream() both get a plain QuorumError naming the failed agent.

    On asyncio for real, and on trio under a mock clock, where the slow consumer's waits are exact.
    """
    outcomes = run_fresh(both_speeds, backend=backend) if backend == "asyncio" else run_mocked(both_speeds)
    for error, _ in outcomes:
        assert type(error) is QuorumError, repr(error)
        assert "injected fault" in str(error.__cause__)  # the failing engine's error stays the cause
        assert "bad" in str(error)
        assert [(f.agent, f.reason) for f in error.failures if f.reason == "error"] == [("bad", "error")]
    assert str(outcomes[0][0]) == str(outcomes[1][0])


def test_the_event_buffer_is_bounded_and_a_slow_consumer_holds_the_run_back() -> None:
    """With buffer=4, a consumer that stops reading leaves the engine a few items ahead, not the answer."""

    async def scenario() -> None:
        engine = CountingEngine(handler=lambda request, index: LONG)
        topology = Topology([], Proposer(engine, name="only"))
        async with topology.stream("q", buffer=4) as events:
            async for _ in events:
                await anyio.sleep(0.2)  # the producer runs meanwhile, until the buffers fill
                break
        assert 0 < engine.produced < 20, engine.produced
        assert engine.in_flight == 0

    run_mocked(scenario)


def test_a_layer_timeout_counts_engine_time_not_the_consumers() -> None:
    """A layer with timeout=0.3 and a consumer taking 1.5 s for its events still gets every candidate."""

    async def scenario() -> None:
        engine = FakeEngine(handler=lambda request, index: "one two three four five six")
        layer = Layer([Proposer(engine, name="a"), Proposer(engine, name="b")], timeout=0.3)
        topology = Topology([layer], Proposer(engine, name="final"))
        events: list[Event] = []

        async def slow(event: Event) -> None:
            events.append(event)
            if isinstance(event, TokenDelta) and event.layer == 0:
                await anyio.sleep(0.12)

        result = await topology.run("q", on_event=slow)
        assert result.failures == ()
        assert len(result.layers[0].candidates) == 2
        assert isinstance(events[-1], AnswerDone)

    run_mocked(scenario)


def test_a_retrying_stream_times_out_when_the_engine_itself_is_slow() -> None:
    """The pausable timeout still fires for engine time: a hanging stream becomes EngineTimeoutError."""

    async def scenario() -> None:
        hangs = FakeEngine(faults=lambda number, request: "hang")
        engine = RetryingEngine(hangs, attempts=2, timeout=0.05, backoff=0.0)

        async def drain() -> None:
            async with engine.stream(ChatRequest([Message("user", "q")])) as items:
                async for _ in items:
                    pass

        with pytest.raises(EngineTimeoutError, match=r"no answer within 0\.05s"):
            await drain()
        assert hangs.arrivals == 2
        assert hangs.in_flight == 0

    run_mocked(scenario)


def test_retry_after_from_the_server_is_honoured() -> None:
    """A RateLimitError carrying retry_after waits that long before the next attempt, not the backoff."""

    async def scenario() -> None:
        calls: list[float] = []

        class Limited(FakeEngine):
            async def generate(self, request: ChatRequest):  # type: ignore[no-untyped-def]
                calls.append(anyio.current_time())
                if len(calls) == 1:
                    raise RateLimitError("slow down", retry_after=0.3, status=429)
                return await super().generate(request)

        engine = RetryingEngine(Limited(), attempts=2, backoff=0.0)
        await engine.generate(ChatRequest([Message("user", "q")]))
        assert len(calls) == 2
        assert calls[1] - calls[0] >= 0.29

    run_mocked(scenario)


@pytest.mark.anyio
async def test_a_limited_engine_keeps_at_most_k_requests_in_flight() -> None:
    """LimitedEngine(max_in_flight=2) over 6 concurrent requests: the inner engine never sees more than 2."""
    inner = FakeEngine(latency=0.05)
    engine = LimitedEngine(inner, max_in_flight=2)
    request = ChatRequest([Message("user", "q")])

    async def streamed() -> None:
        async with engine.stream(request) as items:
            async for _ in items:
                pass

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(engine.generate, request)
            tg.start_soon(streamed)
    assert inner.peak_in_flight == 2
    assert len(inner.requests) == 6
    assert (engine.in_flight, engine.waiting) == (0, 0)
