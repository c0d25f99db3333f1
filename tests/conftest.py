"""Shared fixtures.

One event loop serves the whole session (a session-scoped ``anyio_backend``), so one real vLLM engine,
bound to the loop it was created on, serves every integration test. It starts on first use only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from aftlib.engines import VLLMEngine

T = TypeVar("T")

REFERENCE_AGGREGATOR = (
    "You are a helpful aggregator.\nYou have been provided with a set of responses from various "
    "open-source models to the latest user query. Your task is to synthesize these responses into a "
    "single, high-quality response. It is crucial to critically evaluate the information provided in "
    "these responses, recognizing that some of it may be biased or incorrect. Your response should not "
    "simply replicate the given answers but should offer a refined, accurate, and comprehensive reply to "
    "the instruction. Ensure your response is well-structured, coherent, and adheres to the highest "
    "standards of accuracy and reliability.\n    \n    Responses from models:"
)
"""The AFT reference aggregation instruction, written out independently of aftlib's template."""


def reference_aggregation_system(previous: list[str]) -> str:
    """The system message the AFT reference script builds over ``previous`` (its own construction)."""
    return REFERENCE_AGGREGATOR + "\n" + "\n".join(f"{i + 1}. {p}" for i, p in enumerate(previous))


TWO_TURNS = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "And one larger than {{ 100 }}?"},
]


def run_fresh(function: Callable[..., Awaitable[T]], *args: Any, backend: str = "asyncio") -> T:
    """Run ``function(*args)`` on a loop of its own, in a thread of its own.

    Async tests and session fixtures share one loop in this thread; a sync test that runs async code
    must not start another one here.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: anyio.run(function, *args, backend=backend)).result()


def run_mocked(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``function(*args)`` on trio with a mock clock that jumps ahead whenever every task waits.

    Sleeps, timeouts and engine latencies then take no wall time and happen in the same order on a busy
    machine as on a fast one: a test of what happens when orders events by the test's clock, not the
    machine's.
    """
    import trio.testing

    def run() -> T:
        clock = trio.testing.MockClock(autojump_threshold=0)
        return anyio.run(function, *args, backend="trio", backend_options={"clock": clock})

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Run async tests, and the session's fixtures, on one asyncio loop."""
    return "asyncio"


def _vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny random Llama, built once into the cache folder."""
    from aftlib.testing import tiny_model_path

    return tiny_model_path()


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two random LoRA adapters for the tiny model, made with peft."""
    from aftlib.testing import build_tiny_adapter

    folder = tmp_path_factory.mktemp("adapters")
    return {
        name: str(build_tiny_adapter(tiny_model, folder / name, seed=seed))
        for seed, name in enumerate(["terse", "verbose"])
    }


@pytest.fixture(scope="session")
async def vllm_engine(tiny_model: Path, tiny_adapters: dict[str, str]) -> AsyncIterator[VLLMEngine]:
    """One real vLLM engine (CPU build) on the tiny model, serving two LoRA adapters, started once."""
    if not _vllm_available():
        pytest.fail("vLLM is not installed: pip install -e '.[cpu,dev]'")
    engine = VLLMEngine(
        str(tiny_model),
        name="tiny",
        lora_adapters=tiny_adapters,
        max_lora_rank=8,
        max_model_len=2048,
        kv_cache_memory_bytes=1 << 30,
        enforce_eager=True,
        seed=0,
    )
    async with engine:
        yield engine


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model, different in width and weights, for mixes of several models."""
    from aftlib.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-wide", seed=7, hidden_size=192)


@pytest.fixture(scope="session")
def openai_server(tiny_model: Path) -> Iterator[str]:
    """A real vLLM OpenAI-compatible server on a loopback port, serving the tiny model as 'tiny-served'.

    It schedules by priority, as aftlib's docs advise (``--scheduling-policy priority``).
    """
    from aftlib.testing import vllm_server

    priority = ("--scheduling-policy", "priority")
    with vllm_server(tiny_model, served_model_name="tiny-served", extra_args=priority) as url:
        yield url


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    """A command run in-process sets the engines' log levels in os.environ; later tests start clean."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI configures structlog for its process; undo that after each test."""
    yield
    import structlog

    structlog.reset_defaults()
