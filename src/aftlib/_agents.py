"""Agents: an engine, a prompt template and sampling parameters."""

from __future__ import annotations

import hashlib
import inspect
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

import attrs
from attrs import define, field

from ._budget import fit
from ._errors import ConfigError
from ._logging import context, get_logger
from ._results import Candidate, CandidateDone, Event, TokenDelta
from ._templates import PromptTemplate, as_template
from ._types import ChatRequest, Completion, Cut, Delta, Message, SamplingParams, Usage
from .engines._base import Engine

__all__ = ("Agent", "Aggregator", "Emit", "Proposer", "SequentialAggregator", "emitter")

Emit = Callable[[Event], Awaitable[None]]
EventCallback = Callable[[Event], "Awaitable[object] | object"]


def emitter(on_event: EventCallback | None) -> Emit | None:
    """Wrap a sync or async callback into one coroutine function; None stays None (no events built)."""
    if on_event is None:
        return None

    async def emit(event: Event) -> None:
        outcome = on_event(event)
        if inspect.isawaitable(outcome):
            await outcome

    return emit


@define(eq=False)
class Agent:
    """An engine, a template and sampling parameters: one node of a topology.

    Use :class:`Proposer` (drafts from the conversation alone) or :class:`Aggregator` (reads the previous
    layer's candidates).

    Attributes:
        engine: The engine that generates. Many agents may share one.
        sampling: How to sample; ``sampling.n`` samples come from one engine request.
        template: The prompt template (a built-in name or a ``.j2`` path) that renders the system message.
        name: The agent's name in results and events; unique within its layer.
        lora: A LoRA adapter name, for engines that serve adapters.
    """

    reads_references: ClassVar[bool] = False

    engine: Engine
    sampling: SamplingParams = field(factory=SamplingParams, kw_only=True)
    template: PromptTemplate = field(converter=as_template, kw_only=True)
    name: str = field(kw_only=True)
    lora: str | None = field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.engine, Engine):
            raise ConfigError(
                f"agent {self.name!r}: engine must be an aftlib Engine, got {type(self.engine).__name__}"
            )
        if not isinstance(self.sampling, SamplingParams):
            raise ConfigError(
                f"agent {self.name!r}: sampling must be aftlib.SamplingParams, "
                f"got {type(self.sampling).__name__}"
            )
        if self.lora is not None:
            try:
                self.engine.check_adapter(self.lora)
            except ConfigError as exc:
                raise ConfigError(f"agent {self.name!r}: {exc.message}", path="lora") from None

    def generations(self, references: int) -> int:
        """Samples this agent generates when it reads ``references`` references."""
        return self.sampling.n

    def prepare(
        self, conversation: Sequence[Message], references: Sequence[str]
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        """The engine request for ``conversation`` and ``references``, fitted to the engine's context.

        Returns:
            The request and the references cut to fit (each an :class:`~aftlib.Cut`), if any.
        """
        refs = references if self.reads_references else ()

        def build(texts: Sequence[str]) -> list[Message]:
            return self.template.messages(conversation, texts)

        messages, sampling, cuts = fit(self.engine, build, refs, self.sampling)
        return ChatRequest(messages, sampling, self.lora), cuts

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Send one request and stream its samples as events.

        Returns:
            The candidates, in sample order, and the engine's completion.
        """
        with context(layer=layer, agent=self.name):
            log = get_logger(__name__)
            request, cuts = self.prepare(conversation, references)
            if cuts:
                log.info(
                    "references cut to fit the context",
                    cuts=len(cuts),
                    max_tokens=request.sampling.max_tokens,
                )
            log.debug("request", n=request.sampling.n, references=len(references))
            completion: Completion | None = None
            if emit is None:  # no one watches the tokens: let the engine skip streaming them
                completion = await self.engine.generate(request)
            else:
                async with self.engine.stream(request) as items:
                    async for item in items:
                        if isinstance(item, Delta):
                            if item.text:
                                await emit(TokenDelta(layer, self.name, item.index, item.text, is_answer))
                        else:
                            completion = item
            if completion is None:
                raise RuntimeError(f"engine {self.engine.name!r} ended a stream without a completion")
            candidates = tuple(
                Candidate(
                    layer,
                    self.name,
                    s.index,
                    s.text,
                    s.finish_reason,
                    completion.usage.prompt_tokens,
                    s.completion_tokens,
                    cuts,
                    (request,),
                )
                for s in sorted(completion.samples, key=lambda s: s.index)
            )
            if emit is not None:
                for candidate in candidates:
                    await emit(CandidateDone(candidate))
            log.debug(
                "done",
                prompt_tokens=completion.usage.prompt_tokens,
                completion_tokens=completion.usage.completion_tokens,
            )
            return candidates, completion


@define(eq=False)
class Proposer(Agent):
    """An agent that drafts from the conversation alone (the AFT proposal prompt by default)."""

    template: PromptTemplate = field(
        factory=lambda: PromptTemplate("aft_propose"), converter=as_template, kw_only=True
    )
    name: str = field(default="proposer", kw_only=True)


@define(eq=False)
class Aggregator(Agent):
    """An agent that reads the previous layer's candidates (the AFT aggregation prompt by default).

    Attributes:
        shuffle: A seed to shuffle the references with, per conversation (the same conversation always gets
            the same order); None keeps them in layer order (agent, then sample index).
    """

    reads_references: ClassVar[bool] = True
    template: PromptTemplate = field(
        factory=lambda: PromptTemplate("aft_aggregate"), converter=as_template, kw_only=True
    )
    name: str = field(default="aggregator", kw_only=True)
    shuffle: int | None = field(default=None, kw_only=True)

    def prepare(
        self, conversation: Sequence[Message], references: Sequence[str]
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        """Like :meth:`Agent.prepare`, with the references shuffled first if :attr:`shuffle` is set."""
        return super().prepare(conversation, self.order(conversation, references))

    def order(self, conversation: Sequence[Message], references: Sequence[str]) -> list[str]:
        """The references in the order this aggregator reads them (shuffled per conversation if asked)."""
        ordered = list(references)
        if self.shuffle is not None:
            key = hashlib.sha256(repr((self.shuffle, [m.content for m in conversation])).encode()).digest()
            random.Random(key).shuffle(ordered)
        return ordered


@define(eq=False)
class SequentialAggregator(Aggregator):
    """An aggregator that reads its references a window at a time, carrying a running synthesis.

    The first request aggregates the first ``window`` references; each later request aggregates the
    synthesis so far with the next ``window - 1`` references, until all are read (Self-MoA-Seq). Use it
    when the references do not fit the context at once. Only the last request's text is the candidate;
    the usage adds up every request.

    Attributes:
        window: References per request (at least 2).
    """

    window: int = field(default=4, kw_only=True)

    def prepare(
        self, conversation: Sequence[Message], references: Sequence[str]
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        """One window's request: the references as given (already ordered by :meth:`run`)."""
        return Agent.prepare(self, conversation, references)

    def generations(self, references: int) -> int:
        """Samples generated over ``references`` references: one per window."""
        return 1 + -(-max(references - self.window, 0) // (self.window - 1))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.window < 2:
            raise ConfigError(f"agent {self.name!r}: window must be at least 2, got {self.window}")
        if self.sampling.n != 1:
            raise ConfigError(
                f"agent {self.name!r}: a sequential aggregator samples once, got n={self.sampling.n}"
            )

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Aggregate window by window; only the last request's deltas can be answer deltas."""
        remaining = self.order(conversation, references)  # shuffled once, not window by window
        synthesis: str | None = None
        usage = Usage()
        requests: list[ChatRequest] = []
        while True:
            take = self.window if synthesis is None else self.window - 1
            chunk, remaining = remaining[:take], remaining[take:]
            inputs = chunk if synthesis is None else [synthesis, *chunk]
            last = not remaining
            candidates, completion = await super().run(
                conversation, inputs, layer=layer, emit=emit, is_answer=is_answer and last
            )
            usage = usage + completion.usage
            requests += candidates[0].requests
            if last:
                every = tuple(requests)
                return tuple(attrs.evolve(c, requests=every) for c in candidates), Completion(
                    completion.samples, usage
                )
            synthesis = candidates[0].text
