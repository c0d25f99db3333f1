"""Layers and topologies: how agents are wired into a propose-and-aggregate pipeline."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import attrs
from attrs import define, field, frozen

from ._agents import Agent, Emit, EventCallback, ModelAgent, Subset, emitter
from ._drafting import Drafts, TokenMeter, draft_budget
from ._errors import ConfigError, EngineError, QuorumError
from ._extract import AnswerExtractor
from ._logging import get_logger
from ._priority import next_order, priority, step
from ._results import (
    AgentFailure,
    AnswerDone,
    Candidate,
    Event,
    LayerDone,
    LayerResult,
    References,
    Result,
    TokenDelta,
)
from ._streams import DEFAULT_BUFFER, move_on_after, producer_stream
from ._tools import calls_key
from ._types import Completion, Message, Usage, as_conversation
from ._util import unwrap_group
from .engines._base import Engine
from .engines._pool import EnginePool

__all__ = ("EarlyExit", "Layer", "Topology")


def _agents(value: Iterable[Agent] | Agent) -> tuple[Agent, ...]:
    return (value,) if isinstance(value, Agent) else tuple(value)


def _check_agents(_: object, __: object, agents: tuple[Agent, ...]) -> None:
    if not agents:
        raise ConfigError("a layer needs at least one agent")
    for agent in agents:
        if not isinstance(agent, Agent):
            raise ConfigError(f"a layer holds agents, got {type(agent).__name__}")
    names = [a.name for a in agents]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(
            f"agent names in a layer must be unique, {', '.join(map(repr, duplicates))} repeats; "
            "pass name=... to each agent"
        )


@frozen
class Layer:
    """Agents that run concurrently on the same input.

    By default a layer waits for every agent, and one failed agent fails the run, as the AFT reference
    does. ``min_candidates`` makes it tolerate failures: it needs only that many candidates (an agent with
    ``n`` samples gives ``n`` at once), and fails with :class:`~aftlib.QuorumError` as soon as failures
    leave too few. Without a ``timeout`` it goes on the moment the quorum is in; with one, it waits for
    the other agents until the timeout, then goes on with what it has if that reaches the quorum. Agents
    still running when the layer goes on are cancelled, and their requests aborted in the engines. Agents
    that gave no candidates are listed in :attr:`LayerResult.failures`. The timeout counts the engines'
    time only: while the layer waits for a slow event consumer (a streaming client, an ``on_event``
    callback), its clock stops.

    Args:
        agents: The agents, or a single agent. Their candidates come out in agent order, then sample index.
        min_candidates: Candidates needed to go on; None needs all of them.
        timeout: Seconds the layer may run; None waits as long as its agents take.

    Raises:
        ConfigError: No agents, duplicate names, or a quorum or timeout out of range.
    """

    agents: tuple[Agent, ...] = field(converter=_agents, validator=_check_agents)
    min_candidates: int | None = field(default=None, kw_only=True)
    timeout: float | None = field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.min_candidates is not None and not 1 <= self.min_candidates <= self.expected:
            raise ConfigError(
                f"min_candidates must be between 1 and the {self.expected} candidates the layer's agents "
                f"give, got {self.min_candidates}",
                path="min_candidates",
            )
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(
                f"timeout must be a positive number of seconds, got {self.timeout}", path="timeout"
            )

    @property
    def expected(self) -> int:
        """The most candidates the layer gives: its agents' samples (a ``Drafts`` may give fewer)."""
        return sum(agent.samples for agent in self.agents)

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        index: int,
        emit: Emit | None,
    ) -> LayerResult:
        """Run every agent at once and gather their candidates, as the quorum and timeout allow.

        Raises:
            QuorumError: Failed or late agents left fewer candidates than the layer needs.
        """
        start = time.perf_counter()
        log = get_logger(__name__, layer=index)
        need = self.expected if self.min_candidates is None else self.min_candidates
        outcomes: dict[int, tuple[tuple[Candidate, ...], Completion]] = {}
        errors: dict[int, EngineError] = {}
        got, possible = 0, self.expected
        quorum = self.min_candidates is not None

        async def run_agent(slot: int, agent: Agent, group: anyio.abc.TaskGroup) -> None:
            nonlocal got, possible
            try:
                outcome = await agent.run(conversation, references, layer=index, emit=timed_emit)
            except EngineError as exc:
                errors[slot] = exc
                possible -= agent.samples
                log.warning("agent failed", agent=agent.name, error=f"{type(exc).__name__}: {exc}")
                if possible < need:  # the quorum cannot be reached: stop waiting for the others
                    group.cancel_scope.cancel()
                return
            outcomes[slot] = outcome
            got += len(outcome[0])
            possible -= agent.samples - len(outcome[0])  # a drafter may give fewer than it could
            if quorum and got >= need and (self.timeout is None or len(outcomes) == len(self.agents)):
                group.cancel_scope.cancel()  # the agents still running are not needed

        timed_emit: Emit | None = None
        with move_on_after(self.timeout) as clock:
            if emit is not None:

                async def timed_emit(event: Event) -> None:
                    with clock.paused():  # a slow consumer's time is not the engines'
                        await emit(event)

            with unwrap_group():
                async with anyio.create_task_group() as tg:
                    for slot, agent in enumerate(self.agents):
                        tg.start_soon(run_agent, slot, agent, tg)
        failures = []
        for slot, agent in enumerate(self.agents):
            if slot in errors:
                error = errors[slot]
                failures.append(AgentFailure(index, agent.name, "error", f"{type(error).__name__}: {error}"))
            elif slot not in outcomes:
                late = clock.expired
                failures.append(AgentFailure(index, agent.name, "timeout" if late else "cancelled"))
        if (got < need) if quorum else bool(failures):
            detail = "; ".join(f"{f.agent} {f.error or f.reason}" for f in failures)
            raise QuorumError(
                f"layer {index} got {got} of the {need} candidates it needs; {detail}",
                failures=tuple(failures),
            ) from next(iter(errors.values()), None)
        if failures:
            log.info("layer went on without some agents", candidates=got, failed=[f.agent for f in failures])
        done = [outcomes[slot] for slot in sorted(outcomes)]
        every = [c for candidates, _ in done for c in candidates]
        malformed = tuple(c for c in every if c.tool_error is not None)
        if malformed:
            log.info(
                "drafts with unusable tool calls dropped",
                dropped=len(malformed),
                errors=[f"{c.agent}[{c.index}]: {c.tool_error}" for c in malformed],
            )
        return LayerResult(
            index,
            tuple(c for c in every if c.tool_error is None),
            Usage.sum(completion.usage for _, completion in done),
            time.perf_counter() - start,
            {self.agents[slot].name: outcomes[slot][1].usage for slot in sorted(outcomes)},
            tuple(failures),
            malformed,
        )


def _layers(value: Iterable[Layer | Agent | Iterable[Agent]]) -> tuple[Layer, ...]:
    return tuple(v if isinstance(v, Layer) else Layer(v) for v in value)


def _check_share(_: object, __: object, value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"min_agreement is a share in (0, 1], got {value!r}", path="min_agreement")


def _check_by(_: object, __: object, value: str) -> None:
    if value not in ("answer", "text"):
        raise ConfigError(f"by is 'answer' or 'text', got {value!r}", path="by")


@frozen
class EarlyExit:
    """Stop a run before its remaining layers when a layer's candidates agree.

    After each layer, the candidates' answers (extracted, or their exact texts) are counted; when the most
    common one holds at least ``min_agreement`` of the layer's candidates, the first candidate holding it
    is the answer, and the remaining layers and the final agent are skipped. The result says which layer
    answered (:attr:`Result.exit_layer`) and estimates what was saved.

    Attributes:
        by: ``"answer"`` compares extracted answers (:class:`~aftlib.AnswerExtractor`), ``"text"`` the
            candidates' exact texts.
        min_agreement: The share of the layer's candidates that must agree, in (0, 1] (1: all of them).
        extractor: How answers are found, with ``by="answer"``.
    """

    by: str = field(default="answer", validator=_check_by)
    min_agreement: float = field(default=1.0, converter=float, validator=_check_share)
    extractor: AnswerExtractor = field(factory=AnswerExtractor)

    def agreed(self, candidates: Sequence[Candidate]) -> Candidate | None:
        """The first candidate holding the agreed answer, or None when the candidates do not agree enough."""
        if not candidates:
            return None
        keys = [
            c.reference
            if self.by == "text"
            else calls_key(c.tool_calls)
            if c.tool_calls
            else self.extractor.extract(c.text).answer
            for c in candidates
        ]
        counts = Counter(k for k in keys if k is not None)
        if not counts:
            return None
        key, top = max(counts.items(), key=lambda kv: (kv[1], -keys.index(kv[0])))
        if top < self.min_agreement * len(candidates):
            return None
        return candidates[keys.index(key)]


@define(eq=False)
class Topology:
    """A propose-and-aggregate pipeline: layers of agents, then one final agent that answers.

    Layer 0 drafts from the conversation; each later layer's aggregators read the candidates of the layer
    before; the final agent (usually an :class:`Aggregator` with ``n=1``) reads the last layer and gives
    the answer. ``async with topology:`` starts every distinct engine once and closes them on exit; if
    the engines are already started, just call :meth:`run`.

    Args:
        layers: The layers before the final agent (a layer may be given as a list of agents).
        final: The agent whose single sample is the answer.
        early_exit: Stop before the remaining layers when a layer's candidates agree (off by default).
        budget: The most completion tokens the drafts of one run may use: the proposers of every layer
            before the final agent draw one request per draft (:class:`~aftlib.Drafts`), each started
            only while the budget has room for its ``max_tokens``, and the topology goes on with the
            drafts that fit. None draws every draft.

    Agents that weigh the candidates they read by confidence (:attr:`Agent.needs_confidence`: a
    confidence-weighted :class:`~aftlib.Vote`, a :class:`~aftlib.ConfidenceFilter`) make the agents of
    the layer before ask their engines for log probabilities (:meth:`Agent.with_confidence`); the
    layers hold those agents.

    Raises:
        ConfigError: The first layer holds an aggregator, the final agent is an aggregator with no layer
            before it, the final agent samples more than once, an aggregator reads a subset larger
            than the candidates of the layer before it, a budget is smaller than one draft, or an agent
            needs confidences the layer before cannot give (no model writes its candidates, or an
            engine gives no log probabilities).
    """

    layers: tuple[Layer, ...] = field(converter=_layers)
    final: Agent
    early_exit: EarlyExit | None = field(default=None, kw_only=True)
    budget: int | None = field(default=None, kw_only=True)
    _pool: EnginePool | None = field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.final, Agent):
            raise ConfigError(f"final must be an agent, got {type(self.final).__name__}")
        if self.layers:
            for agent in self.layers[0].agents:
                if agent.reads_references:
                    raise ConfigError(
                        f"agent {agent.name!r} is an aggregator in the first layer; "
                        "it has no candidates to read"
                    )
        elif self.final.reads_references:
            raise ConfigError("the final aggregator has no layer before it to read")
        for position, agent, population in self._readers():
            subset = getattr(agent, "references", None)
            if isinstance(subset, Subset) and subset.k is not None and subset.k > population:
                raise ConfigError(
                    f"agent {agent.name!r} reads subsets of {subset.k} references, but the layer before it "
                    f"gives {population} candidates",
                    path=f"{position}.references.subset",
                )
        if self.final.samples != 1:
            raise ConfigError(
                f"the final agent samples once; got n={self.final.samples}",
                path="final.sampling.n",
            )
        if self.budget is not None:
            self._bound_drafts(self.budget)
        self._give_confidence()

    def _bound_drafts(self, budget: int) -> None:
        """Draw the drafts of the layers before the final agent one request each, within ``budget``."""
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"budget is a number of tokens of at least 1, got {budget!r}", path="budget")
        layers = []
        for layer in self.layers:
            agents = [
                Drafts(a) if isinstance(a, ModelAgent) and not a.reads_references else a for a in layer.agents
            ]
            layers.append(attrs.evolve(layer, agents=agents))
        self.layers = tuple(layers)
        drafters = [a for layer in self.layers for a in layer.agents if isinstance(a, Drafts)]
        if not drafters:
            raise ConfigError(
                "a budget bounds the proposers' drafts, and this topology has none", path="budget"
            )
        largest = max(drafters, key=lambda a: a.max_tokens)
        if budget < largest.max_tokens:
            raise ConfigError(
                f"a budget of {budget} tokens is smaller than one draft of agent {largest.name!r} "
                f"(max_tokens {largest.max_tokens}): nothing could be drafted; raise the budget or lower "
                "max_tokens",
                path="budget",
            )

    def _give_confidence(self) -> None:
        """Make the layers before the agents that weigh by confidence give it."""
        readers = [(index, a) for index, layer in enumerate(self.layers[1:]) for a in layer.agents]
        if self.layers:
            readers.append((len(self.layers) - 1, self.final))
        layers = list(self.layers)
        for index, reader in readers:
            if not reader.needs_confidence:
                continue
            what = f"the confidence that agent {reader.name!r} weighs candidates by"
            try:
                agents = [agent.with_confidence(what) for agent in layers[index].agents]
            except ConfigError as exc:
                raise ConfigError(exc.message, path=f"layers[{index}]") from None
            layers[index] = attrs.evolve(layers[index], agents=agents)
        self.layers = tuple(layers)

    def _readers(self) -> list[tuple[str, Agent, int]]:
        """Every agent that reads references, where it is, and the candidates of the layer before it."""
        out = []
        for index, layer in enumerate(self.layers[1:], start=1):
            out += [(f"layers[{index}]", a, self.layers[index - 1].expected) for a in layer.agents]
        if self.layers:
            out.append(("final", self.final, self.layers[-1].expected))
        return [(where, agent, population) for where, agent, population in out if agent.reads_references]

    @property
    def agents(self) -> tuple[Agent, ...]:
        """Every agent, layer by layer, the final one last."""
        return (*(a for layer in self.layers for a in layer.agents), self.final)

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The distinct engines the agents use, in first-use order."""
        seen: dict[int, Engine] = {}
        for agent in self.agents:
            for engine in agent.engines:
                seen.setdefault(id(engine), engine)
        return tuple(seen.values())

    @property
    def generations_per_query(self) -> int:
        """How many samples one run generates."""
        total, references = 0, 0
        for layer in self.layers:
            counts = [agent.generations(references) for agent in layer.agents]
            total += sum(counts)
            references = sum(agent.samples for agent in layer.agents)
        return total + self.final.generations(references)

    async def __aenter__(self) -> Topology:
        pool = EnginePool(self.engines)
        await pool.__aenter__()
        self._pool = pool
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.__aexit__(exc_type, exc_val, exc_tb)

    async def run(
        self,
        conversation: Sequence[Mapping[str, Any]] | str,
        *,
        on_event: EventCallback | None = None,
        on_answer: EventCallback | None = None,
        order: int | None = None,
        tools: Any = None,
        tool_choice: Any = None,
    ) -> Result:
        """Run the pipeline on one conversation.

        Args:
            conversation: ``[{"role": ..., "content": ...}, ...]`` ending with a user turn (or a tool's
                result), or a string for a single user turn; a :class:`~aftlib.Conversation` brings its
                tools.
            on_event: Called (and awaited, if it returns an awaitable) with every :class:`Event`, in order,
                in the calling task. A slow callback slows the run down (the events wait in a bounded
                buffer) but never counts against a layer's or an engine's timeout.
            on_answer: Called with the answer's :class:`TokenDelta` events only, as they are generated;
                without ``on_event`` only the final agent streams, so this costs little (the runner uses it
                for the time to the first answer token).
            order: The run's age among runs that share the engines, for request priorities (lower is
                older, and goes first within a step); None takes the next number of a process-wide
                count. The runner passes one order for every turn of a record.
            tools: Tools every model agent may call (:class:`~aftlib.Tool` objects or OpenAI's tool
                objects): proposers may draft calls, a vote counts them, aggregators are shown them, and
                the answer may call tools (:attr:`Result.tool_calls <aftlib.Result.tool_calls>`).
            tool_choice: ``"auto"`` (default), ``"none"``, ``"required"`` or a named function, for
                every agent that asks a model.

        Returns:
            The answer with every layer's candidates and the tokens used.

        Raises:
            InputError: The conversation is malformed.
            EngineError: An engine failed.
        """
        messages = as_conversation(conversation, tools=tools, tool_choice=tool_choice)
        emit, answer = emitter(on_event), emitter(on_answer)
        if emit is None:  # no one watches every token: drafts need not stream
            return await self._run(messages, None, answer_emit=answer, order=order)
        result: Result | None = None
        async with self._stream(messages, order=order) as events:
            async for event in events:
                await emit(event)
                if answer is not None and isinstance(event, TokenDelta) and event.is_answer:
                    await answer(event)
                if isinstance(event, AnswerDone):
                    result = event.result
        if result is None:
            raise RuntimeError("the run ended without an answer")
        return result

    async def _run(
        self,
        conversation: tuple[Message, ...],
        emit: Emit | None,
        *,
        answer_emit: Emit | None = None,
        order: int | None = None,
    ) -> Result:
        """Run every layer, then the final agent, each step's requests at its priority (:mod:`._priority`)."""
        age = next_order() if order is None else order
        start = time.perf_counter()
        log = get_logger(__name__, layers=len(self.layers))
        layers: list[LayerResult] = []
        references = References(())
        meter = None if self.budget is None else TokenMeter(self.budget)  # shared by every drafting layer
        for index, layer in enumerate(self.layers):
            with step(priority(len(self.layers) - index, age)), draft_budget(meter):
                done = await layer.run(conversation, references, index=index, emit=emit)
            layers.append(done)
            references = References(done.candidates)
            log.debug("layer done", layer=index, candidates=len(done.candidates))
            if emit is not None:
                await emit(LayerDone(done))
            agreed = None if self.early_exit is None else self.early_exit.agreed(done.candidates)
            if agreed is not None:
                result = await self._exit_early(agreed, layers, start, emit)
                if emit is None and answer_emit is not None:
                    await answer_emit(TokenDelta(agreed.layer, agreed.agent, agreed.index, agreed.text, True))
                return result
        final_emit = emit
        if emit is None and answer_emit is not None:

            async def final_emit(event: Event) -> None:  # only the answer's tokens, nothing else
                if isinstance(event, TokenDelta) and event.is_answer:
                    await answer_emit(event)

        with step(priority(0, age)):
            (answer,), completion = await self.final.run(
                conversation, references, layer=len(self.layers), emit=final_emit, is_answer=True
            )
        result = Result(
            answer,
            tuple(layers),
            Usage.sum([*(layer.usage for layer in layers), completion.usage]),
            time.perf_counter() - start,
            completion.usage,
        )
        if emit is not None:
            await emit(AnswerDone(result))
        return result

    async def _exit_early(
        self, answer: Candidate, layers: list[LayerResult], start: float, emit: Emit | None
    ) -> Result:
        """The result of a run whose layer ``answer.layer`` agreed: the skipped layers' work is estimated."""
        references = sum(agent.samples for agent in self.layers[answer.layer].agents)
        skipped = 0
        for layer in self.layers[answer.layer + 1 :]:
            skipped += sum(agent.generations(references) for agent in layer.agents)
            references = sum(agent.samples for agent in layer.agents)
        skipped += self.final.generations(references)
        samples = [c for layer in layers for c in layer.candidates]
        per_sample = sum(c.completion_tokens for c in samples) / max(len(samples), 1)
        result = Result(
            answer,
            tuple(layers),
            Usage.sum(layer.usage for layer in layers),
            time.perf_counter() - start,
            Usage(),
            exit_layer=answer.layer,
            saved_generations=skipped,
            saved_tokens=round(skipped * per_sample),
        )
        get_logger(__name__).debug("early exit", layer=answer.layer, saved_generations=skipped)
        if emit is not None:
            await emit(TokenDelta(answer.layer, answer.agent, answer.index, answer.text, True))
            await emit(AnswerDone(result))
        return result

    def stream(
        self,
        conversation: Sequence[Mapping[str, Any]] | str,
        *,
        buffer: int = DEFAULT_BUFFER,
        tools: Any = None,
        tool_choice: Any = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Run the pipeline in a task the block owns and give its events as they happen.

        Use it as ``async with topology.stream(conversation) as events: async for event in events: ...``;
        the last event is :class:`AnswerDone`. Leaving the block early cancels the run and aborts its
        requests in the engines. When the run fails, iterating raises its error (a
        :class:`~aftlib.QuorumError`, an :class:`~aftlib.EngineError`) after the events that came before
        it, whatever the consumer's speed.

        Args:
            conversation: As for :meth:`run`.
            buffer: Events held for a consumer that has not taken them yet; a slower consumer makes the
                run wait (its time does not count against timeouts).
            tools: As for :meth:`run`.
            tool_choice: As for :meth:`run`.

        Raises:
            InputError: The conversation, its tools or the tool choice are malformed (raised before
                anything runs).
        """
        messages = as_conversation(conversation, tools=tools, tool_choice=tool_choice)
        return self._stream(messages, buffer=buffer)

    def _stream(
        self, messages: tuple[Message, ...], *, buffer: int = DEFAULT_BUFFER, order: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        async def produce(send: Any) -> None:
            await self._run(messages, send.send, order=order)

        return producer_stream(produce, buffer=buffer)
