"""Engines: what agents send their requests to.

:class:`Engine` is the base class; :class:`VLLMEngine` runs a model in this process on vLLM (imported
only when used, from the ``vllm`` or ``cpu`` extra); :class:`OpenAIEngine` talks to any OpenAI-compatible
server (the ``openai`` extra); :class:`FakeEngine` answers from a function, for tests (also in
:mod:`aftlib.testing`). Wrappers change one thing about an engine and forward the rest
(:class:`WrapperEngine`): :class:`RetryingEngine` retries, :class:`LimitedEngine` bounds the requests in
flight, and :class:`Replicas` spreads requests over several engines of one model. :class:`EnginePool`
starts many engines once and closes them together.
"""

from __future__ import annotations

from .._util import publish as _publish
from ._base import Engine, EngineStream, StreamItem, collect
from ._cache import CachingEngine
from ._fake import FakeEngine
from ._limited import LimitedEngine
from ._openai import OpenAIEngine
from ._pool import EnginePool, split_gpu_memory
from ._replicas import Replicas
from ._retrying import TRANSIENT, RetryingEngine
from ._vllm import VLLMEngine, check_model
from ._wrapper import WrapperEngine

__all__ = (
    "TRANSIENT",
    "CachingEngine",
    "Engine",
    "EnginePool",
    "EngineStream",
    "FakeEngine",
    "LimitedEngine",
    "OpenAIEngine",
    "Replicas",
    "RetryingEngine",
    "StreamItem",
    "VLLMEngine",
    "WrapperEngine",
    "check_model",
    "collect",
    "split_gpu_memory",
)

_publish(globals(), __name__)
