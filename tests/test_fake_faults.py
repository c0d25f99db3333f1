"""FakeEngine fault modes: each fault fails as it says, hangs yield to cancellation, plans are seeded."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

from aftlib import (
    ChatRequest,
    ConfigError,
    Delta,
    EngineError,
    EngineTimeoutError,
    Message,
    RateLimitError,
    SamplingParams,
    ServerError,
)
from aftlib.engines import RetryingEngine
from aftlib.testing import FakeEngine, Fault, FaultPlan

pytestmark = pytest.mark.anyio

REQUEST = ChatRequest([Message("user", "q")], SamplingParams(n=2))
TEXT = "one two three four five six seven eight"


def always(fault: Fault) -> FakeEngine:
    """An engine whose every request fails with ``fault``."""
    return FakeEngine(handler=lambda r, i: TEXT, faults=lambda number, request: fault)


async def drain(engine: FakeEngine | RetryingEngine, deltas: list[Delta] | None = None) -> None:
    """Consume a stream of REQUEST, keeping its deltas."""
    async with engine.stream(REQUEST) as items:
        async for item in items:
            if isinstance(item, Delta) and deltas is not None:
                deltas.append(item)


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("raise", EngineError, "failed"),
        ("rate_limit", RateLimitError, "rate limited"),
        ("server_error", ServerError, "HTTP 500"),
        ("mid_stream", ServerError, "connection dropped"),
    ],
)
async def test_each_fault_raises_its_error(fault: Fault, error: type[EngineError], message: str) -> None:
    """Both generate and stream raise the fault's error class (exactly), after the latency, and count it."""
    engine = FakeEngine(latency=0.05, faults=lambda number, request: fault)
    for call in (engine.generate(REQUEST), drain(engine)):
        started = anyio.current_time()
        with pytest.raises(EngineError, match=message) as info:
            await call
        assert type(info.value) is error
        assert anyio.current_time() - started >= 0.04
    assert engine.injected == Counter({fault: 2})
    assert len(engine.requests) == 2
    assert engine.in_flight == 0


async def test_mid_stream_delivers_about_half_of_the_first_sample_first() -> None:
    """A stream cut mid-way yields the first half of sample 0's words, then a ServerError."""
    engine = always("mid_stream")
    deltas: list[Delta] = []
    with pytest.raises(ServerError, match="mid-stream"):
        await drain(engine, deltas)
    assert [d.index for d in deltas] == [0, 0, 0, 0]
    assert "".join(d.text for d in deltas) == "one two three four"
    assert engine.in_flight == 0


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_hang_waits_until_cancelled_and_leaves_nothing_in_flight(streaming: bool) -> None:
    """A hanging request is still in flight until move_on_after cancels it; then in_flight is 0."""
    engine = always("hang")
    seen: list[int] = []

    async def watch() -> None:
        await anyio.sleep(0.05)
        seen.append(engine.in_flight)

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        with anyio.move_on_after(0.2) as scope:
            await (drain(engine) if streaming else engine.generate(REQUEST))
    assert scope.cancelled_caught
    assert 0.19 <= anyio.current_time() - started < 2
    assert seen == [1]
    assert engine.in_flight == 0
    assert engine.peak_in_flight == 1
    assert engine.injected == Counter({"hang": 1})


async def test_in_flight_counts_concurrent_requests_and_returns_to_zero() -> None:
    """Ten concurrent requests (half streams) peak at ten in flight and all finish."""
    engine = FakeEngine(latency=0.05)
    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(engine.generate, REQUEST)
            tg.start_soon(drain, engine)
    assert engine.peak_in_flight == 10
    assert engine.in_flight == 0
    assert not engine.injected


async def test_a_script_targets_requests_and_still_records_them() -> None:
    """A callable picks faults per request (here by adapter name); every request is recorded in order."""
    engine = FakeEngine(faults=lambda number, request: "raise" if request.lora == "bad" else None)
    good = ChatRequest([Message("user", "q")], lora="good")
    bad = ChatRequest([Message("user", "q")], lora="bad")
    assert (await engine.generate(good)).samples[0].text
    with pytest.raises(EngineError, match="injected"):
        await engine.generate(bad)
    assert engine.requests == [good, bad]
    assert engine.injected == Counter({"raise": 1})


async def test_a_script_returning_an_unknown_fault_is_a_config_error() -> None:
    """A typo in a fault script is reported, not silently ignored."""
    engine = FakeEngine(faults=lambda number, request: "explode")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match="explode"):
        await engine.generate(REQUEST)
    assert engine.in_flight == 0


def test_a_plan_injects_close_to_its_rate_reproducibly() -> None:
    """Rate 0.1 over 2,000 request numbers fails about 10 %, spread over every kind; same seed, same picks."""
    plan = FaultPlan(0.1, seed=3)
    picks = [plan.pick(k) for k in range(2000)]
    faults = Counter(p for p in picks if p is not None)
    assert 160 <= sum(faults.values()) <= 240
    assert set(faults) == {"raise", "hang", "mid_stream", "rate_limit", "server_error"}
    assert picks == [FaultPlan(0.1, seed=3).pick(k) for k in range(2000)]
    assert picks != [FaultPlan(0.1, seed=4).pick(k) for k in range(2000)]
    assert all(FaultPlan(1.0, kinds=("hang",)).pick(k) == "hang" for k in range(100))
    assert all(FaultPlan(0.0).pick(k) is None for k in range(100))


def test_a_plan_checks_its_values() -> None:
    """A rate outside 0..1, no kinds or an unknown kind is a ConfigError."""
    with pytest.raises(ConfigError, match="rate"):
        FaultPlan(1.5)
    with pytest.raises(ConfigError, match="at least one"):
        FaultPlan(0.1, kinds=())
    with pytest.raises(ConfigError, match="unknown fault 'boom'"):
        FaultPlan(0.1, kinds=("raise", "boom"))  # type: ignore[arg-type]


async def test_an_engine_with_a_plan_follows_the_plan() -> None:
    """The engine's k-th request fails exactly when plan.pick(k) says so."""
    plan = FaultPlan(0.3, kinds=("raise", "rate_limit", "server_error"), seed=11)
    engine = FakeEngine(faults=plan)
    outcomes = []
    for _ in range(200):
        try:
            await engine.generate(REQUEST)
            outcomes.append(None)
        except EngineError as exc:
            outcomes.append(exc)
    expected = [plan.pick(k) for k in range(200)]
    assert [o is None for o in outcomes] == [e is None for e in expected]
    assert engine.injected == Counter(e for e in expected if e is not None)


async def test_retrying_recovers_from_transient_faults_but_not_from_raise() -> None:
    """RetryingEngine over a faulty engine: rate limits and server errors retried, "raise" fails at once."""
    plan = FaultPlan(0.3, kinds=("rate_limit", "server_error", "mid_stream"), seed=5)
    inner = FakeEngine(handler=lambda r, i: TEXT, faults=plan)
    engine = RetryingEngine(inner, attempts=12, backoff=0.001)
    texts: list[str] = []

    async def one() -> None:
        texts.append((await engine.generate(REQUEST)).samples[1].text)

    async with anyio.create_task_group() as tg:
        for _ in range(100):
            tg.start_soon(one)
    assert texts == [TEXT] * 100
    assert len(inner.requests) == 100 + sum(inner.injected.values())
    assert sum(inner.injected.values()) > 10
    assert inner.in_flight == 0

    broken = FakeEngine(faults=lambda number, request: "raise" if number == 0 else None)
    with pytest.raises(EngineError, match="injected") as info:
        await RetryingEngine(broken, backoff=0.001).generate(REQUEST)
    assert type(info.value) is EngineError
    assert len(broken.requests) == 1


async def test_retrying_times_out_hangs_and_tries_again() -> None:
    """A hanging attempt is cut by the per-attempt timeout and retried; the next attempt answers."""
    inner = FakeEngine(handler=lambda r, i: "ok", faults=lambda n, request: "hang" if n < 2 else None)
    engine = RetryingEngine(inner, attempts=3, backoff=0.001, timeout=0.05)
    with anyio.fail_after(5):
        completion = await engine.generate(REQUEST)
    assert completion.samples[0].text == "ok"
    assert len(inner.requests) == 3
    assert inner.in_flight == 0

    always_hangs = always("hang")
    with anyio.fail_after(5), pytest.raises(EngineTimeoutError):
        await RetryingEngine(always_hangs, attempts=2, backoff=0.001, timeout=0.05).generate(REQUEST)
    assert always_hangs.in_flight == 0
