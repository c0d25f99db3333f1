"""Answers files, baselines, questions and references, joined into the items a judge scores.

Answers come in three layouts, recognised by their first record:

- ``aftlib``: ``aftlib run``'s JSONL, ``{"id", "status", "response", "responses"?, ...the input
  record's fields}``; error records (``"status": "error"``) are skipped and counted;
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
from .._records import parse_input_record
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

ANSWER_LAYOUTS: tuple[str, ...] = ("aftlib", "alpaca_eval", "model_answer")
"""The layouts :func:`read_answers` reads."""

PathLike = str | os.PathLike[str]
_REFERENCE_CATEGORIES = ("math", "reasoning", "coding")


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@frozen
class Answer:
    """One record of an answers file.

    Attributes:
        id: Its id: ``id`` (aftlib), ``question_id`` (FastChat), or the instruction (AlpacaEval).
        line: Where it is in its file.
        outputs: The answer of each turn.
        turns: The user turns it answers, when the file has them (aftlib, AlpacaEval); else empty.
        generator: The model that wrote it (``generator``, ``model_id``), when the file says.
        instruction: The AlpacaEval instruction it answers (``instruction``, else its first turn).
        question: The question's text for a math join (``question``, else its first turn).
        data: The record as read.
    """

    id: str
    line: int
    outputs: tuple[str, ...] = field(converter=_strings)
    turns: tuple[str, ...] = field(default=(), converter=_strings)
    generator: str | None = None
    instruction: str | None = None
    question: str | None = None
    data: Mapping[str, Any] = field(factory=dict, eq=False, repr=False)


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


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _layout_of(value: Mapping[str, Any]) -> str | None:
    if "choices" in value:
        return "model_answer"
    if "status" in value:
        return "aftlib"
    if "instruction" in value and "output" in value:
        return "alpaca_eval"
    return None


def _aftlib_answer(value: Mapping[str, Any], line: int) -> Answer | None:
    """An aftlib output record, or None for an error record."""
    status = value.get("status")
    if status == "error":
        return None
    if status != "done":
        raise ValueError(f'\'status\' must be "done" or "error", got {status!r}')
    rid = _id(value.get("id"))
    if rid is None:
        raise ValueError(f"'id' must be a string or an integer, got {value.get('id')!r}")
    responses = value.get("responses")
    if responses is not None:
        if not _is_strings(responses):
            raise ValueError("'responses' must be a non-empty list of strings")
        outputs = tuple(responses)
    elif isinstance(value.get("response"), str):
        outputs = (value["response"],)
    else:
        raise ValueError("a done record needs a string 'response'")
    turns: tuple[str, ...] = ()
    data = {k: v for k, v in value.items() if k not in ("status", "response", "responses", "usage")}
    try:
        record = parse_input_record(data, line=line)
    except InputError:
        record = None
    if record is not None:
        turns = (record.conversation[-1].content, *record.followups)
    instruction = value.get("instruction")
    question = value.get("question")
    generator = value.get("generator")
    return Answer(
        rid,
        line,
        outputs,
        turns,
        generator=generator if isinstance(generator, str) else None,
        instruction=instruction if isinstance(instruction, str) else (turns[0] if turns else None),
        question=question if isinstance(question, str) else (turns[0] if turns else None),
        data=value,
    )


def _alpaca_answer(value: Mapping[str, Any], line: int) -> Answer:
    instruction, output = value.get("instruction"), value.get("output")
    if not isinstance(instruction, str):
        raise ValueError("'instruction' must be a string")
    if not isinstance(output, str):
        raise ValueError("'output' must be a string")
    generator = value.get("generator")
    return Answer(
        instruction,
        line,
        (output,),
        (instruction,),
        generator=generator if isinstance(generator, str) else None,
        instruction=instruction,
        question=instruction,
        data=value,
    )


def _choice_turns(value: Mapping[str, Any]) -> tuple[str, ...]:
    choices = value.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("'choices' must be a non-empty list of objects")
    turns: Any = choices[0].get("turns")
    if not _is_strings(turns):
        raise ValueError("'choices[0].turns' must be a non-empty list of strings")
    return tuple(str(turn) for turn in turns)


def _model_answer(value: Mapping[str, Any], line: int) -> Answer:
    qid = _id(value.get("question_id"))
    if qid is None:
        raise ValueError(f"'question_id' must be a string or an integer, got {value.get('question_id')!r}")
    model = value.get("model_id")
    return Answer(
        qid, line, _choice_turns(value), generator=model if isinstance(model, str) else None, data=value
    )


_READERS = {"aftlib": _aftlib_answer, "alpaca_eval": _alpaca_answer, "model_answer": _model_answer}


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
    if layout is not None and layout not in _READERS:
        raise InputError(f"unknown answers layout {layout!r}; choose {', '.join(ANSWER_LAYOUTS)}")
    bad: list[InputError] = []
    answers: list[Answer] = []
    seen: set[str] = set()
    errors = 0
    for line, value in _records(path, "answers", bad):
        where = f"{path}:{line}"
        if layout is None:
            layout = _layout_of(value)
            if layout is None:
                keys = ", ".join(sorted(value)) or "none"
                raise InputError(
                    "not an answers record: expected aftlib's output (id, status, response), AlpacaEval "
                    f"(instruction, output) or FastChat model_answer (question_id, choices); it has {keys}",
                    where=where,
                )
        try:
            answer = _READERS[layout](value, line)
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
            answer = _alpaca_answer(value, line)
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
            answer = _model_answer(value, line)
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
