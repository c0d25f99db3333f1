r"""The math judge: exact answers (GSM8K, ``\boxed{}``), checked by string, number and symbol.

An item's answer and its gold answer each go through an :class:`AnswerExtractor`; the two match when
their normalised texts are equal, or they are the same number, or the ``math-verify`` package finds
them symbolically equal (``\frac{1}{2}`` and ``0.5``). An answer with no extractable answer is an
*extraction failure*: its score is None, it counts as wrong in the accuracy (as in
lm-evaluation-harness, where it scores 0), and the summary counts it apart.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import anyio.to_process
from attrs import define, field

from .._errors import InputError, MissingExtraError
from .._extract import AnswerExtractor, Extracted
from ._judge import EvalItem, EvalSummary, Judge, Judgment, mean_and_standard_error

__all__ = ("SYMBOLIC_TIMEOUT", "MathJudge", "answers_match", "compare_answers")

SYMBOLIC_TIMEOUT = 10.0
"""Seconds a symbolic comparison may take before it counts as no match."""


def _gold_default() -> AnswerExtractor:
    return AnswerExtractor(strategies=("####", "boxed", "text"))


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _check_math_verify() -> None:
    if importlib.util.find_spec("math_verify") is None:
        raise MissingExtraError("the math judge's symbolic comparison", "eval", "math-verify")


def _symbolic(gold: str, answer: str) -> bool:
    from math_verify import parse, verify  # type: ignore[import-untyped]

    # math-verify's timeouts use SIGALRM, which only the main thread may set
    timeout = 5 if threading.current_thread() is threading.main_thread() else None

    def expression(text: str) -> Any:
        bare = text.strip()
        wrapped = bare if bare.startswith("$") else f"${bare}$"
        return parse(wrapped, parsing_timeout=timeout)

    try:
        left, right = expression(gold), expression(answer)
        if not left or not right:
            return False
        return bool(verify(left, right, timeout_seconds=timeout))
    except Exception:  # math-verify raises on what it cannot read: not a match
        return False


def _plain_match(gold: str, answer: str) -> tuple[bool, str] | None:
    """Equal text, then equal numbers; None when only a symbolic comparison can tell."""
    if gold == answer:
        return True, "exact"
    left, right = _number(gold), _number(answer)
    if left is not None and right is not None:
        if math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-12):
            return True, "number"
        return False, ""
    return None


def answers_match(gold: str, answer: str) -> tuple[bool, str]:
    """Whether two normalised answers match, and how: ``"exact"``, ``"number"``, ``"symbolic"`` or ``""``.

    The plain comparisons come first (equal text, then equal numbers); ``math-verify`` only when they
    fail, in this thread (with math-verify's own 5 s timeout on the main thread, none elsewhere). In
    async code use :func:`compare_answers`, which keeps sympy off the event loop.
    """
    plain = _plain_match(gold, answer)
    if plain is not None:
        return plain
    _check_math_verify()
    return (True, "symbolic") if _symbolic(gold, answer) else (False, "")


async def compare_answers(gold: str, answer: str, *, seconds: float = SYMBOLIC_TIMEOUT) -> tuple[bool, str]:
    """:func:`answers_match` without blocking the event loop, with a timeout that stops the work.

    The symbolic comparison runs in a worker process (anyio's process pool), where math-verify's own
    timeouts work; a comparison still running after ``seconds`` has its worker killed and is
    not a match (``"timeout"``). Many comparisons run at once, one per worker.
    """
    plain = _plain_match(gold, answer)
    if plain is not None:
        return plain
    _check_math_verify()
    with anyio.move_on_after(seconds):
        same = await anyio.to_process.run_sync(_symbolic, gold, answer, cancellable=True)
        return (True, "symbolic") if same else (False, "")
    return False, "timeout"


@define
class MathJudge(Judge):
    r"""Exact answers for math: accuracy against the gold answer of each item.

    The gold answer is ``item.reference[0]`` (a GSM8K ``answer``: the text after its last ``#### ``,
    commas removed; else a ``\boxed{}`` in it, else the whole text); the item's answer is the last of
    ``item.answers``. No engine.

    Each judgment's details hold ``answer`` (extracted), ``strategy``, ``gold``, ``correct``, ``match``
    (how it matched) and ``extraction_failed``; its score is 1.0 or 0.0, None for an extraction failure.

    :meth:`summarize` gives ``accuracy`` (correct over all judgments, extraction failures counted as
    wrong), its ``standard_error`` (the sample standard error of the 0/1 scores,
    ``sqrt(p(1-p)/(n-1))``, as lm-evaluation-harness reports), ``correct``, ``wrong`` (extracted but
    not equal) and ``extraction_failures``.

    Args:
        extractor: How the answer is found in the item's answer.
        gold_extractor: How the gold answer is found in the reference.
        timeout: Seconds a symbolic comparison may take before it counts as no match (``"timeout"``).
    """

    name: ClassVar[str] = "math"
    extractor: AnswerExtractor = field(factory=AnswerExtractor)
    gold_extractor: AnswerExtractor = field(factory=_gold_default)
    timeout: float = field(default=SYMBOLIC_TIMEOUT, kw_only=True)

    def gold(self, item: EvalItem) -> Extracted:
        """The item's gold answer.

        Raises:
            InputError: The item has no reference, or no answer can be found in it.
        """
        if not item.reference:
            raise InputError("no gold answer (reference) for this item", where=f"id {item.id}")
        found = self.gold_extractor.extract(item.reference[0])
        if found.answer is None:
            raise InputError(
                f"no gold answer can be read from the reference {item.reference[0][:80]!r}",
                where=f"id {item.id}",
            )
        return found

    async def judge(self, item: EvalItem) -> Judgment:
        """Judge one item; a symbolic comparison runs off the event loop (:func:`compare_answers`)."""
        gold, found = self._extract(item)
        if found.answer is None:
            return self._verdict(item, gold, found, (False, ""))
        match = await compare_answers(gold, found.answer, seconds=self.timeout)
        return self._verdict(item, gold, found, match)

    def judge_now(self, item: EvalItem) -> Judgment:
        """:meth:`judge`, synchronously, in this thread (:func:`answers_match`)."""
        gold, found = self._extract(item)
        match = (False, "") if found.answer is None else answers_match(gold, found.answer)
        return self._verdict(item, gold, found, match)

    def _extract(self, item: EvalItem) -> tuple[str, Extracted]:
        gold = self.gold(item).answer
        assert gold is not None
        return gold, self.extractor.extract(item.answers[-1] if item.answers else "")

    def _verdict(self, item: EvalItem, gold: str, found: Extracted, match: tuple[bool, str]) -> Judgment:
        correct, how = match
        details: dict[str, Any] = {
            "answer": found.answer,
            "strategy": found.strategy,
            "gold": gold,
            "extraction_failed": found.answer is None,
            "correct": correct,
            "match": how,
        }
        score = None if found.answer is None else 1.0 if correct else 0.0
        return Judgment(item.id, self.name, score, details)

    def summarize(self, judgments: Sequence[Judgment]) -> EvalSummary:
        """Accuracy with its standard error, correct, wrong and extraction failures."""
        scores = [0.0 if j.score is None else j.score for j in judgments]
        failures = sum(1 for j in judgments if j.score is None)
        correct = sum(1 for s in scores if s == 1.0)
        accuracy, error = mean_and_standard_error(scores)
        notes: list[str] = []
        if failures:
            notes.append(
                f"{failures} of {len(judgments)} answer(s) had no extractable answer; they count as wrong"
            )
        metrics: dict[str, float | int | None] = {
            "accuracy": accuracy,
            "standard_error": error,
            "correct": correct,
            "wrong": len(judgments) - correct - failures,
            "extraction_failures": failures,
        }
        return EvalSummary(self.name, len(judgments), metrics, notes)

    def describe(self) -> dict[str, Any]:
        """The judge's settings as JSON (what decides its verdicts), for fingerprints."""
        return {
            "judge": self.name,
            "extractor": self.extractor.describe(),
            "gold_extractor": self.gold_extractor.describe(),
        }
