"""Helpers for testing code built on aftlib.

A scripted engine (with fault injection), a loopback OpenAI-compatible server that fails at random, a
soak run that checks a faulty MoA end to end, an engine that takes the time of a continuous-batching
server (:class:`SimulatedEngine`, for scheduling tests and benchmarks in virtual time), a tiny model
(and LoRA adapters) that vLLM runs on CPU, and a loopback vLLM OpenAI-compatible server.

A task and models that know it, to measure quality on a CPU: :func:`arithmetic_problems` (seeded word
problems with worked answers, GSM8K layout, disjoint train/dev/test splits) and
:func:`arithmetic_model` (the shipped ``base`` model, trained on them, and ``aft``, ``base`` after
aggregation fine-tuning); ``python -m aftlib.testing.rebuild`` rebuilds the models from scratch.

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
    from ._arithmetic import arithmetic_problems, tokenizer_corpus
    from ._chaos import ChaosFault, ChaosScript, ChaosServer, chaos_server
    from ._models import ARITHMETIC_MODELS, arithmetic_model
    from ._server import vllm_server
    from ._simulated import SimulatedEngine, SimulatedRequest, SimulationStats
    from ._soak import SoakReport, soak
    from ._tiny import build_tiny_model, tiny_model_path

__all__ = (
    "ARITHMETIC_MODELS",
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
    "arithmetic_model",
    "arithmetic_problems",
    "build_tiny_adapter",
    "build_tiny_model",
    "chaos_server",
    "soak",
    "tiny_model_path",
    "tokenizer_corpus",
    "vllm_server",
)

_LAZY = {
    "ARITHMETIC_MODELS": "_models",
    "arithmetic_model": "_models",
    "arithmetic_problems": "_arithmetic",
    "tokenizer_corpus": "_arithmetic",
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
