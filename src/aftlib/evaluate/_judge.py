"""What every judge shares: the item it judges, its verdict, the summary of many verdicts, the base class."""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from attrs import field, frozen

from .._types import Usage
from ..engines._base import Engine

__all__ = ("EvalItem", "EvalSummary", "Judge", "Judgment", "mean_and_standard_error")


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@frozen
class EvalItem:
    """One answer to judge, with the question it answers and what it is judged against.

    Attributes:
        id: The record's id (its ``id``, ``question_id`` or instruction, as the answers file has it).
        turns: The user turns, in order (one for a single-turn question).
        answers: The answer under test for each turn.
        reference: What the answer is judged against, per turn: the baseline's output (AlpacaEval), a
            reference answer (MT-Bench math, reasoning, coding) or the gold answer (math); may be empty.
        category: The question's category, when the data gives one (MT-Bench).
        generator: The name of the model (or topology) that wrote the answers.
        data: The records as read, for the judgment file.
    """

    id: str
    turns: tuple[str, ...] = field(converter=_strings)
    answers: tuple[str, ...] = field(converter=_strings)
    reference: tuple[str, ...] = field(default=(), converter=_strings)
    category: str | None = None
    generator: str | None = None
    data: Mapping[str, Any] = field(factory=dict, eq=False, repr=False)


@frozen
class Judgment:
    """A judge's verdict on one item.

    Attributes:
        id: The item's id.
        judge: The judge's name.
        score: The item's value for the judge's metric (a preference, a rating, 1.0 or 0.0), or None
            when the judge gave none (an unparsable rating, no extractable answer).
        details: What the verdict rests on, judge by judge (the judge's raw completion, the position
            switch, per-turn ratings, the extracted answer, ...); JSON-ready.
        usage: The judge engine's tokens for this item.
    """

    id: str
    judge: str
    score: float | None
    details: Mapping[str, Any] = field(factory=dict)
    usage: Usage = field(factory=Usage)

    def to_json(self) -> dict[str, Any]:
        """One line of a judgments file."""
        u = self.usage
        return {
            "id": self.id,
            "judge": self.judge,
            "score": self.score,
            **self.details,
            "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens},
        }


@frozen
class EvalSummary:
    """The metrics of a judge over many judgments.

    Attributes:
        judge: The judge's name.
        n: Judgments summarized.
        metrics: The metrics, by name (``win_rate`` and ``standard_error``; ``accuracy``; ``turn_1``,
            ``turn_2`` and ``average``; ...); None where a metric could not be computed.
        notes: Lines a reader should see next to the numbers (why a metric is missing, counts left out).
    """

    judge: str
    n: int
    metrics: Mapping[str, float | int | None]
    notes: tuple[str, ...] = field(default=(), converter=_strings)

    def to_json(self) -> dict[str, Any]:
        """The summary file: ``{"judge", "n", **metrics, "notes"}``."""
        return {"judge": self.judge, "n": self.n, **self.metrics, "notes": list(self.notes)}


def mean_and_standard_error(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The mean of ``values`` and its standard error (sample standard deviation over sqrt n)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


class Judge(abc.ABC):
    """A way to score answers: one :meth:`judge` call per item, one :meth:`summarize` over them all.

    Judges are stateless between items, so many items are judged concurrently on the same engines.
    """

    name: ClassVar[str]
    """The judge's name in judgment files and summaries (``alpaca_eval``, ``mt_bench``, ``math``)."""

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The engines the judge sends requests to (started by whoever runs it); none by default."""
        return ()

    @abc.abstractmethod
    async def judge(self, item: EvalItem) -> Judgment:
        """Judge one item."""

    @abc.abstractmethod
    def summarize(self, judgments: Sequence[Judgment]) -> EvalSummary:
        """The judge's metrics over ``judgments``."""
