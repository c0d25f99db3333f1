"""Input records: read a JSONL file (streamed) or a JSON array, and recognise each record's shape.

Recognised shapes, tried in this order:

- AFT reference: ``{"query": [messages]}``
- chat: ``{"messages": [messages]}``
- MT-Bench: ``{"question_id": ..., "turns": ["first user turn", "second user turn", ...]}``, multi-turn:
  each turn runs after the previous one's answer is appended as the assistant turn.
- AlpacaEval: ``{"instruction": "...", "input": "..."?}``
- plain: ``{"prompt": "..."}``

Every record keeps an id: its own ``id`` or ``question_id``, or else its line number (its position, for
a JSON array). Other fields are kept and carried to the output.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from attrs import field, frozen

from ._errors import InputError
from ._io import iter_json
from ._types import Message, as_conversation

__all__ = ("BadLine", "InputRecord", "parse_input_record", "read_records")


@frozen
class InputRecord:
    """One input record, ready to run.

    Attributes:
        id: Its own id, or its line number (position in a JSON array).
        line: Where it starts in the input file (1-based).
        kind: Its recognised shape: ``aft``, ``messages``, ``mt_bench``, ``alpaca_eval`` or ``prompt``.
        conversation: The conversation to answer (for MT-Bench, the first turn).
        followups: Further user turns, each answered after the previous answer (MT-Bench).
        data: The record as read, carried to the output.
    """

    id: str | int
    line: int
    kind: str
    conversation: tuple[Message, ...]
    followups: tuple[str, ...] = ()
    data: Mapping[str, Any] = field(factory=dict)


@frozen
class BadLine:
    """An input line that is not a usable record."""

    line: int
    error: str
    text: str


def _user(text: Any, key: str) -> tuple[Message, ...]:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"'{key}' must be a non-empty string")
    return (Message("user", text),)


def parse_input_record(data: Any, *, line: int) -> InputRecord:
    """Recognise one decoded JSON value as a record.

    Raises:
        InputError: The value is not an object, matches no known shape, or is malformed.
    """
    if not isinstance(data, dict):
        raise InputError(f"a record is a JSON object, got {type(data).__name__}")
    own = data.get("id", data.get("question_id"))
    if own is not None and (isinstance(own, bool) or not isinstance(own, str | int)):
        raise InputError(f"the record's id must be a string or an integer, got {own!r}")
    rid: str | int = own if own is not None else line
    followups: tuple[str, ...] = ()
    conversation: tuple[Message, ...]
    if "query" in data:
        kind, conversation = "aft", as_conversation(data["query"], path="query")
    elif "messages" in data:
        tools, choice = data.get("tools"), data.get("tool_choice")  # OpenAI's keys, beside the messages
        kind, conversation = (
            "messages",
            as_conversation(data["messages"], tools=tools, tool_choice=choice, path="messages"),
        )
    elif "turns" in data:
        turns = data["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise InputError("'turns' must be a non-empty list of strings")
        kind, conversation, followups = "mt_bench", _user(turns[0], "turns[0]"), tuple(turns[1:])
    elif "instruction" in data:
        instruction = data["instruction"]
        extra = data.get("input") or ""
        if not isinstance(extra, str):
            raise InputError("'input' must be a string")
        text = f"{instruction}\n\n{extra}" if extra and isinstance(instruction, str) else instruction
        kind, conversation = "alpaca_eval", _user(text, "instruction")
    elif "prompt" in data:
        kind, conversation = "prompt", _user(data["prompt"], "prompt")
    else:
        keys = ", ".join(sorted(data)) or "none"
        raise InputError(
            "unrecognised record: expected one of the keys query, messages, turns, instruction or "
            f"prompt; it has {keys}"
        )
    return InputRecord(rid, line, kind, conversation, followups, data)


def read_records(path: str | os.PathLike[str]) -> Iterator[InputRecord | BadLine]:
    """Read records one at a time: JSONL is streamed line by line; a JSON array is read whole.

    Blank lines are skipped. A line that is not valid JSON, or not a recognisable record, comes out as a
    :class:`BadLine` and the reading goes on.

    Raises:
        InputError: The file cannot be read, or a JSON array in it is broken (no item can be trusted).
    """
    for item in iter_json(path, what="input"):
        if item.error is not None:
            yield BadLine(item.line, item.error, item.text)
            continue
        try:
            yield parse_input_record(item.value, line=item.line)
        except InputError as exc:
            yield BadLine(item.line, str(exc), item.text)
