"""Majority voting over the final answers of the previous layer's candidates (self-consistency)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import attrs
from attrs import define, field

from ._agents import Agent, Emit
from ._confidence import Confidence
from ._errors import ConfigError, EngineError
from ._extract import AnswerExtractor
from ._logging import get_logger
from ._results import Candidate, CandidateDone, References, TokenDelta, picked
from ._tools import calls_key
from ._types import Completion, Message

__all__ = ("NoAnswerError", "Vote")

NoAnswer = Literal["error", "first"]
Weight = Literal["count", "confidence"]


class NoAnswerError(EngineError):
    """A vote found no answer in any candidate (and was told to fail rather than fall back)."""


def _check_no_answer(_: object, __: object, value: str) -> None:
    if value not in ("error", "first"):
        raise ConfigError(f"on_no_answer is 'error' or 'first', got {value!r}", path="on_no_answer")


def _check_weight(_: object, __: object, value: str) -> None:
    if value not in ("count", "confidence"):
        raise ConfigError(f"weight is 'count' or 'confidence', got {value!r}", path="weight")


@define(eq=False)
class Vote(Agent):
    r"""Keep the answer most candidates agree on; no model is asked.

    Candidates that call tools vote with their calls: two agree when they call the same functions with
    the same arguments (compared as canonical JSON, whatever the key order or spacing), and the winner
    comes out with its calls.

    The answer of every candidate of the layer before is extracted (:class:`~aftlib.AnswerExtractor`:
    ``#### N``, ``\boxed{}``, "The answer is", the last number, a multiple-choice letter, a regex) and
    normalised; the most frequent answer wins. Ties go to the answer whose first candidate comes first
    in layer order (agent order, then sample index). The vote gives one candidate: the first draft that
    holds the winning answer, whole, so its reasoning comes with it. Its :attr:`~aftlib.Candidate.details`
    record the counts, the agreement (the winner's share of the candidates) and the candidates with no
    answer, which are counted apart and never win.

    With ``weight="confidence"`` each candidate's vote weighs its confidence (:class:`~aftlib.Confidence`,
    DeepConf's confidence-weighted majority): the answer with the most weight wins. The topology then
    asks the layer before for log probabilities (refusing engines that give none).

    Attributes:
        extractor: How answers are found; by default ``####``, "the answer is", ``\boxed{}``, then the
            last number.
        on_no_answer: When no candidate has an answer: ``"error"`` fails the run with
            :class:`NoAnswerError`; ``"first"`` gives the first candidate, recorded as a fallback.
        weight: ``"count"`` (one vote each) or ``"confidence"`` (each vote weighs its candidate's
            confidence score).
        confidence: How a candidate's confidence is scored, with ``weight="confidence"``.
        name: The agent's name.
    """

    reads_references: ClassVar[bool] = True

    extractor: AnswerExtractor = field(factory=AnswerExtractor, kw_only=True)
    on_no_answer: NoAnswer = field(default="error", kw_only=True, validator=_check_no_answer)
    weight: Weight = field(default="count", kw_only=True, validator=_check_weight)
    confidence: Confidence = field(factory=Confidence, kw_only=True)
    name: str = field(default="vote", kw_only=True)

    @property
    def needs_confidence(self) -> bool:
        """True when the vote weighs candidates by confidence."""
        return self.weight == "confidence"

    def describe(self) -> dict[str, Any]:
        """The class, name, extractor, fallback and weighting."""
        extractor = {"strategies": list(self.extractor.strategies), "pattern": self.extractor.pattern}
        out = {**super().describe(), "extractor": extractor, "on_no_answer": self.on_no_answer}
        if self.needs_confidence:
            out.update(weight=self.weight, confidence=attrs.asdict(self.confidence))
        return out

    def tally(
        self, texts: Sequence[str], weights: Sequence[float] | None = None
    ) -> tuple[int | None, dict[str, Any]]:
        """The position of the text that wins the vote (None when no text has an answer), and the counts.

        Args:
            texts: The candidates' texts.
            weights: Each candidate's vote weight; None (or all zero) counts one vote each.
        """
        return self._count([self.extractor.extract(text).answer for text in texts], weights)

    def answers(self, references: Sequence[str]) -> list[str | None]:
        """Each reference's answer (None when it has none).

        A candidate that calls tools answers with its calls, as canonical JSON; any other with the
        answer the extractor finds in its text.
        """
        if isinstance(references, References):
            return [
                calls_key(c.tool_calls) if c.tool_calls else self.extractor.extract(c.text).answer
                for c in references.candidates
            ]
        return [self.extractor.extract(text).answer for text in references]

    def _count(
        self, answers: list[str | None], weights: Sequence[float] | None
    ) -> tuple[int | None, dict[str, Any]]:
        counts = Counter(a for a in answers if a is not None)
        details: dict[str, Any] = {
            "votes": dict(counts.most_common()),
            "no_answer": sum(a is None for a in answers),
            "answers": answers,
        }
        if not counts:
            return None, {**details, "answer": None, "agreement": 0.0}
        score: dict[str, float] = dict(counts)
        if weights is not None and sum(w for a, w in zip(answers, weights, strict=True) if a is not None) > 0:
            score = dict.fromkeys(counts, 0.0)
            for answer, weight in zip(answers, weights, strict=True):
                if answer is not None:
                    score[answer] += weight
            details["weights"] = {a: round(w, 6) for a, w in sorted(score.items(), key=lambda kv: -kv[1])}
        top = max(score.values())
        winner = next(a for a in answers if a is not None and score[a] == top)  # the earliest of the tied
        details.update(answer=winner, agreement=round(counts[winner] / len(answers), 6))
        return answers.index(winner), details

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Vote over ``references``; the winning draft comes out whole."""
        if not references:
            raise NoAnswerError(f"vote {self.name!r} of layer {layer}: there are no candidates to vote on")
        weights = None
        if self.needs_confidence:
            if not isinstance(references, References):
                raise ConfigError(
                    f"vote {self.name!r} weighs candidates by confidence: give it References (a topology "
                    "does), not bare texts"
                )
            weights = [self.confidence.weight(c.confidence) for c in references.candidates]
        chosen, details = self._count(self.answers(references), weights)
        if chosen is None:
            if self.on_no_answer == "error":
                raise NoAnswerError(
                    f"vote {self.name!r} of layer {layer}: none of the {len(references)} candidates has an "
                    f"answer the extractor finds (strategies: {', '.join(self.extractor.strategies)})"
                )
            chosen = 0
            details["fallback"] = "first"
        details["chosen"] = chosen
        get_logger(__name__, layer=layer, agent=self.name).debug(
            "vote", answer=details["answer"], agreement=details["agreement"]
        )
        text, calls = picked(references, chosen)
        candidate = Candidate(layer, self.name, 0, text, "stop", details=details, tool_calls=calls)
        if emit is not None:
            if is_answer:  # the answer's deltas always concatenate to the result's text
                await emit(TokenDelta(layer, self.name, 0, candidate.text, True))
            await emit(CandidateDone(candidate))
        return (candidate,), Completion(())
