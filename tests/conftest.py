"""Shared fixtures.

One event loop serves the whole session (a session-scoped ``anyio_backend``), so one real vLLM engine,
bound to the loop it was created on, serves every integration test. It starts on first use only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aftlib.engines import VLLMEngine

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
async def vllm_engine(tiny_model: Path) -> AsyncIterator[VLLMEngine]:
    """One real vLLM engine (CPU build) on the tiny model, started once per test session."""
    if not _vllm_available():
        pytest.fail("vLLM is not installed: pip install -e '.[cpu,dev]'")
    engine = VLLMEngine(
        str(tiny_model),
        name="tiny",
        max_model_len=2048,
        kv_cache_memory_bytes=1 << 30,
        enforce_eager=True,
        seed=0,
    )
    async with engine:
        yield engine
