"""RetryingEngine: transient failures are retried with backoff; others, and late stream errors, are not."""

from __future__ import annotations

import anyio
import pytest

from aftlib import (
    ChatRequest,
    ContextLengthError,
    Delta,
    EngineTimeoutError,
    Message,
    RateLimitError,
    ServerError,
    presets,
)
from aftlib.engines import RetryingEngine
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio

REQUEST = ChatRequest([Message("user", "q")])


def flaky(failures: list[Exception]) -> FakeEngine:
    """An engine that raises the given errors, one per request, then answers."""

    def handler(request: ChatRequest, index: int) -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    return FakeEngine(handler=handler)


async def test_transient_failures_are_retried_until_success() -> None:
    """A rate limit and a server error, then success: three attempts, one answer."""
    inner = flaky([RateLimitError("slow down"), ServerError("HTTP 503")])
    engine = RetryingEngine(inner, attempts=3, backoff=0.001)
    completion = await engine.generate(REQUEST)
    assert completion.samples[0].text == "ok"
    assert len(inner.requests) == 3


async def test_gives_up_after_the_last_attempt() -> None:
    """Still failing after `attempts` tries: the last error is raised."""
    inner = flaky([RateLimitError(str(i)) for i in range(5)])
    with pytest.raises(RateLimitError, match="2"):
        await RetryingEngine(inner, attempts=3, backoff=0.001).generate(REQUEST)
    assert len(inner.requests) == 3


async def test_permanent_errors_are_not_retried() -> None:
    """A context-length error is not transient: one attempt."""
    inner = flaky([ContextLengthError("too long")])
    with pytest.raises(ContextLengthError):
        await RetryingEngine(inner, backoff=0.001).generate(REQUEST)
    assert len(inner.requests) == 1


async def test_a_slow_attempt_times_out_and_is_retried() -> None:
    """An attempt longer than `timeout` is cancelled and retried; all too slow is an EngineTimeoutError."""
    slow = FakeEngine(latency=5.0)
    with anyio.fail_after(3), pytest.raises(EngineTimeoutError, match=r"no answer within 0\.05s"):
        await RetryingEngine(slow, attempts=2, backoff=0.001, timeout=0.05).generate(REQUEST)
    assert len(slow.requests) == 2


async def test_streams_are_retried_only_before_the_first_token() -> None:
    """A failure before any delta is retried; one after a delta reaches the caller."""
    inner = flaky([ServerError("dropped")])
    async with RetryingEngine(inner, backoff=0.001).stream(REQUEST) as stream:
        items = [item async for item in stream]
    assert isinstance(items[0], Delta)
    assert len(inner.requests) == 2

    class Breaks(FakeEngine):
        async def _stream(self, request):  # type: ignore[no-untyped-def,override]
            self.requests.append(request)
            yield Delta(0, "partial")
            raise ServerError("dropped mid-stream")

    async def drain(engine: RetryingEngine) -> None:
        async with engine.stream(REQUEST) as stream:
            async for _ in stream:
                pass

    broken = Breaks()
    with pytest.raises(ServerError, match="mid-stream"):
        await drain(RetryingEngine(broken, backoff=0.001))
    assert len(broken.requests) == 1


async def test_wrapping_keeps_the_inner_engine_and_topology_working() -> None:
    """A topology on the wrapper runs; entering the wrapper enters the inner engine once."""
    inner = flaky([RateLimitError("once")])
    engine = RetryingEngine(inner, backoff=0.001)
    async with presets.aft(engine, n=2) as topology:
        result = await topology.run("q")
    assert result.text == "ok"
    assert engine.name == inner.name
