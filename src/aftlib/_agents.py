"""Agents: what a topology runs. Most are an engine, a prompt template and sampling parameters.

:class:`Agent` is the base of everything a layer holds: it reads the conversation (an aggregator also
the previous layer's candidates) and gives candidates. :class:`ModelAgent` asks an engine:
:class:`Proposer`, :class:`Aggregator` and :class:`SequentialAggregator` are model agents, and so are the
selection strategies of :mod:`aftlib._select`; :class:`~aftlib.Vote` asks no engine.
"""

from __future__ import annotations

import abc
import hashlib
import inspect
import random
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, ClassVar, NoReturn, TypeVar

import anyio
import attrs
from attrs import define, evolve, field, frozen

from ._budget import fit
from ._confidence import TOP_LOGPROBS, TokenConfidences
from ._errors import ConfigError
from ._logging import context, get_logger
from ._results import Candidate, CandidateDone, Event, TokenDelta
from ._structured import StructuredOutputError
from ._templates import PromptTemplate, as_template
from ._tools import Tool, ToolCallError, ToolChoice, call_problem
from ._types import ChatRequest, Completion, Cut, Delta, Message, Sample, SamplingParams, Usage, tools_of
from ._util import unwrap_group
from .engines._base import Engine

__all__ = (
    "Agent",
    "Aggregator",
    "Emit",
    "ModelAgent",
    "Proposer",
    "SequentialAggregator",
    "Subset",
    "WrappedAgent",
    "emitter",
)

T = TypeVar("T")

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
class Agent(abc.ABC):
    """One node of a topology: it gives candidates for a conversation.

    An aggregator (:attr:`reads_references`) also reads the previous layer's candidates.

    Attributes:
        name: The agent's name in results and events; unique within its layer.
    """

    reads_references: ClassVar[bool] = False
    """Whether the agent reads the previous layer's candidates (an aggregator) or not (a proposer)."""

    name: str = field(kw_only=True)

    @property
    def samples(self) -> int:
        """The candidates the agent gives per run."""
        return 1

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The engines the agent sends requests to."""
        return ()

    def generations(self, references: int) -> int:
        """Samples the agent's engines generate when it reads ``references`` references."""
        return 0

    def describe(self) -> dict[str, Any]:
        """What decides the agent's answers, as JSON (for fingerprints and data cards)."""
        return {"class": type(self).__name__, "name": self.name}

    @property
    def needs_confidence(self) -> bool:
        """True when the agent weighs the candidates it reads by their confidence.

        A topology then makes the agents of the layer before give it (:meth:`with_confidence`).
        """
        return False

    def with_confidence(self, what: str) -> Agent:
        """This agent, its candidates carrying their confidence (:attr:`Candidate.confidence`).

        Args:
            what: What needs the confidence, for the error message.

        Raises:
            ConfigError: The agent's candidates cannot carry a confidence (no model writes them), or its
                engine gives no log probabilities.
        """
        refuse_confidence(self, what)

    @abc.abstractmethod
    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Give the agent's candidates for ``conversation`` (and the previous layer's ``references``).

        Returns:
            The candidates, in sample order, and what its engines returned (samples and usage).
        """


@define(eq=False)
class WrappedAgent(Agent):
    """An agent that changes how another runs: its samples, engines and confidence are the other's.

    Subclasses (:class:`~aftlib.Drafts`, :class:`~aftlib.ConfidenceFilter`) override :meth:`run`.

    Attributes:
        agent: The wrapped agent.
        name: The agent's name; the wrapped agent's by default.
    """

    agent: Agent
    name: str = field(default=attrs.Factory(lambda self: self.agent.name, takes_self=True), kw_only=True)

    @property
    def samples(self) -> int:
        """The wrapped agent's."""
        return self.agent.samples

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The wrapped agent's."""
        return self.agent.engines

    def generations(self, references: int) -> int:
        """The wrapped agent's."""
        return self.agent.generations(references)

    def describe(self) -> dict[str, Any]:
        """The wrapped agent's description, under this agent's name."""
        return {**self.agent.describe(), "name": self.name}

    def with_confidence(self, what: str) -> Agent:
        """This agent, wrapping the wrapped agent made to give confidences."""
        return evolve(self, agent=self.agent.with_confidence(what))


def refuse_confidence(agent: Agent, what: str) -> NoReturn:
    """Raise the error of an agent whose candidates carry no confidence."""
    raise ConfigError(
        f"{what} needs the confidence of agent {agent.name!r}'s candidates, and a {type(agent).__name__} "
        "gives none (no model writes its candidates' tokens)"
    )


@define(eq=False)
class ModelAgent(Agent):
    """An engine, a template and sampling parameters: an agent whose candidates a model writes.

    Use :class:`Proposer` (drafts from the conversation alone) or :class:`Aggregator` (reads the previous
    layer's candidates).

    Attributes:
        engine: The engine that generates. Many agents may share one.
        sampling: How to sample; ``sampling.n`` samples come from one engine request.
        template: The prompt template (a built-in name or a ``.j2`` path): it renders the system message,
            and with a ``user`` block the last user turn too.
        name: The agent's name in results and events; unique within its layer.
        lora: A LoRA adapter name, for engines that serve adapters.
    """

    engine: Engine
    sampling: SamplingParams = field(factory=SamplingParams, kw_only=True)
    template: PromptTemplate = field(converter=as_template, kw_only=True)
    name: str = field(kw_only=True)
    lora: str | None = field(default=None, kw_only=True)

    @property
    def samples(self) -> int:
        """``sampling.n``."""
        return self.sampling.n

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The agent's engine."""
        return (self.engine,)

    def describe(self) -> dict[str, Any]:
        """Class, name, engine and model, template, sampling and LoRA adapter."""
        return {
            **super().describe(),
            "engine": self.engine.name,
            "model": self.engine.model,
            "template": self.template.name,
            "sampling": attrs.asdict(self.sampling),
            "lora": self.lora,
        }

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

    def with_confidence(self, what: str) -> ModelAgent:
        """This agent asking its engine for the top log probabilities, unless it already asks for some."""
        self.engine.check_logprobs(f"agent {self.name!r}, for {what},")
        if self.sampling.logprobs is not None:
            return self
        return evolve(self, sampling=evolve(self.sampling, logprobs=TOP_LOGPROBS))

    def prepare(
        self, conversation: Sequence[Message], references: Sequence[str]
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        """The engine request for ``conversation`` and ``references``, fitted to the engine's context.

        Returns:
            The request and the references cut to fit (each an :class:`~aftlib.Cut`), if any.
        """
        return self._fit(conversation, references if self.reads_references else (), self.sampling)

    def _fit(
        self, conversation: Sequence[Message], references: Sequence[str], sampling: SamplingParams
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        def build(texts: Sequence[str]) -> list[Message]:
            return self.template.messages(conversation, texts)

        tools, choice = tools_of(conversation)
        if choice.mode == "none":  # the model may not call: it is not shown the tools
            tools, choice = (), ToolChoice()
        return self._request_for(build, references, sampling, tools=tools, tool_choice=choice)

    def _request_for(
        self,
        build: Callable[[Sequence[str]], list[Message]],
        references: Sequence[str],
        sampling: SamplingParams,
        *,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        """The request whose messages ``build`` makes from the references that fit the engine's context.

        It carries the priority of the step it is built in (:mod:`._priority`, the request's default),
        and the conversation's tools when the agent's model may call them.
        """
        messages, fitted, cuts = fit(self.engine, build, references, sampling)
        choice = ToolChoice() if tool_choice is None else tool_choice
        return ChatRequest(messages, fitted, self.lora, tools=tools, tool_choice=choice), cuts

    async def fitted(self, prepare: Callable[[], T]) -> T:
        """Run ``prepare`` (which renders prompts and counts their tokens) off the event loop.

        Fitting a prompt to the context renders the chat template and tokenizes, which can take
        milliseconds on long prompts: done in a worker thread, it does not stall other requests' token
        streams. Engines that count no tokens (no context window) render on the loop, at no cost.
        """
        if self.engine.context_window is None:
            return prepare()
        return await anyio.to_thread.run_sync(prepare)

    def _check_format(self, request: ChatRequest, completion: Completion) -> None:
        """Raise :class:`~aftlib.StructuredOutputError` for a sample that is not the JSON asked for."""
        fmt = request.sampling.response_format
        if fmt is None:
            return
        for sample in completion.samples:
            problem = fmt.problem(sample.text)
            if problem is not None:
                can = "constrained" if self.engine.supports_structured_outputs else "cannot constrain"
                cut = " (cut off at max_tokens)" if sample.finish_reason == "length" else ""
                raise StructuredOutputError(
                    f"agent {self.name!r}: sample {sample.index} is {problem}{cut}; engine "
                    f"{self.engine.name!r} {can} decoding to the response_format ({fmt.type})"
                )

    def tool_problem(self, request: ChatRequest, sample: Sample) -> str | None:
        """Why a sample's tool calls are unusable (as the engine read them, then against the tools)."""
        problem = sample.tool_error or call_problem(sample.tool_calls, request.tools, request.tool_choice)
        if problem is None:
            return None
        if sample.tool_error is None and sample.tool_calls:
            problem = f"a bad tool call: {problem}"
        return problem + (" (cut off at max_tokens)" if sample.finish_reason == "length" else "")

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
            request, cuts = await self.fitted(partial(self.prepare, conversation, references))
            return await self._ask(request, cuts, layer=layer, emit=emit, is_answer=is_answer)

    async def _ask(
        self,
        request: ChatRequest,
        cuts: tuple[Cut, ...],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool,
        index: int = 0,
        read: tuple[int, ...] | None = None,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Send ``request`` and make its samples candidates, numbered from ``index``."""
        log = get_logger(__name__)
        if cuts:
            log.info(
                "references cut to fit the context", cuts=len(cuts), max_tokens=request.sampling.max_tokens
            )
        log.debug("request", n=request.sampling.n, priority=request.priority)
        completion: Completion | None = None
        if emit is None:  # no one watches the tokens: let the engine skip streaming them
            completion = await self.engine.generate(request)
        else:
            async with self.engine.stream(request) as items:
                async for item in items:
                    if isinstance(item, Delta):
                        if item.text:
                            await emit(TokenDelta(layer, self.name, index + item.index, item.text, is_answer))
                    else:
                        completion = item
        if completion is None:
            raise RuntimeError(f"engine {self.engine.name!r} ended a stream without a completion")
        self._check_format(request, completion)
        problems = {s.index: self.tool_problem(request, s) for s in completion.samples}
        if is_answer and (bad := next(((i, p) for i, p in sorted(problems.items()) if p), None)):
            raise ToolCallError(f"agent {self.name!r}: the answer (sample {bad[0]}) has {bad[1]}")
        candidates = tuple(
            Candidate(
                layer,
                self.name,
                index + s.index,
                s.text,
                s.finish_reason,
                completion.usage.prompt_tokens,
                s.completion_tokens,
                cuts,
                (request,),
                read,
                confidence=None if s.logprobs is None else TokenConfidences.of(s.logprobs),
                tool_calls=s.tool_calls,
                tool_error=problems[s.index],
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
class Proposer(ModelAgent):
    """An agent that drafts from the conversation alone (the AFT proposal prompt by default)."""

    template: PromptTemplate = field(
        factory=lambda: PromptTemplate("aft_propose"), converter=as_template, kw_only=True
    )
    name: str = field(default="proposer", kw_only=True)


def _check_k(_: object, __: object, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(
            f"subset must be a number of references of at least 1, got {value!r}", path="subset"
        )


def _check_drop(_: object, __: object, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"drop is a probability in [0, 1), got {value!r}", path="drop")


@frozen
class Subset:
    """Read a seeded random subset of the previous layer's candidates instead of all of them.

    Each sample of the aggregator reads its own draw (so an aggregator with ``n`` samples sends ``n``
    requests of one sample each; without a subset it sends one request of ``n``). The draw depends only
    on ``seed``, the conversation, the layer, the agent and the sample index: the same run reads the same
    references, and the positions read are recorded on the candidate (:attr:`Candidate.read`).

    Attributes:
        k: References each sample reads (None: all of them, for ``drop`` alone). It must not exceed the
            candidates of the layer before (checked when the topology is built).
        drop: The chance of leaving out each reference read (as moa-llm and mixture-llm offer); one is
            always kept.
        seed: Seeds the draws.
    """

    k: int | None = field(default=None, validator=_check_k)
    drop: float = field(default=0.0, converter=float, validator=_check_drop)
    seed: int = 0

    def choose(self, count: int, *key: object) -> tuple[int, ...]:
        """The positions (ascending) of the references one sample reads, out of ``count``."""
        digest = hashlib.sha256(repr((self.seed, *key)).encode()).digest()
        rng = random.Random(digest)
        picked = (
            sorted(rng.sample(range(count), min(self.k, count))) if self.k is not None else list(range(count))
        )
        if self.drop:
            kept = [i for i in picked if rng.random() >= self.drop]
            picked = kept or picked[:1]
        return tuple(picked)


@define(eq=False)
class Aggregator(ModelAgent):
    """An agent that reads the previous layer's candidates (the AFT aggregation prompt by default).

    Attributes:
        shuffle: A seed to shuffle the references with, per conversation (the same conversation always gets
            the same order); None keeps them in layer order (agent, then sample index).
        references: Read a seeded random :class:`Subset` of the references per sample instead of all of
            them (Recursive Self-Aggregation); None reads them all, in one request for the ``n`` samples.
    """

    reads_references: ClassVar[bool] = True
    template: PromptTemplate = field(
        factory=lambda: PromptTemplate("aft_aggregate"), converter=as_template, kw_only=True
    )
    name: str = field(default="aggregator", kw_only=True)
    shuffle: int | None = field(default=None, kw_only=True)
    references: Subset | None = field(default=None, kw_only=True)

    def describe(self) -> dict[str, Any]:
        """As :meth:`ModelAgent.describe`, with the shuffle and the reference subset."""
        subset = None if self.references is None else attrs.asdict(self.references)
        return {**super().describe(), "shuffle": self.shuffle, "references": subset}

    def generations(self, references: int) -> int:
        """``sampling.n``, one per request with a subset."""
        return self.sampling.n

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Aggregate all references in one request, or, with a subset, each sample its own draw."""
        if self.references is None or not references:
            return await super().run(conversation, references, layer=layer, emit=emit, is_answer=is_answer)
        subset = self.references
        with context(layer=layer, agent=self.name):
            single = evolve(self.sampling, n=1)
            turns = [m.content for m in conversation]
            results: dict[int, tuple[tuple[Candidate, ...], Completion]] = {}

            async def one(index: int) -> None:
                read = subset.choose(len(references), turns, layer, self.name, index)
                texts = [references[i] for i in read]
                ordered = self.order(conversation, texts)
                request, cuts = await self.fitted(partial(self._fit, conversation, ordered, single))
                results[index] = await self._ask(
                    request, cuts, layer=layer, emit=emit, is_answer=is_answer, index=index, read=read
                )

            with unwrap_group():
                async with anyio.create_task_group() as tg:
                    for index in range(self.sampling.n):
                        tg.start_soon(one, index)
        done = [results[i] for i in sorted(results)]
        samples = tuple(s for _, completion in done for s in completion.samples)
        return tuple(c for candidates, _ in done for c in candidates), Completion(
            tuple(attrs.evolve(sample, index=i) for i, sample in enumerate(samples)),
            Usage.sum(completion.usage for _, completion in done),
        )

    def prepare(
        self, conversation: Sequence[Message], references: Sequence[str]
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        """Like :meth:`ModelAgent.prepare`, with the references shuffled first if :attr:`shuffle` is set."""
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
        return ModelAgent.prepare(self, conversation, references)

    def generations(self, references: int) -> int:
        """Samples generated over ``references`` references: one per window."""
        return 1 + -(-max(references - self.window, 0) // (self.window - 1))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.window < 2:
            raise ConfigError(f"agent {self.name!r}: window must be at least 2, got {self.window}")
        if self.references is not None:
            raise ConfigError(
                f"agent {self.name!r}: a sequential aggregator reads every reference, window by window; "
                "a reference subset would apply to each window, not to the layer (use an Aggregator)"
            )
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
