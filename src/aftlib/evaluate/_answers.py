"""Answers files, baselines, questions and references, joined into the items a judge scores.

Answers come in the layouts ``aftlib run`` writes, recognised by their first record and read by the
same codecs that write them (:mod:`aftlib.run`):

- ``aftlib``: ``aftlib run``'s JSONL, ``{"id", "status", "response", "responses"?, ...the input
  record's fields}``; error records (``"status": "error"``) are skipped and counted;
- ``aft``: the AFT reference layout, the input items with a ``response``;
- ``alpaca_eval``: AlpacaEval's model outputs, a JSON list of ``{"instruction", "output", "generator"}``;
- ``model_answer``: FastChat's ``model_answer/<model>.jsonl``, ``{"question_id", "model_id",
  "choices": [{"index": 0, "turns": [...]}]}``.

What they are judged against: an AlpacaEval baseline (the AlpacaEval layout), MT-Bench questions
(FastChat ``question.jsonl``: ``question_id``, ``category``, ``turns``) and reference answers (the
``model_answer`` layout), or math gold answers (GSM8K ``{"question", "answer"}``, with an optional
``id`` or ``question_id``). Every bad line is reported as ``FILE:LINE: what is wrong`` and skipped.

The joins: AlpacaEval by the exact ``instruction`` string, MT-Bench by ``question_id``, math by
``id``/``question_id`` and else by the question's text. Each reports how many answers matched, how
many of the other side's entries have no answer (missing) and how many answers have no counterpart
(extra); the items are the matched ones.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import field, frozen

from .._errors import InputError
from .._io import iter_json
from ..run import ANSWER_LAYOUTS, Answer, codec, layout_of
from ._judge import EvalItem

__all__ = (
    "ANSWER_LAYOUTS",
    "Answer",
    "AnswersFile",
    "GoldAnswers",
    "Joined",
    "Question",
    "join_alpaca_eval",
    "join_math",
    "join_mt_bench",
    "read_answers",
    "read_baseline",
    "read_gold",
    "read_questions",
    "read_references",
)

PathLike = str | os.PathLike[str]
_REFERENCE_CATEGORIES = ("math", "reasoning", "coding")


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@frozen
class AnswersFile:
    """An answers file, read.

    Attributes:
        path: The file.
        layout: One of :data:`ANSWER_LAYOUTS`.
        answers: Its usable answers, in file order.
        errors: Error records skipped (aftlib's ``"status": "error"``).
        bad: The bad lines, each an :class:`~aftlib.InputError` naming ``FILE:LINE``.
    """

    path: Path
    layout: str
    answers: tuple[Answer, ...]
    errors: int = 0
    bad: tuple[InputError, ...] = ()


@frozen
class Question:
    """An MT-Bench question (FastChat ``question.jsonl``)."""

    id: str
    category: str | None
    turns: tuple[str, ...] = field(converter=_strings)


@frozen
class GoldAnswers:
    """Math gold answers: by id (``id`` or ``question_id``) and by question text."""

    by_id: Mapping[str, str]
    by_question: Mapping[str, str]
    bad: tuple[InputError, ...] = ()

    def __len__(self) -> int:
        return max(len(self.by_id), len(self.by_question))


@frozen
class Joined:
    """Answers joined with what they are judged against.

    Attributes:
        items: The matched answers, ready to judge, in the answers file's order.
        matched: Answers that found their counterpart.
        missing: Entries of the baseline, questions or references that no answer matched.
        extra: Answers with no counterpart (left out).
        notes: Lines a reader should see (the counts above, when not all matched).
    """

    items: tuple[EvalItem, ...]
    matched: int
    missing: int
    extra: int
    notes: tuple[str, ...] = field(default=(), converter=_strings)

    def counts(self) -> dict[str, int]:
        """``{"matched", "missing", "extra"}``."""
        return {"matched": self.matched, "missing": self.missing, "extra": self.extra}


def _id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def _row(layout: str, value: Mapping[str, Any], line: int) -> Answer:
    """One row of a layout whose rows are all answers (no error records)."""
    answer = codec(layout).read(value, line)
    if answer is None:
        raise ValueError("an error record, not an answer")
    return answer


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _records(path: PathLike, what: str, bad: list[InputError]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """The JSON objects of a file; lines that are not JSON objects go to ``bad``."""
    for item in iter_json(path, what=what):
        where = f"{path}:{item.line}"
        if item.error is not None:
            bad.append(InputError(item.error, where=where))
        elif not isinstance(item.value, dict):
            bad.append(InputError(f"a record is a JSON object, got {type(item.value).__name__}", where=where))
        else:
            yield item.line, item.value


def read_answers(path: PathLike, *, layout: str | None = None) -> AnswersFile:
    """Read an answers file of any of :data:`ANSWER_LAYOUTS` (recognised by its first record).

    Args:
        path: The file (JSONL or a JSON array).
        layout: The layout, if known; by default the first usable record decides.

    Raises:
        InputError: The file cannot be read, or its layout is not one of :data:`ANSWER_LAYOUTS`.
    """
    if layout is not None and layout not in ANSWER_LAYOUTS:
        raise InputError(f"unknown answers layout {layout!r}; choose {', '.join(ANSWER_LAYOUTS)}")
    bad: list[InputError] = []
    answers: list[Answer] = []
    seen: set[str] = set()
    errors = 0
    for line, value in _records(path, "answers", bad):
        where = f"{path}:{line}"
        if layout is None:
            layout = layout_of(value)
            if layout is None:
                keys = ", ".join(sorted(value)) or "none"
                raise InputError(
                    "not an answers record: expected aftlib's output (id, status, response), AlpacaEval "
                    f"(instruction, output), FastChat model_answer (question_id, choices) or an AFT item "
                    f"(an input record with a response); it has {keys}",
                    where=where,
                )
        try:
            answer = codec(layout).read(value, line)
        except ValueError as exc:
            bad.append(InputError(str(exc), where=where))
            continue
        if answer is None:
            errors += 1
            continue
        if answer.id in seen:
            what = "instruction" if layout == "alpaca_eval" else "id"
            bad.append(InputError(f"duplicate {what} {answer.id[:80]!r}", where=where))
            continue
        seen.add(answer.id)
        answers.append(answer)
    return AnswersFile(Path(path), layout or "aftlib", tuple(answers), errors, tuple(bad))


def read_baseline(path: PathLike) -> tuple[dict[str, str], tuple[InputError, ...]]:
    """An AlpacaEval outputs file (``[{"instruction", "output", ...}]``): instruction -> output, bad lines."""
    bad: list[InputError] = []
    outputs: dict[str, str] = {}
    for line, value in _records(path, "baseline", bad):
        where = f"{path}:{line}"
        try:
            answer = _row("alpaca_eval", value, line)
        except ValueError as exc:
            bad.append(InputError(str(exc), where=where))
            continue
        if answer.id in outputs:
            bad.append(InputError(f"duplicate instruction {answer.id[:80]!r}", where=where))
            continue
        outputs[answer.id] = answer.outputs[0]
    return outputs, tuple(bad)


def read_questions(path: PathLike) -> tuple[dict[str, Question], tuple[InputError, ...]]:
    """FastChat's ``question.jsonl``: question_id -> :class:`Question`, and the bad lines."""
    bad: list[InputError] = []
    questions: dict[str, Question] = {}
    for line, value in _records(path, "questions", bad):
        where = f"{path}:{line}"
        qid = _id(value.get("question_id"))
        category = value.get("category")
        if qid is None:
            bad.append(
                InputError(
                    f"'question_id' must be a string or an integer, got {value.get('question_id')!r}",
                    where=where,
                )
            )
        elif not _is_strings(value.get("turns")):
            bad.append(InputError("'turns' must be a non-empty list of strings", where=where))
        elif category is not None and not isinstance(category, str):
            bad.append(InputError("'category' must be a string", where=where))
        elif qid in questions:
            bad.append(InputError(f"duplicate question_id {qid}", where=where))
        else:
            questions[qid] = Question(qid, category, value["turns"])
    return questions, tuple(bad)


def read_references(path: PathLike) -> tuple[dict[str, tuple[str, ...]], tuple[InputError, ...]]:
    """Reference answers in FastChat's ``model_answer`` layout: question_id -> turns, and the bad lines."""
    bad: list[InputError] = []
    references: dict[str, tuple[str, ...]] = {}
    for line, value in _records(path, "references", bad):
        where = f"{path}:{line}"
        try:
            answer = _row("model_answer", value, line)
        except ValueError as exc:
            bad.append(InputError(str(exc), where=where))
            continue
        references.setdefault(answer.id, answer.outputs)
    return references, tuple(bad)


def _question_key(text: str) -> str:
    return " ".join(text.split())


def read_gold(path: PathLike) -> GoldAnswers:
    """Math gold answers, GSM8K's layout: ``{"question", "answer"}`` (plus ``id`` or ``question_id``).

    ``answer`` is the whole reference solution (its gold answer is found by the math judge's gold
    extractor: after GSM8K's last ``#### ``).
    """
    bad: list[InputError] = []
    by_id: dict[str, str] = {}
    by_question: dict[str, str] = {}
    for line, value in _records(path, "references", bad):
        where = f"{path}:{line}"
        answer = value.get("answer")
        if not isinstance(answer, str):
            bad.append(InputError("'answer' must be a string (the reference solution)", where=where))
            continue
        rid = _id(value.get("id", value.get("question_id")))
        question = value.get("question")
        if rid is None and not isinstance(question, str):
            bad.append(InputError("a reference needs an 'id', a 'question_id' or a 'question'", where=where))
            continue
        if rid is not None:
            by_id.setdefault(rid, answer)
        if isinstance(question, str):
            by_question.setdefault(_question_key(question), answer)
    return GoldAnswers(by_id, by_question, tuple(bad))


def _notes(what: str, matched: int, missing: int, extra: int, other: str) -> list[str]:
    notes = []
    if missing:
        notes.append(f"{missing} {other} have no answer (missing); judged the {matched} matched")
    if extra:
        notes.append(f"{extra} answer(s) match no {what} (extra); left out")
    return notes


def join_alpaca_eval(answers: AnswersFile, baseline: Mapping[str, str]) -> Joined:
    """AlpacaEval: each answer with the baseline's output for its exact instruction.

    Items: ``turns[0]`` the instruction, ``answers[0]`` the model's output, ``reference[0]`` the
    baseline's output.
    """
    items: list[EvalItem] = []
    used: set[str] = set()
    extra = 0
    for answer in answers.answers:
        instruction = answer.instruction
        if instruction is None or instruction not in baseline or instruction in used:
            extra += 1
            continue
        used.add(instruction)
        items.append(
            EvalItem(
                answer.id,
                (instruction,),
                (answer.outputs[-1],),
                (baseline[instruction],),
                generator=answer.generator,
                data=answer.data,
            )
        )
    missing = len(baseline) - len(used)
    notes = _notes("baseline instruction", len(items), missing, extra, "baseline instruction(s)")
    return Joined(tuple(items), len(items), missing, extra, notes)


def join_mt_bench(
    answers: AnswersFile,
    questions: Mapping[str, Question] | None,
    references: Mapping[str, Sequence[str]] | None = None,
) -> Joined:
    """MT-Bench: each answer with its question (by ``question_id``) and its reference answers.

    Questions of the math, reasoning and coding categories get their reference answers.
    Without ``questions``, an answer's own turns and ``category`` are used (aftlib's output of an
    MT-Bench input carries them); an answer with neither is extra.
    """
    items: list[EvalItem] = []
    extra = 0
    used: set[str] = set()
    unreferenced = 0
    for answer in answers.answers:
        if questions is not None:
            question = questions.get(answer.id)
        else:
            category = answer.data.get("category")
            question = (
                Question(answer.id, category if isinstance(category, str) else None, answer.turns)
                if answer.turns
                else None
            )
        if question is None:
            extra += 1
            continue
        used.add(answer.id)
        reference: tuple[str, ...] = ()
        if question.category in _REFERENCE_CATEGORIES:
            found = None if references is None else references.get(answer.id)
            if found is None:
                unreferenced += 1
            else:
                reference = tuple(found)
        items.append(
            EvalItem(
                answer.id,
                question.turns,
                answer.outputs,
                reference,
                category=question.category,
                generator=answer.generator,
                data=answer.data,
            )
        )
    missing = 0 if questions is None else len(questions) - len(used)
    notes = _notes("question", len(items), missing, extra, "question(s)")
    if unreferenced:
        notes.append(f"{unreferenced} math, reasoning or coding question(s) have no reference answer")
    return Joined(tuple(items), len(items), missing, extra, notes)


def join_math(answers: AnswersFile, gold: GoldAnswers | None = None) -> Joined:
    """Math: each answer with its gold answer, by ``id`` (or ``question_id``), else by question text.

    Without ``gold``, an answer's own ``answer`` field is its reference (aftlib's output of a GSM8K
    input carries it). Items: ``turns[0]`` the question, ``answers[0]`` the last output, ``reference[0]``
    the reference solution.
    """
    items: list[EvalItem] = []
    extra = 0
    used: set[str] = set()
    for answer in answers.answers:
        reference: str | None = None
        key: str | None = None
        if gold is None:
            own = answer.data.get("answer")
            reference, key = (own, answer.id) if isinstance(own, str) else (None, None)
        else:
            if answer.id in gold.by_id:
                reference, key = gold.by_id[answer.id], f"id:{answer.id}"
            elif answer.question is not None and _question_key(answer.question) in gold.by_question:
                key = f"q:{_question_key(answer.question)}"
                reference = gold.by_question[_question_key(answer.question)]
        if reference is None or key is None or key in used:
            extra += 1
            continue
        used.add(key)
        question = answer.question or (answer.turns[0] if answer.turns else "")
        items.append(
            EvalItem(
                answer.id,
                (question,),
                (answer.outputs[-1],),
                (reference,),
                generator=answer.generator,
                data=answer.data,
            )
        )
    missing = 0 if gold is None else max(len(gold) - len(used), 0)
    notes = _notes("reference", len(items), missing, extra, "reference(s)")
    return Joined(tuple(items), len(items), missing, extra, notes)
