"""Helpers for testing code built on aftlib.

A scripted engine (with fault injection), a loopback OpenAI-compatible server that fails at random, a
soak run that checks a faulty MoA end to end, an engine that takes the time of a continuous-batching
server (:class:`SimulatedEngine`, for scheduling tests and benchmarks in virtual time), a tiny model
(and LoRA adapters) that vLLM runs on CPU, and a loopback vLLM OpenAI-compatible server.

:class:`FakeEngine` and its fault types live beside the real engines (``aftlib.engines``) and are
re-exported here. The other helpers are imported on first use, so ``import aftlib.testing`` loads no
HTTP server, subprocess or memory tracer.
"""

from __future__ import annotations

import importlib
import typing

from .._util import publish as _publish
from ..engines._fake import FakeEngine, Fault, FaultPlan, FaultScript, Handler

if typing.TYPE_CHECKING:
    from ._adapter import build_tiny_adapter
    from ._chaos import ChaosFault, ChaosScript, ChaosServer, chaos_server
    from ._server import vllm_server
    from ._simulated import SimulatedEngine, SimulatedRequest, SimulationStats
    from ._soak import SoakReport, soak
    from ._tiny import build_tiny_model, tiny_model_path

__all__ = (
    "ChaosFault",
    "ChaosScript",
    "ChaosServer",
    "FakeEngine",
    "Fault",
    "FaultPlan",
    "FaultScript",
    "Handler",
    "SimulatedEngine",
    "SimulatedRequest",
    "SimulationStats",
    "SoakReport",
    "build_tiny_adapter",
    "build_tiny_model",
    "chaos_server",
    "soak",
    "tiny_model_path",
    "vllm_server",
)

_LAZY = {
    "build_tiny_adapter": "_adapter",
    "ChaosFault": "_chaos",
    "ChaosScript": "_chaos",
    "ChaosServer": "_chaos",
    "chaos_server": "_chaos",
    "vllm_server": "_server",
    "SimulatedEngine": "_simulated",
    "SimulatedRequest": "_simulated",
    "SimulationStats": "_simulated",
    "SoakReport": "_soak",
    "soak": "_soak",
    "build_tiny_model": "_tiny",
    "tiny_model_path": "_tiny",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    _publish({"__all__": (name,), name: value}, __name__)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_publish(globals(), __name__)
