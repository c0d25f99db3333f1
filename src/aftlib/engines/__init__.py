"""Engines: what agents send their requests to.

:class:`Engine` is the base class; :class:`VLLMEngine` runs a model in this process on vLLM (imported
only when used, from the ``vllm`` or ``cpu`` extra); :class:`OpenAIEngine` talks to any OpenAI-compatible
server (the ``openai`` extra). :class:`aftlib.testing.FakeEngine` answers from a
function, for tests.
"""

from __future__ import annotations

from ._base import Engine, StreamItem, collect
from ._openai import OpenAIEngine
from ._retrying import RetryingEngine
from ._vllm import VLLMEngine

__all__ = ("Engine", "OpenAIEngine", "RetryingEngine", "StreamItem", "VLLMEngine", "collect")
