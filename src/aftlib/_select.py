"""Selection aggregators: a model picks the best of the previous layer's candidates, or scores each.

:class:`Select` shows a judge every candidate, numbered, and asks which is best (Universal
Self-Consistency, GenSelect); :class:`BestOfN` asks a scorer to rate each candidate on its own and keeps
the highest rated. Both give one candidate whose text is a candidate of the layer before, unchanged:
the judge's own words are recorded in :attr:`~aftlib.Candidate.details`, never returned as the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar

import anyio
import anyio.abc
from attrs import define, evolve, field

from ._agents import Emit, ModelAgent, refuse_confidence
from ._errors import ConfigError, EngineError
from ._logging import context, get_logger
from ._results import Candidate, CandidateDone, TokenDelta, picked
from ._structured import ResponseFormat
from ._templates import PromptTemplate, as_template
from ._types import ChatRequest, Completion, Cut, Message, SamplingParams, Usage
from ._util import unwrap_group

__all__ = ("FOLLOW_UP", "BestOfN", "Select", "parse_choice", "parse_rating")

FOLLOW_UP = (
    "Your reply does not name one of the {count} numbered candidates. Reply with the number of the best "
    "one alone, from 1 to {count}."
)
"""The user turn of a :class:`Select` retry, after the judge's reply; ``{count}`` is the candidates."""

_NUMBER = r"\**\s*(?:response|solution|candidate)?\s*#?\s*\[*\s*(\d+)"
_VERDICT = re.compile(
    r"\[\[\s*#?\s*(\d+)\s*\]\]"
    rf"|most\s+consistent\s+(?:response|solution|candidate)\s+is\s*:?\s*{_NUMBER}"
    rf"|best\s+(?:response|solution|candidate)\s*(?:is\s*)?:?\s*{_NUMBER}"
    rf"|judge?ment\s*:\s*{_NUMBER}"
    r"|\b(?:response|solution|candidate)\s*#?\s*(\d+)\**\s+is\s+(?:the\s+)?(?:most\s+consistent|best)\b",
    re.IGNORECASE,
)
_BARE = re.compile(r"^\W*(\d+)\W*$")
_MENTION = re.compile(r"\b(?:response|solution|candidate)\s*#?\s*(\d+)\b", re.IGNORECASE)
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def _number(text: str) -> int | None:
    """The number a judge's reply names, before any range check; None when it names none."""
    verdicts = [next(g for g in m.groups() if g is not None) for m in _VERDICT.finditer(text)]
    if verdicts:
        return int(verdicts[-1])
    if bare := _BARE.match(text.strip()):
        return int(bare.group(1))
    mentioned = {int(m.group(1)) for m in _MENTION.finditer(text)}
    return mentioned.pop() if len(mentioned) == 1 else None


def parse_choice(text: str, count: int) -> int | None:
    """The position (from 0) of the candidate a judge's reply chooses among ``count``; None for a bad index.

    The prompts number candidates from 1, so ``Response 3`` is position 2. The reply is read in this
    order, the first rule that applies deciding:

    1. A verdict: ``[[3]]``, "The most consistent response is Response 3", "Best solution: 3" (also
       ``Best response is #3``, ``**Response 3**``), "Judgment: 3", "Response 3 is the best". When the
       reply holds several, the **last** counts (a judge that reasons first concludes last).
    2. A reply that is a number alone, with punctuation around it: ``3``, ``#3``, ``(3).``.
    3. Mentions such as ``Response 3`` or ``solution #3``, if every mention names the same number; mentions
       of different numbers are ambiguous (a bad index), since they may just be a comparison.

    A number outside ``1..count`` is a bad index (the other numbers of the reply are not tried).

    Example:
        >>> parse_choice("The most consistent response is Response 2.", 3)
        1
        >>> parse_choice("Solution 1 is wrong, solution 3 is right. Best solution: [[3]]", 3)
        2
        >>> parse_choice("7", 3) is None
        True
    """
    number = _number(text)
    if number is None or not 1 <= number <= count:
        return None
    return number - 1


def parse_rating(text: str) -> float | None:
    """The rating in a scorer's reply as MT-Bench reads it: the first ``[[x]]``, else the first ``[x]``.

    Returns None when there is none. Ratings are not clamped to the scale the prompt asks for.

    Example:
        >>> parse_rating("Clear and correct. Rating: [[8]]"), parse_rating("[7.5]"), parse_rating("good")
        (8.0, 7.5, None)
    """
    match = _RATING.search(text) or _RATING_BACKUP.search(text)
    return float(match.group(1)) if match else None


def _text(completion: Completion) -> str:
    samples = sorted(completion.samples, key=lambda s: s.index)
    return samples[0].text if samples else ""


def _check_n(agent: ModelAgent, what: str) -> None:
    if agent.sampling.n != 1:
        raise ConfigError(
            f"agent {agent.name!r}: {what} once per request; sampling.n must be 1, got {agent.sampling.n}",
            path="sampling.n",
        )


def _judge_sampling() -> SamplingParams:
    return SamplingParams(temperature=0.0)


async def _give(agent: ModelAgent, candidate: Candidate, emit: Emit | None, *, is_answer: bool) -> None:
    """Emit the chosen text as the candidate's one delta, then the candidate."""
    if emit is None:
        return
    if candidate.text:  # a candidate's deltas concatenate to its text; the answer's to the result's
        await emit(TokenDelta(candidate.layer, agent.name, 0, candidate.text, is_answer))
    await emit(CandidateDone(candidate))


def _completion(completions: Sequence[Completion]) -> Completion:
    samples = [s for completion in completions for s in completion.samples]
    return Completion(
        tuple(evolve(sample, index=i) for i, sample in enumerate(samples)),
        Usage.sum(completion.usage for completion in completions),
    )


def _no_candidates(kind: str, agent: ModelAgent, layer: int) -> EngineError:
    return EngineError(f"{kind} {agent.name!r} of layer {layer}: there are no candidates to choose from")


@define(eq=False)
class Select(ModelAgent):
    """Ask a judge which numbered candidate is best and give that candidate's text, unchanged.

    The template shows the judge the problem (the last user turn) and the candidates of the layer before,
    numbered from 1: ``usc_select`` (Universal Self-Consistency: the response most consistent with the
    others, by majority consensus; the default) or ``genselect`` (which solution is most likely correct,
    answered as ``Best solution: [[X]]``), or a template of your own, which receives the candidates as
    ``candidates`` (and ``references``). The index is read with :func:`parse_choice`. A reply without a
    valid index is retried (``retries`` times, once by default) with a follow-up turn
    (:data:`FOLLOW_UP`) after the judge's reply, so a greedy judge and a request cache do not give the same
    reply again; on an engine that constrains decoding
    (:attr:`~aftlib.engines.Engine.supports_structured_outputs`), the retry's reply is constrained to a
    number from 1 to the candidates' count, so it cannot miss. If every attempt fails, the first candidate
    is given and the fallback is recorded. With a single candidate no request is sent.

    The candidate's :attr:`~aftlib.Candidate.details` are ``{"chosen": position from 0, "attempts": requests
    sent, "fallback": bool, "raw": [the judge's replies]}``; its usage adds up every request. As the final
    agent, its answer's deltas are the chosen text (one :class:`~aftlib.TokenDelta`); the judge's own tokens
    are not streamed.

    Attributes:
        retries: Further requests after a reply without a valid index (0: none).
        sampling: The judge's sampling (greedy by default); ``n`` must be 1.
        template: The selection prompt (``usc_select`` by default).
        name: The agent's name.

    Raises:
        ConfigError: ``sampling.n`` is not 1, or ``retries`` is not a whole number of at least 0.
    """

    reads_references: ClassVar[bool] = True
    template: PromptTemplate = field(
        factory=lambda: PromptTemplate("usc_select"), converter=as_template, kw_only=True
    )
    sampling: SamplingParams = field(factory=_judge_sampling, kw_only=True)
    name: str = field(default="select", kw_only=True)
    retries: int = field(default=1, kw_only=True)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _check_n(self, "a selection asks")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError(
                f"agent {self.name!r}: retries must be a whole number of at least 0, got {self.retries!r}",
                path="retries",
            )

    @property
    def samples(self) -> int:
        """1: the chosen candidate."""
        return 1

    def describe(self) -> dict[str, Any]:
        """As :meth:`ModelAgent.describe`, with the retries."""
        return {**super().describe(), "retries": self.retries}

    def with_confidence(self, what: str) -> ModelAgent:
        """Refused: its candidate is a text it picked, which no model wrote for it."""
        refuse_confidence(self, what)

    def generations(self, references: int) -> int:
        """One judge reply (more only on a retry); none for a single reference."""
        return 1 if references > 1 else 0

    def _fit(
        self, conversation: Sequence[Message], references: Sequence[str], sampling: SamplingParams
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        return self._request(conversation, references, sampling, None)

    def _retry_sampling(self, count: int) -> SamplingParams:
        """The retry's sampling: the reply constrained to a number from 1 to ``count`` where it can be.

        Only the retry: the first reply stays free, so the judge reasons before its verdict.
        """
        if not self.engine.supports_structured_outputs or self.sampling.response_format is not None:
            return self.sampling
        choice = ResponseFormat.json_schema(
            {"type": "integer", "enum": list(range(1, count + 1))}, name="choice"
        )
        return evolve(self.sampling, response_format=choice)

    def _request(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        sampling: SamplingParams,
        previous: str | None,
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        """The judge's request; after a reply without an index (``previous``), the follow-up turn too."""

        def build(texts: Sequence[str]) -> list[Message]:
            messages = self.template.messages(conversation, texts, candidates=list(texts))
            if previous is not None:
                follow_up = FOLLOW_UP.format(count=len(texts))
                messages += [Message("assistant", previous), Message("user", follow_up)]
            return messages

        return self._request_for(build, references, sampling)

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Ask the judge, retry a bad index, and give the chosen candidate's text.

        Raises:
            EngineError: There are no references, or the judge's engine failed.
        """
        if not references:
            raise _no_candidates("select", self, layer)
        with context(layer=layer, agent=self.name):
            log = get_logger(__name__)
            chosen: int | None = 0 if len(references) == 1 else None
            raw: list[str] = []
            requests: list[ChatRequest] = []
            completions: list[Completion] = []
            cuts: tuple[Cut, ...] = ()
            while chosen is None and len(raw) <= self.retries:
                previous = raw[-1] if raw else None
                sampling = self.sampling if previous is None else self._retry_sampling(len(references))
                request, made = await self.fitted(
                    partial(self._request, conversation, references, sampling, previous)
                )
                cuts = cuts or made
                requests.append(request)
                completion = await self.engine.generate(request)
                completions.append(completion)
                raw.append(_text(completion))
                chosen = parse_choice(raw[-1], len(references))
                if chosen is None:
                    log.info("judge named no valid candidate", attempt=len(raw), reply=raw[-1][:200])
            fallback = chosen is None
            if chosen is None:
                log.warning("no valid index after retrying: the first candidate is given", attempts=len(raw))
                chosen = 0
            usage = Usage.sum(c.usage for c in completions)
            details = {"chosen": chosen, "attempts": len(raw), "fallback": fallback, "raw": raw}
            text, calls = picked(references, chosen)
            candidate = Candidate(
                layer,
                self.name,
                0,
                text,
                "stop",
                usage.prompt_tokens,
                usage.completion_tokens,
                cuts,
                tuple(requests),
                None,
                details,
                tool_calls=calls,
            )
            log.debug("selected", chosen=chosen, attempts=len(raw))
            await _give(self, candidate, emit, is_answer=is_answer)
            return (candidate,), _completion(completions)


def _check_min_scores(_: object, __: object, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(
            f"min_scores must be a number of candidates of at least 1 (or none: all), got {value!r}",
            path="min_scores",
        )


@define(eq=False)
class BestOfN(ModelAgent):
    """Rate every candidate with a scorer, each in its own request, and keep the highest rated.

    The template (``score_candidate`` by default: the MT-Bench single-answer prompt, a rating from 1 to 10
    as ``[[rating]]``) shows the scorer the problem (the last user turn) and one candidate, as
    ``candidate``; the rating is read with :func:`parse_rating`. All candidates are scored at once. The
    highest rating wins; ties go to the first in layer order (agent order, then sample index). The text
    given is the winning candidate's, unchanged. With a single candidate no request is sent.

    A candidate is unscored when its scorer request fails or its reply holds no rating. With
    ``min_scores=None`` every candidate must be scored: a failed request fails the agent with that engine
    error, an unreadable rating with an :class:`~aftlib.EngineError` naming the candidate. With a number,
    the choice is made among the scored candidates if at least ``min_scores`` were scored (the others are
    recorded), and fails otherwise.

    The candidate's :attr:`~aftlib.Candidate.details` are ``{"chosen": position from 0, "scores": [rating or
    None per candidate], "failures": [{"index", "error"}], "raw": [the scorer's reply or None]}``; its usage
    adds up every scorer request that answered. As the final agent, its answer's deltas are the chosen
    text; the scorer's tokens are not streamed.

    Attributes:
        min_scores: Scored candidates needed to choose; None: all of them.
        sampling: The scorer's sampling (greedy by default); ``n`` must be 1.
        template: The rating prompt (``score_candidate`` by default).
        name: The agent's name.

    Raises:
        ConfigError: ``sampling.n`` is not 1, or ``min_scores`` is not a whole number of at least 1.
    """

    reads_references: ClassVar[bool] = True
    template: PromptTemplate = field(
        factory=lambda: PromptTemplate("score_candidate"), converter=as_template, kw_only=True
    )
    sampling: SamplingParams = field(factory=_judge_sampling, kw_only=True)
    name: str = field(default="best_of_n", kw_only=True)
    min_scores: int | None = field(default=None, kw_only=True, validator=_check_min_scores)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        _check_n(self, "a scorer rates")

    @property
    def samples(self) -> int:
        """1: the best candidate."""
        return 1

    def describe(self) -> dict[str, Any]:
        """As :meth:`ModelAgent.describe`, with ``min_scores``."""
        return {**super().describe(), "min_scores": self.min_scores}

    def with_confidence(self, what: str) -> ModelAgent:
        """Refused: its candidate is a text it picked, which no model wrote for it."""
        refuse_confidence(self, what)

    def generations(self, references: int) -> int:
        """One rating per reference; none for a single reference."""
        return references if references > 1 else 0

    def prepare(
        self, conversation: Sequence[Message], references: Sequence[str]
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        """The request that rates the first reference (each reference is rated in its own request)."""
        return self._fit(conversation, references[:1], self.sampling)

    def _fit(
        self, conversation: Sequence[Message], references: Sequence[str], sampling: SamplingParams
    ) -> tuple[ChatRequest, tuple[Cut, ...]]:
        def build(texts: Sequence[str]) -> list[Message]:
            return self.template.messages(conversation, texts, candidate=texts[0] if texts else "")

        return self._request_for(build, references, sampling)

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Score every reference at once and give the best one's text.

        Raises:
            EngineError: There are no references, or fewer were scored than needed (with
                ``min_scores=None``, the first failed scorer request's own error).
        """
        if not references:
            raise _no_candidates("best_of_n", self, layer)
        count = len(references)
        need = count if self.min_scores is None else self.min_scores
        with context(layer=layer, agent=self.name):
            log = get_logger(__name__)
            if count > 1 and count < need:
                raise EngineError(
                    f"best_of_n {self.name!r} of layer {layer}: min_scores is {need}, but the layer before "
                    f"gave only {count} candidates"
                )
            # Rendered before any request is sent, so that a template error is raised as itself.
            prepared = await self.fitted(
                lambda: [self._fit(conversation, [t], self.sampling) for t in references] if count > 1 else []
            )
            scores: list[float | None] = [None] * count
            raw: list[str | None] = [None] * count
            completions: dict[int, Completion] = {}
            errors: dict[int, EngineError] = {}
            unscored: dict[int, str] = {}

            async def rate(index: int, group: anyio.abc.TaskGroup) -> None:
                try:
                    completion = await self.engine.generate(prepared[index][0])
                except EngineError as exc:
                    errors[index] = exc
                    unscored[index] = f"{type(exc).__name__}: {exc}"
                    log.warning("scorer failed", candidate=index, error=unscored[index])
                else:
                    completions[index] = completion
                    raw[index] = _text(completion)
                    scores[index] = parse_rating(raw[index] or "")
                    if scores[index] is None:
                        unscored[index] = "the scorer's reply holds no [[rating]]"
                        log.info("no rating in the scorer's reply", candidate=index)
                if count - len(unscored) < need:  # the choice cannot be made: stop the others
                    group.cancel_scope.cancel()

            if count > 1:
                with unwrap_group():
                    async with anyio.create_task_group() as tg:
                        for index in range(count):
                            tg.start_soon(rate, index, tg)
            scored = [i for i in range(count) if scores[i] is not None]
            if count > 1 and len(scored) < need:
                if self.min_scores is None and errors:  # every score was needed: the engine's own error
                    raise errors[min(errors)]
                detail = "; ".join(f"candidate {i + 1}: {unscored[i]}" for i in sorted(unscored))
                stopped = count - len(scored) - len(unscored)
                if stopped:
                    detail += f"; {stopped} other request(s) stopped once too few could be scored"
                cause = errors[min(errors)] if errors else None
                raise EngineError(
                    f"best_of_n {self.name!r} of layer {layer}: {len(scored)} of {count} candidates scored, "
                    f"{need} needed; {detail}"
                ) from cause
            rated = {i: score for i in scored if (score := scores[i]) is not None}
            chosen = max(rated, key=rated.__getitem__) if rated else 0  # max keeps the first of a tie
            done = [completions[i] for i in sorted(completions)]
            usage = Usage.sum(c.usage for c in done)
            details = {
                "chosen": chosen,
                "scores": scores,
                "failures": [{"index": i, "error": unscored[i]} for i in sorted(unscored)],
                "raw": raw,
            }
            text, calls = picked(references, chosen)
            candidate = Candidate(
                layer,
                self.name,
                0,
                text,
                "stop",
                usage.prompt_tokens,
                usage.completion_tokens,
                tuple(evolve(cut, reference=i) for i in sorted(completions) for cut in prepared[i][1]),
                tuple(prepared[i][0] for i in sorted(completions)),
                None,
                details,
                tool_calls=calls,
            )
            log.debug("best of n", chosen=chosen, score=scores[chosen])
            await _give(self, candidate, emit, is_answer=is_answer)
            return (candidate,), _completion(done)
