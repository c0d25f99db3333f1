"""Helpers for testing code built on aftlib.

A scripted engine (with fault injection), a loopback OpenAI-compatible server that fails at random, a
soak run that checks a faulty MoA end to end, a tiny model (and LoRA adapters) that vLLM runs on CPU,
and a loopback vLLM OpenAI-compatible server.
"""

from __future__ import annotations

from ._adapter import build_tiny_adapter
from ._chaos import ChaosFault, ChaosScript, ChaosServer, chaos_server
from ._fake import FakeEngine, Fault, FaultPlan, FaultScript, Handler
from ._server import vllm_server
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
    "SoakReport",
    "build_tiny_adapter",
    "build_tiny_model",
    "chaos_server",
    "soak",
    "tiny_model_path",
    "vllm_server",
)
