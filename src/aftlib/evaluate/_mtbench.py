"""MT-Bench single-answer grading (FastChat's ``llm_judge``) on any aftlib engine.

Each turn of a question is rated 1 to 10 by the judge model with one of FastChat's four prompts: turn 1
with the single-turn prompt, turn 2 with the multi-turn one (the whole conversation, the judgment on
the second answer); questions of the categories ``math``, ``reasoning`` and ``coding`` use the ``math``
prompts, which show the reference answers. The rating is read with FastChat's two regexes; a judgment
without one is rated ``-1``, counted and left out of the averages. The summary's ``average`` is the
mean over every rated turn of both turns, as FastChat's ``show_result.py`` computes it.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import anyio
from attrs import define, field

from .._errors import ConfigError, InputError
from .._templates import PromptTemplate, as_template
from .._types import ChatRequest, Message, SamplingParams, Usage
from ..engines._base import Engine
from ._judge import EvalItem, EvalSummary, Judge, Judgment, mean_and_standard_error

__all__ = ("MTBenchJudge", "REFERENCE_CATEGORIES", "mt_bench_rating")

REFERENCE_CATEGORIES: tuple[str, ...] = ("math", "reasoning", "coding")
"""The MT-Bench categories graded against reference answers, with the ``math`` prompts."""

#: FastChat's rating patterns: ``[[rating]]``, else ``[rating]``.
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
#: The rating of a judgment without one.
NO_RATING = -1.0


def mt_bench_rating(text: str) -> float:
    """The rating in a judge's text, as FastChat reads it; ``-1.0`` when there is none.

    The first ``[[N]]`` (``N`` digits with an optional decimal part), else the first ``[N]``; its value
    through ``ast.literal_eval`` (FastChat's own reading). A number FastChat cannot evaluate, such as one
    with leading zeros (``[[07]]``, where FastChat stops with a ``SyntaxError``), is read as a decimal.
    Ratings are not clamped to 1-10, as in FastChat; one too large for a float is ``inf``.
    """
    match = _RATING.search(text) or _RATING_BACKUP.search(text)
    if match is None:
        return NO_RATING
    number = match.group(1)
    try:
        value = ast.literal_eval(number)
    except (ValueError, SyntaxError):
        value = float(number)
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits: as huge as a float can say
        return math.inf


def _references(value: Mapping[Any, Iterable[str]] | None) -> dict[str, tuple[str, ...]] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"references must map question ids to reference answers per turn, got {type(value).__name__}",
            path="references",
        )
    out: dict[str, tuple[str, ...]] = {}
    for key, answers in value.items():
        if isinstance(answers, str) or not all(isinstance(a, str) for a in answers):
            raise ConfigError(
                f"the references of question {key!r} must be a list of strings, one per turn",
                path=f"references.{key}",
            )
        out[str(key)] = tuple(answers)
    return out


def _categories(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _default_sampling() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=2048)


def _check_sampling(_: object, __: object, value: SamplingParams) -> None:
    if not isinstance(value, SamplingParams):
        raise ConfigError(f"sampling must be a SamplingParams, got {type(value).__name__}", path="sampling")
    if value.n != 1:
        raise ConfigError(f"the MT-Bench judge takes one sample per turn, got n={value.n}", path="sampling.n")


@define(eq=False)
class MTBenchJudge(Judge):
    """MT-Bench single-answer grading: a 1-10 rating of each turn's answer, as FastChat grades it.

    An item's ``turns`` are the question's one or two user turns, ``answers`` the model's answer to
    each, ``category`` the question's category and ``reference`` the reference answers per turn (or
    they come from ``references``, by question id). Each turn is one request ``[system, user]``
    (``temperature 0``, ``max_tokens 2048``); the two turns of a question are judged concurrently.

    A question of a reference category without reference answers for its turns is an
    :class:`~aftlib.InputError` (raised before any request), as FastChat refuses to grade without them:
    its score would otherwise rest on a different prompt.

    Args:
        engine: The judge engine.
        references: Reference answers per question id (one per turn), used when an item carries none.
        single_template: The prompt of turn 1 (FastChat ``single-v1``); variables ``question``,
            ``answer``.
        math_template: The prompt of turn 1 with references (``single-math-v1``); also
            ``ref_answer_1``.
        multi_turn_template: The prompt of turn 2 (``single-v1-multi-turn``); variables
            ``question_1``, ``answer_1``, ``question_2``, ``answer_2``.
        math_multi_turn_template: The prompt of turn 2 with references
            (``single-math-v1-multi-turn``); also ``ref_answer_1``, ``ref_answer_2``.
        reference_categories: The categories graded with references.
        sampling: How the judge samples.

    Raises:
        ConfigError: A setting is invalid.
        TemplateError: A template does not exist or does not parse.
    """

    name: ClassVar[str] = "mt_bench"

    engine: Engine
    references: dict[str, tuple[str, ...]] | None = field(default=None, kw_only=True, converter=_references)
    single_template: PromptTemplate = field(
        factory=lambda: PromptTemplate("mtbench_single"), kw_only=True, converter=as_template
    )
    math_template: PromptTemplate = field(
        factory=lambda: PromptTemplate("mtbench_single_math"), kw_only=True, converter=as_template
    )
    multi_turn_template: PromptTemplate = field(
        factory=lambda: PromptTemplate("mtbench_multi"), kw_only=True, converter=as_template
    )
    math_multi_turn_template: PromptTemplate = field(
        factory=lambda: PromptTemplate("mtbench_multi_math"), kw_only=True, converter=as_template
    )
    reference_categories: tuple[str, ...] = field(
        default=REFERENCE_CATEGORIES, kw_only=True, converter=_categories
    )
    sampling: SamplingParams = field(factory=_default_sampling, kw_only=True, validator=_check_sampling)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.engine, Engine):
            raise ConfigError(
                f"engine must be an aftlib Engine, got {type(self.engine).__name__}", path="engine"
            )

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The judge engine."""
        return (self.engine,)

    def requests(self, item: EvalItem) -> list[tuple[str, ChatRequest]]:
        """The requests for ``item``, one per turn, each with its template's name.

        Raises:
            InputError: The item has no turn or more than two, fewer answers than turns, or is of a
                reference category without reference answers for its turns.
            TemplateError: A template fails to render.
        """
        where = f"question {item.id!r}"
        turns, answers = item.turns, item.answers
        if not 1 <= len(turns) <= 2:
            raise InputError(
                f"an MT-Bench question has one or two turns, this one has {len(turns)}", where=where
            )
        if len(answers) < len(turns):
            raise InputError(
                f"the question has {len(turns)} turn(s) but the answer has {len(answers)}", where=where
            )
        graded = item.category in self.reference_categories
        reference: tuple[str, ...] = ()
        if graded:
            reference = item.reference or (self.references or {}).get(item.id, ())
            if len(reference) < len(turns):
                raise InputError(
                    f"category {item.category!r} is graded against reference answers, and the question has "
                    f"{len(reference)} for its {len(turns)} turn(s); give them (references=, FastChat's "
                    "reference_answer/gpt-4.jsonl)",
                    where=where,
                )
        refs = {f"ref_answer_{i + 1}": text for i, text in enumerate(reference[:2])}
        first = self.math_template if graded else self.single_template
        out = [(first.name, self._request(first, turns[0], question=turns[0], answer=answers[0], **refs))]
        if len(turns) == 2:
            second = self.math_multi_turn_template if graded else self.multi_turn_template
            values = {
                "question_1": turns[0],
                "answer_1": answers[0],
                "question_2": turns[1],
                "answer_2": answers[1],
            }
            out.append((second.name, self._request(second, turns[1], **values, **refs)))
        return out

    def _request(self, template: PromptTemplate, user: str, **values: str) -> ChatRequest:
        system = template.render(system=None, references=(), user=user, **values)
        content = template.render_user(user=user, system=None, references=(), **values)
        messages = (
            [Message("system", system), Message("user", content)] if system else [Message("user", content)]
        )
        return ChatRequest(messages, self.sampling)

    async def judge(self, item: EvalItem) -> Judgment:
        """Rate each turn of ``item``; the judgment's score is the mean of its rated turns (None if none).

        Raises:
            InputError: See :meth:`requests`.
        """
        requests = self.requests(item)
        texts: list[str] = [""] * len(requests)
        usages: list[Usage] = [Usage()] * len(requests)

        async def one(index: int, request: ChatRequest) -> None:
            completion = await self.engine.generate(request)
            texts[index] = completion.samples[0].text if completion.samples else ""
            usages[index] = completion.usage

        async with anyio.create_task_group() as group:
            for index, (_, request) in enumerate(requests):
                group.start_soon(one, index, request)
        ratings = [mt_bench_rating(text) for text in texts]
        details: dict[str, Any] = {
            "category": item.category,
            "reference_based": item.category in self.reference_categories,
        }
        for turn in (1, 2):
            present = turn <= len(requests)
            details[f"turn_{turn}"] = ratings[turn - 1] if present else None
            details[f"judgment_{turn}"] = texts[turn - 1] if present else None
            details[f"prompt_{turn}"] = requests[turn - 1][0] if present else None
        rated = [r for r in ratings if r != NO_RATING]
        score = sum(rated) / len(rated) if rated else None
        return Judgment(item.id, self.name, score, details, Usage.sum(usages))

    def summarize(self, judgments: Sequence[Judgment]) -> EvalSummary:
        """Turn 1, turn 2 and the average, as FastChat's ``show_result.py`` computes them.

        Metrics: ``turn_1`` and ``turn_2`` (the mean rating of each turn) and ``average`` (the mean over
        every rated turn of both turns, not the mean of the two means), leaving out ``-1`` ratings;
        ``n_turn_1`` and ``n_turn_2`` (rated turns), ``n_unrated_turn_1``, ``n_unrated_turn_2`` and
        ``n_unrated`` (``-1`` ratings).
        """
        turns: dict[int, list[float]] = {1: [], 2: []}
        unrated = {1: 0, 2: 0}
        for judgment in judgments:
            for turn in (1, 2):
                value = judgment.details.get(f"turn_{turn}")
                if value is None or isinstance(value, bool):
                    continue
                try:
                    rating = float(value)
                except (TypeError, ValueError):
                    continue
                if rating == NO_RATING or not math.isfinite(rating):
                    unrated[turn] += 1
                else:
                    turns[turn].append(rating)
        turn_1, _ = mean_and_standard_error(turns[1])
        turn_2, _ = mean_and_standard_error(turns[2])
        average, _ = mean_and_standard_error(turns[1] + turns[2])
        notes = []
        if unrated[1] or unrated[2]:
            notes.append(
                f"{unrated[1] + unrated[2]} turn judgment(s) without a rating ([[rating]]) are rated -1 and "
                f"left out of the averages (turn 1: {unrated[1]}, turn 2: {unrated[2]})"
            )
        metrics: dict[str, float | int | None] = {
            "turn_1": turn_1,
            "turn_2": turn_2,
            "average": average,
            "n_turn_1": len(turns[1]),
            "n_turn_2": len(turns[2]),
            "n_unrated_turn_1": unrated[1],
            "n_unrated_turn_2": unrated[2],
            "n_unrated": unrated[1] + unrated[2],
        }
        return EvalSummary(self.name, len(judgments), metrics, notes)
