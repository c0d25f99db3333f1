"""An engine whose time follows a continuous-batching GPU server, for tests and benchmarks."""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

import anyio
import anyio.abc
import attrs
from attrs import define, field

from .._errors import ConfigError
from .._types import ChatRequest, Completion, Usage
from ..engines._base import Engine, EngineStream
from ..engines._fake import FakeEngine
from ..engines._wrapper import WrapperEngine

__all__ = ("Lengths", "SimulatedEngine", "SimulatedRequest", "SimulationStats")

Lengths = Callable[[ChatRequest, int], int]
"""``lengths(request, index)`` gives the tokens sample ``index`` of ``request`` generates."""

Policy = Literal["fcfs", "priority"]
_POLICIES: tuple[str, ...] = ("fcfs", "priority")

_drawn: ContextVar[list[int] | None] = ContextVar("aftlib_simulated_lengths", default=None)


def _sized_text(request: ChatRequest, index: int) -> str:
    """The default inner engine's text: as many words (FakeEngine tokens) as the simulated length."""
    lengths = _drawn.get()
    what = (request.messages, request.sampling, request.lora)
    digest = hashlib.sha256(repr(what).encode()).hexdigest()[:8]
    head = f"answer-{digest}-{index}"
    if lengths is None or index >= len(lengths):
        return head
    return " ".join([head, *["x"] * (lengths[index] - 1)])


def _default_inner() -> Engine:
    return FakeEngine(handler=_sized_text, name="simulated")


def _lognormal(mu: float, sigma: float, seed: int) -> Lengths:
    def lengths(request: ChatRequest, index: int) -> int:
        what = repr((seed, request.messages, request.sampling, request.lora, index)).encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(what).digest()[:8], "big"))
        return int(rng.lognormvariate(mu, sigma))

    return lengths


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(
            f"{attribute.name} must be a number of seconds >= 0, got {value!r}", path=attribute.name
        )


def _positive_int(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{attribute.name} must be an integer of at least 1, got {value!r}", path=attribute.name
        )


def _check_policy(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in _POLICIES:
        raise ConfigError(f"unknown policy {value!r}; choose fcfs or priority", path="policy")


@define(eq=False)
class SimulatedRequest:
    """What the simulated scheduler did with one request (times are ``anyio.current_time()`` values).

    Attributes:
        request: The request.
        arrival: When it reached the engine.
        prompt_tokens: Its prompt's tokens (what each of its sequences prefills).
        lengths: The tokens each of its samples generates.
        scheduled: When the first of its sequences entered the running batch, or None.
        finished: When its last sequence produced its last token, or None.
        preemptions: How many times one of its sequences was preempted.
        cancelled: True when the caller gave up on it before it finished.
    """

    request: ChatRequest
    arrival: float
    prompt_tokens: int
    lengths: tuple[int, ...]
    scheduled: float | None = None
    finished: float | None = None
    preemptions: int = 0
    cancelled: bool = False
    _left: int = field(default=0, init=False, repr=False)
    _wakeup: anyio.Event | None = field(default=None, init=False, repr=False)

    @property
    def priority(self) -> int:
        """The request's priority."""
        return self.request.priority

    @property
    def wait(self) -> float | None:
        """Seconds from arrival to its first scheduling, or None while it waits."""
        return None if self.scheduled is None else self.scheduled - self.arrival

    @property
    def latency(self) -> float | None:
        """Seconds from arrival to its last token, or None while it runs."""
        return None if self.finished is None else self.finished - self.arrival


@define(eq=False)
class SimulationStats:
    """What a :class:`SimulatedEngine` has done so far.

    Attributes:
        requests: One entry per request, in arrival order.
        steps: Scheduler steps run (each gives every running sequence one token).
        busy: Seconds the simulated GPU spent running steps.
        generated_tokens: Tokens generated (a preempted sequence keeps its tokens; recomputing them is
            counted in ``recomputed_tokens``, not here).
        prefill_tokens: Prompt tokens prefilled, recomputations included.
        recomputed_tokens: Generated tokens prefilled again after a preemption.
        preemptions: Sequences preempted.
        peak_running: The most sequences in one batch.
        peak_waiting: The most sequences waiting at once.
    """

    requests: list[SimulatedRequest] = field(factory=list)
    steps: int = 0
    busy: float = 0.0
    generated_tokens: int = 0
    prefill_tokens: int = 0
    recomputed_tokens: int = 0
    preemptions: int = 0
    peak_running: int = 0
    peak_waiting: int = 0


@define(eq=False)
class _Sequence:
    """One sample of a request in the scheduler: waiting, running, or done."""

    owner: SimulatedRequest
    index: int
    length: int
    rank: tuple[int, int]
    produced: int = 0
    running: bool = False
    aborted: bool = False

    def __lt__(self, other: _Sequence) -> bool:
        return self.rank < other.rank


@define(eq=False)
class SimulatedEngine(WrapperEngine):
    """An engine that takes the time a continuous-batching server (vLLM) would, in any clock.

    The texts come from an inner engine; the time comes from a simulated scheduler. Each sample of a
    request is a sequence. Sequences wait in a queue; at each step the scheduler moves waiting sequences
    into the running batch (at most ``max_num_seqs``), then runs one step that gives every running
    sequence one token and costs ``step_cost + seq_cost x running`` seconds, plus ``prefill_cost x
    prompt tokens`` for each sequence that entered the batch in this step (there is no prefix cache:
    each of a request's ``n`` sequences prefills the prompt). A sequence leaves the batch when it has
    generated its length (``lengths(request, index)``); a request answers when all its sequences have.
    The GPU is idle (and costs nothing) while no sequence waits or runs. The default costs stand for a
    mid-size model on one GPU (12 ms a step, 0.05 ms a sequence, 0.02 ms a prompt token).

    Scheduling policies, as vLLM's V1 scheduler (``scheduling_policy``):

    - ``"fcfs"``: the waiting queue in arrival order; priorities are ignored.
    - ``"priority"``: the waiting queue ordered by ``(priority, arrival)``, lower first (vLLM's
      ``PriorityRequestQueue``). With ``preempt`` (the default with this policy), a waiting sequence
      that outranks the lowest-ranked running sequence while the batch is full preempts it: the
      preempted sequence goes back to the waiting queue keeping its tokens, and pays prefill again
      for its prompt and the tokens it had generated when it is scheduled again (vLLM's recompute
      preemption). vLLM's V1 scheduler (0.32) preempts only when the KV cache runs out of blocks; here
      the batch size stands for that limit, so a full batch makes room for higher-priority work at
      once. ``preempt=False`` keeps the ordered queue without preemption.

    Time is ``anyio`` time, so the engine runs in real time on asyncio or trio (use tiny costs in
    tests), or in virtual time under trio's ``MockClock(autojump_threshold=0)``, where a benchmark of
    thousands of requests takes seconds. The scheduler needs no task of its own, so the engine needs no
    ``async with`` and works under any wrapper: the waiting requests take turns running its steps (one
    at a time; when that request is done, or cancelled, the oldest waiting one goes on). :attr:`stats`
    records what it did: per request arrival, first scheduling, finish and preemptions, and the busy
    time and tokens of the whole run. A request cancelled by its caller leaves the queue (or the batch)
    at once.

    Args:
        inner: The engine that writes the texts, called once a request's simulated sequences are done
            (its own latency adds to the simulated time). The default is a zero-latency
            :class:`~aftlib.testing.FakeEngine` whose sample ``i`` has as many words (its tokens) as
            the simulated length, so aggregation prompts grow with the drafts they hold.
        policy: ``"fcfs"`` or ``"priority"``.
        preempt: Preempt running sequences for higher-priority waiting ones; None (the default) is
            True with the priority policy. Only the priority policy preempts.
        max_num_seqs: The most sequences in the running batch.
        step_cost: Seconds of one step, whatever the batch.
        seq_cost: Seconds one step adds per running sequence.
        prefill_cost: Seconds per prompt token a sequence prefills when it enters the batch.
        lengths: ``lengths(request, index) -> int`` giving the tokens each sample generates (at least 1,
            at most the request's ``max_tokens``); by default log-normal (``exp`` of a normal with mean
            ``mean_log`` and deviation ``sigma_log``), drawn from a hash of ``seed``, the request's
            messages and sampling and the index: the same request gets the same lengths whatever the
            schedule, so two policies compare on the same work.
        mean_log: The default lengths' log mean (5.0: a median of about 150 tokens).
        sigma_log: The default lengths' log deviation.
        seed: Seeds the default lengths.
        prompt_tokens: ``prompt_tokens(request) -> int``; by default the inner engine's
            :meth:`~aftlib.engines.Engine.count_tokens` of the messages (one token per word for a
            ``FakeEngine``), or a quarter of the characters when it cannot count.
        name: A label for logs and results; the inner engine's name by default.

    Example:
        >>> engine = SimulatedEngine(policy="priority", max_num_seqs=8, step_cost=0.001)
        >>> engine.supports_priority, engine.capacity
        (True, 8)
    """

    inner: Engine = field(factory=_default_inner)
    policy: Policy = field(default="fcfs", kw_only=True, validator=_check_policy)
    preempt: bool | None = field(default=None, kw_only=True)
    max_num_seqs: int = field(default=256, kw_only=True, validator=_positive_int)
    step_cost: float = field(default=0.012, kw_only=True, validator=_non_negative)
    seq_cost: float = field(default=0.00005, kw_only=True, validator=_non_negative)
    prefill_cost: float = field(default=0.00002, kw_only=True, validator=_non_negative)
    lengths: Lengths | None = field(default=None, kw_only=True)
    mean_log: float = field(default=5.0, kw_only=True)
    sigma_log: float = field(default=0.7, kw_only=True)
    seed: int = field(default=0, kw_only=True)
    prompt_tokens: Callable[[ChatRequest], int] | None = field(default=None, kw_only=True)
    stats: SimulationStats = field(factory=SimulationStats, init=False)
    _waiting: list[_Sequence] = field(factory=list, init=False, repr=False)
    _running: list[_Sequence] = field(factory=list, init=False, repr=False)
    _arrivals: Iterator[int] = field(factory=itertools.count, init=False, repr=False)
    _queued: int = field(default=0, init=False, repr=False)
    _driving: bool = field(default=False, init=False, repr=False)
    _waiters: dict[SimulatedRequest, None] = field(factory=dict, init=False, repr=False)
    _step_end: float | None = field(default=None, init=False, repr=False)
    _step_cost: float = field(default=0.0, init=False, repr=False)
    _draw: Lengths = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.preempt is None:
            self.preempt = self.policy == "priority"
        elif self.preempt and self.policy != "priority":
            raise ConfigError("preempt=True needs policy='priority' (fcfs never preempts)", path="preempt")
        self._draw = self.lengths or _lognormal(self.mean_log, self.sigma_log, self.seed)

    @property
    def supports_priority(self) -> bool:
        """True with the priority policy."""
        return self.policy == "priority"

    @property
    def capacity(self) -> int | None:
        """``max_num_seqs``: the sequences one batch runs."""
        return self.max_num_seqs

    @property
    def load(self) -> int:
        """Sequences running or waiting now."""
        return len(self._running) + self.waiting

    @property
    def running(self) -> int:
        """Sequences in the running batch now."""
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Sequences in the waiting queue now."""
        return self._queued

    async def generate(self, request: ChatRequest) -> Completion:
        """Wait for the request's simulated sequences, then give the inner engine's texts."""
        lengths = [
            max(1, min(request.sampling.max_tokens, int(self._draw(request, i))))
            for i in range(request.sampling.n)
        ]
        prompt = self._prompt_tokens(request)
        entry = SimulatedRequest(request, anyio.current_time(), prompt, tuple(lengths))
        entry._left = len(lengths)
        self.stats.requests.append(entry)
        rank = request.priority if self.policy == "priority" else 0
        sequences = [_Sequence(entry, i, n, (rank, next(self._arrivals))) for i, n in enumerate(lengths)]
        for sequence in sequences:
            heapq.heappush(self._waiting, sequence)
        self._queued += len(sequences)
        self.stats.peak_waiting = max(self.stats.peak_waiting, self._queued)
        try:
            await self._until_done(entry)
        except BaseException:
            if entry._left:
                entry.cancelled = True
                for sequence in sequences:
                    if not sequence.aborted and sequence.produced < sequence.length:
                        sequence.aborted = True
                        if not sequence.running:
                            self._queued -= 1
            raise
        token = _drawn.set(lengths)
        try:
            completion = await self.inner.generate(request)
        finally:
            _drawn.reset(token)
        samples = [
            attrs.evolve(s, completion_tokens=lengths[s.index]) if s.index < len(lengths) else s
            for s in completion.samples
        ]
        usage = Usage(prompt, sum(lengths), completion.usage.cached_tokens, 1)
        return Completion(samples, usage)

    async def _until_done(self, entry: SimulatedRequest) -> None:
        """Wait until ``entry`` is done, running the scheduler while no other request does.

        The scheduler needs no task of its own: one waiting request at a time drives it (runs its steps),
        until its own sequences are done; then it hands the scheduler to another waiting request. A
        request that stops waiting (done, or cancelled) while no one drives hands it on too.
        """
        try:
            while entry._left:
                if self._driving:
                    entry._wakeup = anyio.Event()
                    self._waiters[entry] = None
                    try:
                        await entry._wakeup.wait()
                    finally:
                        self._waiters.pop(entry, None)
                    continue
                self._driving = True
                try:
                    while entry._left:
                        await self._step()
                finally:
                    self._driving = False
        finally:
            if not self._driving:
                self._hand_on()

    def _hand_on(self) -> None:
        """Wake the oldest waiting request so that it drives the scheduler."""
        for waiter in self._waiters:
            if waiter._left and waiter._wakeup is not None:
                waiter._wakeup.set()
                return

    async def _step(self) -> None:
        """One scheduler step: admit, run the batch for the step's time, hand out one token each.

        A driver cancelled during a step leaves the step to the next driver, which waits for the same
        end: the step's time does not depend on who drives it.
        """
        if self._step_end is None:
            cost = self._admit()
            cost += self.step_cost + self.seq_cost * len(self._running)
            self._step_end = anyio.current_time() + cost
            self._step_cost = cost
        await anyio.sleep_until(self._step_end)
        self._step_end = None
        self.stats.steps += 1
        self.stats.busy += self._step_cost
        now = anyio.current_time()
        still: list[_Sequence] = []
        for sequence in self._running:
            if sequence.aborted:
                continue
            sequence.produced += 1
            self.stats.generated_tokens += 1
            if sequence.produced < sequence.length:
                still.append(sequence)
                continue
            sequence.running = False
            owner = sequence.owner
            owner._left -= 1
            if not owner._left:
                owner.finished = now
                if owner._wakeup is not None:
                    owner._wakeup.set()
        self._running = still

    def stream(self, request: ChatRequest) -> EngineStream:
        """The completion as one delta per sample, then the completion (no token-by-token streaming)."""
        return Engine.stream(self, request)

    def _prompt_tokens(self, request: ChatRequest) -> int:
        if self.prompt_tokens is not None:
            return int(self.prompt_tokens(request))
        try:
            return self.inner.count_tokens(request.messages)
        except NotImplementedError:
            return sum(len(m.content) // 4 + 4 for m in request.messages)

    def _admit(self) -> float:
        """Move waiting sequences into the batch (preempting when allowed); the prefill seconds."""
        now = anyio.current_time()
        prefill = 0
        self._running = [s for s in self._running if not s.aborted]
        while self._waiting:
            head = self._waiting[0]
            if head.aborted:
                heapq.heappop(self._waiting)
                continue
            if len(self._running) >= self.max_num_seqs:
                if not self.preempt:
                    break
                victim = max(self._running, key=lambda s: s.rank)
                if not head.rank < victim.rank:
                    break
                self._running.remove(victim)
                victim.running = False
                victim.owner.preemptions += 1
                self.stats.preemptions += 1
                heapq.heappush(self._waiting, victim)
                self._queued += 1
            heapq.heappop(self._waiting)
            self._queued -= 1
            head.running = True
            self._running.append(head)
            prefill += head.owner.prompt_tokens + head.produced
            self.stats.recomputed_tokens += head.produced
            if head.owner.scheduled is None:
                head.owner.scheduled = now
        self.stats.prefill_tokens += prefill
        self.stats.peak_running = max(self.stats.peak_running, len(self._running))
        return self.prefill_cost * prefill
