"""aftlib: propose-and-aggregate LLM inference and aggregation fine-tuning.

Proposers draft answers, aggregators read the drafts and write a better one, layers stack into a
:class:`Topology`, and the whole pipeline runs concurrently on shared engines with token streaming.

Example:
    >>> from aftlib import presets
    >>> from aftlib.testing import FakeEngine
    >>> topology = presets.aft(FakeEngine(), n=5, num_aggregation=2)
    >>> topology.generations_per_query
    11
"""

from __future__ import annotations

import importlib
import typing

from . import engines, presets
from ._accounting import Price, PriceTable
from ._agents import Agent, Aggregator, ModelAgent, Proposer, SequentialAggregator, Subset, WrappedAgent
from ._confidence import Confidence, TokenConfidences
from ._drafting import Consensus, Drafts, NoDraftsError, OnlineStop
from ._errors import (
    AftError,
    ConfigError,
    ContextLengthError,
    EngineError,
    EngineTimeoutError,
    InputError,
    MissingExtraError,
    QuorumError,
    RateLimitError,
    ServerError,
    TemplateError,
)
from ._extract import AnswerExtractor, Extracted
from ._filter import ConfidenceFilter
from ._results import (
    AgentFailure,
    AnswerDone,
    Candidate,
    CandidateDone,
    Event,
    LayerDone,
    LayerResult,
    References,
    Result,
    TokenDelta,
)
from ._select import BestOfN, Select
from ._structured import ResponseFormat, StructuredOutputError
from ._templates import PromptTemplate
from ._tools import Tool, ToolCall, ToolCallError, ToolChoice
from ._topology import EarlyExit, Layer, Topology
from ._trace import TracedRequest, traced_requests
from ._types import (
    ChatRequest,
    Completion,
    Conversation,
    Cut,
    Delta,
    Message,
    Sample,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from ._util import publish as _publish
from ._vote import NoAnswerError, Vote
from .run import MergeSummary, Runner, RunStats, RunSummary, Shard, merge_shards

__version__ = "0.1.0"

__all__ = (
    "AftError",
    "AnswerExtractor",
    "EarlyExit",
    "Extracted",
    "NoAnswerError",
    "Subset",
    "Vote",
    "WrappedAgent",
    "BestOfN",
    "Select",
    "Agent",
    "AgentFailure",
    "Aggregator",
    "AnswerDone",
    "Candidate",
    "CandidateDone",
    "ChatRequest",
    "Completion",
    "ConfigError",
    "Confidence",
    "ConfidenceFilter",
    "Consensus",
    "ContextLengthError",
    "Conversation",
    "Cut",
    "Delta",
    "Drafts",
    "EngineError",
    "EngineTimeoutError",
    "Event",
    "InputError",
    "Layer",
    "LayerDone",
    "LayerResult",
    "MergeSummary",
    "Message",
    "MissingExtraError",
    "ModelAgent",
    "NoDraftsError",
    "OnlineStop",
    "Price",
    "PriceTable",
    "PromptTemplate",
    "Proposer",
    "QuorumError",
    "RateLimitError",
    "References",
    "ResponseFormat",
    "Result",
    "RunStats",
    "RunSummary",
    "Runner",
    "Sample",
    "SamplingParams",
    "SequentialAggregator",
    "ServerError",
    "Shard",
    "StructuredOutputError",
    "TemplateError",
    "TokenConfidences",
    "TokenDelta",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolCallError",
    "ToolChoice",
    "Topology",
    "TracedRequest",
    "Usage",
    "__version__",
    "config",
    "engines",
    "evaluate",
    "finetune",
    "merge_shards",
    "presets",
    "ray",
    "run",
    "serve",
    "testing",
    "traced_requests",
)

if typing.TYPE_CHECKING:
    from . import config, evaluate, finetune, ray, serve, testing

_SUBMODULES = ("config", "evaluate", "finetune", "ray", "serve", "testing")


def __getattr__(name: str) -> object:
    """Import a subpackage (``aftlib.config``, ``aftlib.evaluate``, ``aftlib.serve``, ...) on first use."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_publish(globals(), __name__)
