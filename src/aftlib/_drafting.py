"""Drafting that spends tokens where they pay: drafts one request each, stopped or skipped when not needed.

:class:`Drafts` wraps a proposer. Instead of one request of ``n`` samples it sends ``n`` requests of one
sample (seeds ``seed``, ``seed + 1``, ...), streams each, and may stop early:

- **online stopping** (:class:`OnlineStop`, DeepConf's online mode, arXiv 2508.15260): a draft whose
  confidence over its last ``window`` tokens falls below a threshold is stopped mid-stream, its engine
  request aborted so the rest is never generated, and it is dropped (a cut-off draft has no answer).
  The threshold is fixed, or calibrated per prompt on the first ``warmup`` drafts, which run to the end:
  the threshold keeps the ``keep`` share of them (DeepConf-high keeps 90 %, DeepConf-low 10 %);
- **adaptive sampling** (:class:`Consensus`, adaptive self-consistency): drafts are drawn ``wave`` at a
  time, and drawing stops as soon as at least ``min_drafts`` finished drafts agree on an answer by the
  ``agreement`` share; drafts still running are cancelled;
- **a token budget** (:attr:`Topology.budget <aftlib.Topology.budget>`): a draft starts only while the
  budget has room for its ``max_tokens``; when it finishes, what it did not use goes back. The drafts
  never use more than the budget and are never cut by it.

What was not generated is estimated in :attr:`Usage.saved_tokens <aftlib.Usage.saved_tokens>`: for each
draft stopped, cancelled or never drawn, the mean length of the finished drafts less what it generated.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

import anyio
import attrs
from attrs import define, evolve, field, frozen

from ._agents import Agent, Emit, ModelAgent, WrappedAgent
from ._confidence import Confidence, TokenConfidences, quantile, token_confidence
from ._errors import ConfigError, EngineError
from ._extract import AnswerExtractor
from ._logging import context, get_logger
from ._results import Candidate, CandidateDone, TokenDelta
from ._tools import calls_key
from ._types import ChatRequest, Completion, Cut, Delta, Message, Sample, TokenLogprob, Usage
from ._util import unwrap_group

__all__ = ("Consensus", "Drafts", "NoDraftsError", "OnlineStop", "TokenMeter", "draft_budget")


class NoDraftsError(EngineError):
    """Every draft of an agent was stopped for low confidence: there is nothing to read."""


def _share(name: str, *, closed_low: bool = False) -> Any:
    def check(_: object, __: object, value: float) -> None:
        low_ok = value >= 0 if closed_low else value > 0
        if not (low_ok and value <= 1):
            interval = "[0, 1]" if closed_low else "(0, 1]"
            raise ConfigError(f"{name} is a share in {interval}, got {value!r}", path=name)

    return check


def _count(name: str, *, optional: bool = False) -> Any:
    def check(_: object, __: object, value: int | None) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} is a whole number of at least 1, got {value!r}", path=name)

    return check


def _check_threshold(_: object, __: object, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ConfigError(f"threshold is a finite confidence, got {value!r}", path="threshold")


@frozen
class OnlineStop:
    """Stop a draft mid-stream when its confidence over its last ``window`` tokens falls below a threshold.

    Give ``threshold`` (a fixed token confidence) or ``warmup`` (calibrate per prompt), not both.

    Attributes:
        threshold: The group confidence below which a draft stops.
        warmup: Drafts run to the end first; the threshold is the ``1 - keep`` quantile of their lowest
            group confidences. Must be fewer than the drafts.
        keep: With ``warmup``, the share of warm-up drafts the threshold would have kept, in (0, 1]
            (0.9: DeepConf-high, stops little; 0.1: DeepConf-low, stops much).
        window: Tokens per group: a draft is judged once it has a full window, on its last ``window``
            tokens.
    """

    threshold: float | None = field(default=None, validator=_check_threshold)
    warmup: int | None = field(default=None, validator=_count("warmup", optional=True))
    keep: float = field(default=0.9, converter=float, validator=_share("keep"))
    window: int = field(default=2048, validator=_count("window"))

    def __attrs_post_init__(self) -> None:
        if (self.threshold is None) == (self.warmup is None):
            raise ConfigError(
                "give a fixed threshold or a number of warmup drafts to calibrate it on, not "
                + ("both" if self.threshold is not None else "neither"),
                path="warmup" if self.threshold is not None else "threshold",
            )

    def calibrate(self, drafts: Sequence[TokenConfidences]) -> float:
        """The threshold from finished warm-up drafts: the ``1 - keep`` quantile of their lowest groups."""
        confidence = Confidence("lowest_group", window=self.window)
        scores = [s for s in (confidence.score(d) for d in drafts) if s is not None]
        return quantile(scores, 1 - self.keep) if scores else -math.inf


@frozen
class Consensus:
    """Stop drawing drafts once enough of the finished ones agree on an answer.

    Attributes:
        agreement: The share of the finished drafts the most common answer must hold, in (0, 1].
        min_drafts: Finished drafts needed before agreement counts.
        extractor: How answers are found (as for :class:`~aftlib.Vote`).
    """

    agreement: float = field(default=0.75, converter=float, validator=_share("agreement"))
    min_drafts: int = field(default=3, validator=_count("min_drafts"))
    extractor: AnswerExtractor = field(factory=AnswerExtractor)

    def reached(self, texts: Sequence[str]) -> bool:
        """True when ``texts`` (finished drafts) are enough and agree enough."""
        return self.agrees([self.extractor.extract(t).answer for t in texts])

    def agrees(self, answers: Sequence[str | None]) -> bool:
        """True when the finished drafts' ``answers`` (None: no answer) are enough and agree enough."""
        if len(answers) < self.min_drafts:
            return False
        counts = Counter(a for a in answers if a is not None)
        return bool(counts) and max(counts.values()) >= self.agreement * len(answers)


@define
class TokenMeter:
    """The completion tokens one run's drafts may still use: reserved at a draft's start, settled at its end.

    Attributes:
        limit: The budget.
        spent: Tokens the finished drafts used.
        reserved: Tokens held for the drafts running.
    """

    limit: int
    spent: int = 0
    reserved: int = 0

    def reserve(self, tokens: int) -> bool:
        """Hold ``tokens`` for a draft, if the budget has room for them."""
        if self.spent + self.reserved + tokens > self.limit:
            return False
        self.reserved += tokens
        return True

    def settle(self, reserved: int, used: int) -> None:
        """A draft that held ``reserved`` tokens used ``used``: the rest goes back."""
        self.reserved -= reserved
        self.spent += used


_meter: ContextVar[TokenMeter | None] = ContextVar("aftlib_draft_budget", default=None)


@contextmanager
def draft_budget(meter: TokenMeter | None) -> Iterator[None]:
    """Within the block, :class:`Drafts` agents (and the tasks they start) draw from ``meter``'s budget."""
    token = _meter.set(meter)
    try:
        yield
    finally:
        _meter.reset(token)


@define
class _Draft:
    """One draft as it streams: its text, its tokens' confidences, how it ended."""

    index: int
    request: ChatRequest
    texts: list[str] = field(factory=list)
    entries: list[TokenLogprob] = field(factory=list)
    deltas: int = 0
    completion: Completion | None = None
    stopped: bool = False
    scope: anyio.CancelScope = field(factory=anyio.CancelScope)

    @property
    def finished(self) -> bool:
        return self.completion is not None and not self.stopped

    @property
    def generated(self) -> int:
        """Tokens the engine generated for it (counted from the stream when it did not finish)."""
        if self.completion is not None:
            return self.completion.usage.completion_tokens
        return self.length

    @property
    def length(self) -> int:
        """Its length in tokens, generated or served from a cache."""
        if self.completion is not None:
            return sum(s.completion_tokens for s in self.completion.samples)
        return max(len(self.entries), self.deltas)

    def answer(self, extractor: AnswerExtractor) -> str | None:
        """What consensus compares: its tool calls (as canonical JSON) if it makes any, else its answer."""
        calls = self.completion.samples[0].tool_calls if self.completion is not None else ()
        return calls_key(calls) if calls else extractor.extract("".join(self.texts)).answer

    def confidences(self) -> TokenConfidences:
        """Its token confidences: from the finished sample, else from what streamed."""
        if self.completion is not None:
            (sample,) = self.completion.samples
            if sample.logprobs is not None:
                return TokenConfidences.of(sample.logprobs)
        return TokenConfidences.of(self.entries)


def _check_agent(agent: Agent) -> None:
    if not isinstance(agent, ModelAgent) or agent.reads_references:
        raise ConfigError(
            f"Drafts wraps a proposer (a model agent that drafts from the conversation), got "
            f"{type(agent).__name__}"
        )


@define(eq=False)
class Drafts(WrappedAgent):
    """A proposer's ``n`` drafts drawn one request each, stopped or skipped when they are not needed.

    See the module's description for online stopping, adaptive sampling and the token budget. Without
    ``stop`` and ``consensus`` it draws every draft at once, ``wave`` at a time if given. Its candidates
    are the drafts that finished, by draft index (a stopped draft's index is missing); the deltas of a
    draft that is stopped or cancelled have streamed already, and no ``CandidateDone`` follows them.

    Attributes:
        agent: The proposer; its ``sampling.n`` is the most drafts, its ``seed`` (random per run when
            unset) seeds draft ``i`` with ``seed + i``, so that a seeded proposer's drafts are the same
            whatever stops them (and shared with other sweep cells through the cache).
        stop: Online stopping, or None.
        consensus: Adaptive sampling, or None.
        wave: Drafts running at once; None runs them all at once (or as many as the budget allows).
        name: The agent's name; the proposer's by default.
    """

    stop: OnlineStop | None = field(default=None, kw_only=True)
    consensus: Consensus | None = field(default=None, kw_only=True)
    wave: int | None = field(default=None, kw_only=True, validator=_count("wave", optional=True))

    def __attrs_post_init__(self) -> None:
        _check_agent(self.agent)
        n = self.proposer.sampling.n
        if self.stop is not None:
            if self.stop.warmup is not None and self.stop.warmup >= n:
                raise ConfigError(
                    f"agent {self.name!r}: {self.stop.warmup} warm-up drafts leave none of its {n} drafts to "
                    "stop; use fewer warm-up drafts or more drafts (sampling.n)",
                    path="stop.warmup",
                )
            self.agent = self.agent.with_confidence(f"the online stopping of agent {self.name!r}")
        if self.consensus is not None and self.consensus.min_drafts > n:
            raise ConfigError(
                f"agent {self.name!r}: consensus needs {self.consensus.min_drafts} drafts, it draws at most "
                f"{n}",
                path="consensus.min_drafts",
            )

    @property
    def proposer(self) -> ModelAgent:
        """The wrapped proposer (checked to be a model agent that reads no references)."""
        assert isinstance(self.agent, ModelAgent)
        return self.agent

    @property
    def max_tokens(self) -> int:
        """The most tokens one draft may generate."""
        return self.proposer.sampling.max_tokens

    def describe(self) -> dict[str, Any]:
        """The proposer's description, with how drafting stops."""

        def spec(value: Any) -> Any:
            return None if value is None else attrs.asdict(value, filter=lambda a, _: a.name != "extractor")

        drafting = {"stop": spec(self.stop), "consensus": spec(self.consensus), "wave": self.wave}
        return {**super().describe(), "drafting": drafting}

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Draw the drafts, stopping and skipping as set; the finished ones are the candidates.

        Raises:
            NoDraftsError: Every draft drawn was stopped for low confidence.
        """
        agent = self.proposer
        with context(layer=layer, agent=self.name):
            request, cuts = await agent.fitted(partial(agent.prepare, conversation, references))
            drawn = await self._draw(request, cuts, layer=layer, emit=emit, is_answer=is_answer)
        candidates, completion = drawn
        if emit is not None:
            for candidate in candidates:
                await emit(CandidateDone(candidate))
        return candidates, completion

    async def _draw(
        self, request: ChatRequest, cuts: tuple[Cut, ...], *, layer: int, emit: Emit | None, is_answer: bool
    ) -> tuple[tuple[Candidate, ...], Completion]:
        log = get_logger(__name__)
        sampling = request.sampling
        total, seed = sampling.n, sampling.seed if sampling.seed is not None else random.getrandbits(30)
        meter = _meter.get()
        stop = self.stop
        threshold = None if stop is None else stop.threshold
        warmup = 0 if stop is None or stop.warmup is None else stop.warmup
        limit = self.wave or total
        drafts: list[_Draft] = []
        running: set[int] = set()
        agreed = False

        def finished() -> list[_Draft]:
            return [d for d in drafts if d.finished]

        def launch(group: anyio.abc.TaskGroup) -> None:
            while not agreed and len(drafts) < total and len(running) < limit:
                if threshold is None and warmup and len(drafts) >= warmup:
                    break  # the threshold waits for the warm-up drafts
                if meter is not None and not meter.reserve(sampling.max_tokens):
                    break
                index = len(drafts)
                one = evolve(sampling, n=1, seed=(seed + index) % 2**31)
                one_request = attrs.evolve(request, sampling=one)
                draft = _Draft(index, one_request)
                drafts.append(draft)
                running.add(index)
                group.start_soon(draw, draft, group)

        async def draw(draft: _Draft, group: anyio.abc.TaskGroup) -> None:
            nonlocal threshold, agreed
            try:
                await self._stream(draft, threshold, layer=layer, emit=emit, is_answer=is_answer)
            finally:
                running.discard(draft.index)
                if meter is not None:
                    meter.settle(sampling.max_tokens, draft.length)
            done = finished()
            if threshold is None and stop is not None and warmup and len(done) >= warmup:
                threshold = stop.calibrate([d.confidences() for d in done[:warmup]])
                log.debug("threshold calibrated", threshold=round(threshold, 4))
            if self.consensus is not None and self.consensus.agrees(
                [d.answer(self.consensus.extractor) for d in done]
            ):
                agreed = True
                for other in drafts:
                    if other.index in running:
                        other.scope.cancel()  # not needed: the drafts agree
                return
            launch(group)

        with unwrap_group():
            async with anyio.create_task_group() as tg:
                launch(tg)
        return self._outcome(drafts, total, threshold, cuts, layer=layer)

    async def _stream(
        self, draft: _Draft, threshold: float | None, *, layer: int, emit: Emit | None, is_answer: bool
    ) -> None:
        """Stream one draft; leave the stream (aborting the request) when its confidence falls too low."""
        window = 0 if self.stop is None else self.stop.window
        recent: deque[float] = deque()
        total = 0.0
        with draft.scope:
            async with self.proposer.engine.stream(draft.request) as items:
                async for item in items:
                    if not isinstance(item, Delta):
                        draft.completion = item
                        continue
                    draft.deltas += 1
                    draft.texts.append(item.text)
                    if emit is not None and item.text:
                        await emit(TokenDelta(layer, self.name, draft.index, item.text, is_answer))
                    for entry in item.logprobs:
                        draft.entries.append(entry)
                        if threshold is None:
                            continue
                        confidence = token_confidence(entry)
                        recent.append(confidence)
                        total += confidence
                        if len(recent) > window:
                            total -= recent.popleft()
                        if len(recent) == window and total / window < threshold:
                            draft.stopped = True
                            break
                    if draft.stopped:
                        break  # leaving the stream aborts the request in the engine

    def _outcome(
        self, drafts: list[_Draft], total: int, threshold: float | None, cuts: tuple[Cut, ...], *, layer: int
    ) -> tuple[tuple[Candidate, ...], Completion]:
        done = [d for d in drafts if d.finished]
        stopped = sum(d.stopped for d in drafts)
        if not drafts:  # the run's budget went to other agents' drafts: nothing to give, nothing lost
            get_logger(__name__).info("no draft: the budget is spent")
            return (), Completion(())
        if not done:
            raise NoDraftsError(
                f"agent {self.name!r} of layer {layer}: every one of its {len(drafts)} drafts fell below the "
                f"confidence threshold {threshold:.4g}; lower the threshold or calibrate it on warm-up drafts"
                if threshold is not None
                else f"agent {self.name!r} of layer {layer}: no draft finished"
            )
        mean = sum(d.length for d in done) / len(done)
        saved = sum(max(mean - d.length, 0.0) for d in drafts if not d.finished)
        saved += (total - len(drafts)) * mean
        prompt = next(d.completion.usage.prompt_tokens for d in done if d.completion is not None)
        usage = Usage(
            prompt * len(drafts),
            sum(d.generated for d in drafts),
            sum(d.completion.usage.cached_tokens for d in done if d.completion is not None),
            len(drafts),
            sum(d.completion.usage.reused_tokens for d in done if d.completion is not None),
            round(saved),
        )
        details = {
            "drafting": {
                "drawn": len(drafts),
                "stopped": stopped,
                "cancelled": len(drafts) - len(done) - stopped,
                **({"threshold": round(threshold, 6)} if threshold is not None else {}),
            }
        }
        samples: list[Sample] = []
        candidates: list[Candidate] = []
        for d in done:
            assert d.completion is not None
            (sample,) = d.completion.samples
            samples.append(evolve(sample, index=d.index))
            candidates.append(
                Candidate(
                    layer,
                    self.name,
                    d.index,
                    sample.text,
                    sample.finish_reason,
                    d.completion.usage.prompt_tokens,
                    sample.completion_tokens,
                    cuts,
                    (d.request,),
                    details=details,
                    confidence=None if sample.logprobs is None else TokenConfidences.of(sample.logprobs),
                    tool_calls=sample.tool_calls,
                    tool_error=self.proposer.tool_problem(d.request, sample),
                )
            )
        get_logger(__name__).debug("drafts", **details["drafting"], saved_tokens=usage.saved_tokens)
        return tuple(candidates), Completion(samples, usage)
