"""Output layouts: how answered records are written, and how a row of each layout is read back.

One :class:`Codec` per layout, so the runner, the shard merge and the answers reader of ``aftlib eval``
agree on every layout by construction:

- ``jsonl``: aftlib's own output, one line per record as it finishes (``id``, ``status``, ``response``,
  ``responses`` for several turns, usage, timings, the input record's fields); read back as the
  ``aftlib`` answers layout (error records skipped and counted);
- ``aft``: the input items with a ``response``, one JSON array in input order (the AFT reference
  scripts' layout);
- ``alpaca_eval``: AlpacaEval's model outputs, ``{"instruction", "output", "generator"}``;
- ``mt_bench``: FastChat's ``model_answer/<model>.jsonl``, ``{"question_id", "answer_id", "model_id",
  "choices": [{"index": 0, "turns": [...]}], "tstamp"}``; read back as ``model_answer``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from attrs import field, frozen

from .._errors import InputError
from .._io import atomic_write
from .._records import InputRecord, parse_input_record
from ._journal import record_key

__all__ = ("ANSWER_LAYOUTS", "CODECS", "FORMATS", "Answer", "Codec", "codec", "layout_of", "write_format")


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


Answers = Mapping[str, Mapping[str, Any]]
"""Each answered record's output line, by its id's :func:`~aftlib.run.record_key`."""

Writer = Callable[[IO[str], Sequence[InputRecord], Answers, str], None]
Reader = Callable[[Mapping[str, Any], int], "Answer | None"]


@frozen
class Codec:
    """One output layout.

    Attributes:
        name: The name ``--format`` gives it.
        layout: The name the answers reader gives it (``aftlib``, ``aft``, ``alpaca_eval``,
            ``model_answer``).
        write: Writes the answered records (input order; records without an answer left out) and
            the model name to an open file.
        read: Reads one row back as an :class:`Answer` (None for an error record); raises
            ``ValueError`` saying what is wrong with a malformed row.
    """

    name: str
    layout: str
    write: Writer
    read: Reader


def _id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _answered(
    order: Sequence[InputRecord], answers: Answers
) -> Iterable[tuple[InputRecord, Mapping[str, Any]]]:
    for record in order:
        answer = answers.get(record_key(record.id))
        if answer is not None:
            yield record, answer


# --- jsonl: aftlib's own lines ------------------------------------------------------------------------


def _write_jsonl(handle: IO[str], order: Sequence[InputRecord], answers: Answers, generator: str) -> None:
    for _, answer in _answered(order, answers):
        handle.write(json.dumps(answer, ensure_ascii=False, default=str) + "\n")


def _turns_of(data: Mapping[str, Any], line: int) -> tuple[str, ...]:
    try:
        record = parse_input_record(data, line=line)
    except InputError:
        return ()
    return (record.conversation[-1].content, *record.followups)


def _answer_with_turns(
    rid: str, line: int, outputs: tuple[str, ...], value: Mapping[str, Any], data: Mapping[str, Any]
) -> Answer:
    turns = _turns_of(data, line)
    instruction, question, generator = value.get("instruction"), value.get("question"), value.get("generator")
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


def _read_jsonl(value: Mapping[str, Any], line: int) -> Answer | None:
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
    data = {k: v for k, v in value.items() if k not in ("status", "response", "responses", "usage")}
    return _answer_with_turns(rid, line, outputs, value, data)


# --- aft: the input items with a response --------------------------------------------------------------


def _write_aft(handle: IO[str], order: Sequence[InputRecord], answers: Answers, generator: str) -> None:
    items = [{**record.data, "response": answer["response"]} for record, answer in _answered(order, answers)]
    json.dump(items, handle, ensure_ascii=False, indent=4)


def _read_aft(value: Mapping[str, Any], line: int) -> Answer:
    response = value.get("response")
    if not isinstance(response, str):
        raise ValueError("an AFT item needs a string 'response'")
    data = {k: v for k, v in value.items() if k != "response"}
    try:
        record = parse_input_record(data, line=line)
    except InputError as exc:
        raise ValueError(f"not an input record with a response: {exc.message}") from None
    return _answer_with_turns(str(record.id), line, (response,), value, data)


# --- alpaca_eval --------------------------------------------------------------------------------------


def _write_alpaca(handle: IO[str], order: Sequence[InputRecord], answers: Answers, generator: str) -> None:
    rows = [
        {
            "instruction": record.data.get("instruction", record.conversation[-1].content),
            "output": answer["response"],
            "generator": generator,
        }
        for record, answer in _answered(order, answers)
    ]
    json.dump(rows, handle, ensure_ascii=False, indent=2)


def _read_alpaca(value: Mapping[str, Any], line: int) -> Answer:
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


# --- mt_bench: FastChat's model answers ---------------------------------------------------------------


def _write_mt_bench(handle: IO[str], order: Sequence[InputRecord], answers: Answers, generator: str) -> None:
    for record, answer in _answered(order, answers):
        row = {
            "question_id": record.data.get("question_id", record.id),
            "answer_id": uuid.uuid5(uuid.NAMESPACE_URL, f"{generator}/{record.id}").hex,
            "model_id": generator,
            "choices": [{"index": 0, "turns": answer.get("responses", [answer["response"]])}],
            "tstamp": time.time(),
        }
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_mt_bench(value: Mapping[str, Any], line: int) -> Answer:
    qid = _id(value.get("question_id"))
    if qid is None:
        raise ValueError(f"'question_id' must be a string or an integer, got {value.get('question_id')!r}")
    choices = value.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("'choices' must be a non-empty list of objects")
    turns: Any = choices[0].get("turns")
    if not _is_strings(turns):
        raise ValueError("'choices[0].turns' must be a non-empty list of strings")
    model = value.get("model_id")
    return Answer(
        qid,
        line,
        tuple(str(turn) for turn in turns),
        generator=model if isinstance(model, str) else None,
        data=value,
    )


CODECS: dict[str, Codec] = {
    "jsonl": Codec("jsonl", "aftlib", _write_jsonl, _read_jsonl),
    "aft": Codec("aft", "aft", _write_aft, _read_aft),
    "alpaca_eval": Codec("alpaca_eval", "alpaca_eval", _write_alpaca, _read_alpaca),
    "mt_bench": Codec("mt_bench", "model_answer", _write_mt_bench, _read_mt_bench),
}
"""Every layout, by its ``--format`` name."""

FORMATS: tuple[str, ...] = tuple(CODECS)
"""The ``--format`` names: ``jsonl``, ``aft``, ``alpaca_eval``, ``mt_bench``."""

ANSWER_LAYOUTS: tuple[str, ...] = tuple(c.layout for c in CODECS.values())
"""The layouts the answers reader reads: ``aftlib``, ``aft``, ``alpaca_eval``, ``model_answer``."""


def codec(name: str) -> Codec:
    """The codec of a ``--format`` name or an answers layout name.

    Raises:
        KeyError: Neither.
    """
    for candidate in CODECS.values():
        if name in (candidate.name, candidate.layout):
            return candidate
    raise KeyError(name)


def layout_of(value: Mapping[str, Any]) -> str | None:
    """The answers layout a row looks like (by its keys), or None."""
    if "choices" in value:
        return "model_answer"
    if "status" in value:
        return "aftlib"
    if "instruction" in value and "output" in value:
        return "alpaca_eval"
    if "response" in value:
        return "aft"
    return None


def write_format(
    path: Path, fmt: str, order: Sequence[InputRecord], answers: Answers, generator: str
) -> None:
    """Write answered records in layout ``fmt`` to ``path``, atomically.

    Args:
        path: The output file.
        fmt: One of :data:`FORMATS`.
        order: The input records, in input order; those without an answer are left out.
        answers: Each answered record's output line, by its id's key.
        generator: The model name written into ``alpaca_eval`` and ``mt_bench`` rows.
    """
    with atomic_write(path) as handle:
        CODECS[fmt].write(handle, order, answers, generator)
