"""EnginePool: distinct engines start once and close together; the GPU is split among vLLM engines."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from aftlib import ConfigError, EngineError, Proposer, Topology, config
from aftlib.engines import EnginePool, LimitedEngine, Replicas, RetryingEngine, VLLMEngine, split_gpu_memory
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio


class Counting(FakeEngine):
    """A FakeEngine that counts starts and closes, and can fail to start."""

    starts: int = 0
    closes: int = 0
    fail: bool = False

    async def start(self) -> None:
        if self.fail:
            raise EngineError(f"engine {self.name!r} cannot start")
        self.starts += 1

    async def aclose(self) -> None:
        self.closes += 1


def test_two_vllm_engines_share_the_gpu_evenly() -> None:
    """Two vLLM engines that set no share get 0.45 each, also under wrappers and replicas."""
    a, b = VLLMEngine("/m/a"), VLLMEngine("/m/b")
    shares = split_gpu_memory([RetryingEngine(a), Replicas([LimitedEngine(b, max_in_flight=2)])])
    assert shares == {"/m/a": 0.45, "/m/b": 0.45}
    assert a.engine_args["gpu_memory_utilization"] == 0.45


def test_explicit_shares_are_kept_and_the_rest_is_split() -> None:
    """An engine that claims 0.5 keeps it; the two others split the 0.4 left of 0.9."""
    big = VLLMEngine("/m/big", gpu_memory_utilization=0.5)
    small = [VLLMEngine(f"/m/s{i}") for i in range(2)]
    assert split_gpu_memory([big, *small]) == {"/m/s0": 0.2, "/m/s1": 0.2}
    assert big.engine_args["gpu_memory_utilization"] == 0.5


def test_one_vllm_engine_gets_no_share_and_too_much_claimed_is_an_error() -> None:
    """A single engine is left to vLLM's default; shares that leave too little are a ConfigError."""
    alone = VLLMEngine("/m/a")
    assert split_gpu_memory([alone, FakeEngine()]) == {}
    assert "gpu_memory_utilization" not in alone.engine_args
    with pytest.raises(ConfigError, match="leaving too little") as info:
        split_gpu_memory([VLLMEngine("/m/a", gpu_memory_utilization=0.88), VLLMEngine("/m/b")])
    assert info.value.path == "engines"


def test_the_python_api_and_yaml_build_the_same_engines(tmp_path: object) -> None:
    """A topology file with two vLLM engines and the same objects built by hand get the same shares."""
    data = {
        "engines": {"a": {"type": "vllm", "model": "/m/a"}, "b": {"type": "vllm", "model": "/m/b"}},
        "agents": {"x": {"engine": "a"}, "y": {"engine": "b"}},
        "layers": [["x"]],
        "final": "y",
    }
    topology = config.parse(data)
    by_hand = Topology(
        [[Proposer(VLLMEngine("/m/a", name="a"), name="x")]], Proposer(VLLMEngine("/m/b", name="b"))
    )
    assert split_gpu_memory(topology.engines) == split_gpu_memory(by_hand.engines) == {"a": 0.45, "b": 0.45}


async def test_each_distinct_engine_starts_once_and_closes_on_exit() -> None:
    """An engine shared by two agents (and listed twice) starts once; all close when the pool exits."""
    shared, other = Counting(name="shared"), Counting(name="other")
    async with EnginePool([shared, other, shared]) as pool:
        assert len(pool.engines) == 2
        assert (shared.starts, other.starts) == (1, 1)
    assert (shared.closes, other.closes) == (1, 1)


async def test_an_engine_that_fails_to_start_closes_those_already_started() -> None:
    """When the second engine cannot start, the first is closed again and the error comes through."""
    first, broken = Counting(name="first"), Counting(name="broken")
    broken.fail = True
    with pytest.raises(EngineError, match="cannot start"):
        async with EnginePool([first, broken]):
            pass
    assert (first.starts, first.closes) == (1, 1)


async def test_an_engine_entered_from_two_tasks_at_once_starts_once_and_closes_once() -> None:
    """Two tasks entering one engine while it is still starting: one start, and one close after both leave."""
    calls: list[str] = []
    starting, trying, release = anyio.Event(), anyio.Event(), anyio.Event()

    class Slow(FakeEngine):
        async def start(self) -> None:
            calls.append("start")
            starting.set()
            await release.wait()

        async def aclose(self) -> None:
            calls.append("close")

    engine = Slow(name="slow")

    async def enter(event: anyio.Event | None = None) -> None:
        if event is not None:
            event.set()
        async with engine:
            calls.append("in")

    async with anyio.create_task_group() as tg:
        tg.start_soon(enter)
        await starting.wait()
        tg.start_soon(enter, trying)
        await trying.wait()
        for _ in range(10):  # room for the second task to start the engine again, were it not counted
            await anyio.lowlevel.checkpoint()
        release.set()
    assert calls == ["start", "in", "in", "close"]
    assert engine._entered == 0


def test_wrappers_and_replicas_forward_the_model_and_their_leaves() -> None:
    """Engine.model and Engine.leaves() go through wrappers and replicas.

    Pricing, cache keys and the GPU split see the same engines and the same model.
    """
    from aftlib import Price, PriceTable
    from aftlib.engines import OpenAIEngine
    from aftlib.engines._cache import engine_identity

    a, b = OpenAIEngine("served", "http://a.test/v1"), OpenAIEngine("served", "http://b.test/v1")
    stack = RetryingEngine(Replicas([LimitedEngine(a, max_in_flight=2), b]), name="mine")
    assert stack.model == "served"
    assert stack.leaves() == (a, b)
    assert engine_identity(stack) == engine_identity(a) == {"class": "OpenAIEngine", "model": "served"}
    assert PriceTable({"served": Price(1.0, 2.0)}).find(stack) == Price(1.0, 2.0)
    assert FakeEngine(name="f").model is None
    assert FakeEngine(name="f").leaves()[0].name == "f"
