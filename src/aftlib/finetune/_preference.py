"""Preference data: read UltraFeedback-layout and binarized records into typed records.

Two layouts are recognised, per record:

- UltraFeedback: ``{"instruction": str, "completions": [{"model", "response", "overall_score",
  "fine-grained_score", "annotations", ...}, ...]}``. Every completion is a response; its score is its
  ``overall_score`` (or another numeric key, see ``score_key``).
- binarized: ``{"prompt": str, "chosen": [messages], "rejected": [messages], "score_chosen",
  "score_rejected", ...}``: the chosen and rejected chats share the conversation and end with an
  assistant turn each. ``chosen`` and ``rejected`` may also be plain strings answering ``prompt``. The
  chosen response is the preferred one; the scores, if present, are kept.
- GSM8K: ``{"question": str, "answer": str}``: a problem with its worked solution (ending ``#### N``),
  such as :func:`aftlib.testing.arithmetic_problems` writes. The solution is the one response, and the
  best: it is the target of an aggregation example.

The record's id is its ``id`` or ``prompt_id``, if it has one. Responses with empty text are dropped
(and counted on the record). Anything malformed comes out as a :class:`~aftlib.finetune.Skip` naming
the line, and the reading goes on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from attrs import field, frozen

from .._errors import InputError
from .._io import iter_json
from .._records import parse_input_record
from .._types import Message, as_conversation
from ._examples import Skip, Source

__all__ = ("PreferenceRecord", "Response", "read_preferences")

Layout = Literal["ultrafeedback", "binarized", "gsm8k", "prompt"]


@frozen
class Response:
    """One rated response of a preference record.

    Attributes:
        text: The response.
        score: Its rating, or None when the record gives none.
        model: The model that wrote it, when the record says.
    """

    text: str
    score: float | None = None
    model: str | None = None


def _responses(value: Any) -> tuple[Response, ...]:
    return tuple(value)


@frozen
class PreferenceRecord:
    """A conversation with its rated responses.

    Attributes:
        source: Where it was read.
        layout: ``"ultrafeedback"``, ``"binarized"``, or ``"prompt"`` (a record with no responses, read
            only when asked for, for on-policy drafts with an engine target).
        conversation: The conversation the responses answer, ending with a user turn.
        responses: The responses with non-empty text, in the record's order.
        best: The index in :attr:`responses` of the best-rated response (the first one among equals;
            for the binarized layout, the chosen one), or None when a score is missing.
        missing_score: Why :attr:`best` is None.
        dropped: Responses dropped because their text is empty.
    """

    source: Source
    layout: Layout
    conversation: tuple[Message, ...]
    responses: tuple[Response, ...] = field(converter=_responses)
    best: int | None = None
    missing_score: str | None = None
    dropped: int = 0


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _own_id(data: Mapping[str, Any]) -> str | None:
    own = data.get("id", data.get("prompt_id"))
    if own is None:
        return None
    if isinstance(own, bool) or not isinstance(own, str | int):
        raise InputError(f"the record's id must be a string or an integer, got {own!r}")
    return str(own)


def _ultrafeedback(data: Mapping[str, Any], source: Source, score_key: str) -> PreferenceRecord:
    instruction = data.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputError("'instruction' must be a non-empty string")
    completions = data["completions"]
    if not isinstance(completions, list):
        raise InputError(f"'completions' must be a list, got {type(completions).__name__}")
    responses: list[Response] = []
    dropped = 0
    missing: list[str] = []
    for i, completion in enumerate(completions):
        if not isinstance(completion, Mapping):
            raise InputError(f"completions[{i}] must be an object, got {type(completion).__name__}")
        text = completion.get("response")
        if not isinstance(text, str):
            raise InputError(f"completions[{i}].response must be a string, got {type(text).__name__}")
        if not text.strip():
            dropped += 1
            continue
        score = _score(completion.get(score_key))
        if score is None:
            if score_key in completion:
                missing.append(f"completions[{i}].{score_key} is {completion[score_key]!r}, not a number")
            else:
                missing.append(f"completions[{i}] has no {score_key!r}")
        model = completion.get("model")
        responses.append(Response(text, score, model if isinstance(model, str) else None))
    best: int | None = None
    if responses and not missing:
        scores = [r.score for r in responses]
        best = scores.index(max(s for s in scores if s is not None))
    return PreferenceRecord(
        source,
        "ultrafeedback",
        (Message("user", instruction),),
        responses,
        best,
        "; ".join(missing) or None,
        dropped,
    )


def _chat_answer(value: Any, key: str, prompt: Any) -> tuple[tuple[Message, ...], str]:
    """Split a binarized ``chosen``/``rejected`` value into (conversation, answer)."""
    if isinstance(value, str):
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"'{key}' is a string, so 'prompt' must be a non-empty string")
        return (Message("user", prompt),), value
    if not isinstance(value, list) or not value:
        raise InputError(f"'{key}' must be a non-empty list of messages or a string")
    last = value[-1]
    answer = last.get("content") if isinstance(last, Mapping) and last.get("role") == "assistant" else None
    if not isinstance(answer, str):
        raise InputError(f"'{key}' must end with an assistant message")
    return as_conversation(value[:-1], path=key), answer


def _binarized(data: Mapping[str, Any], source: Source) -> PreferenceRecord:
    prompt = data.get("prompt")
    conversation, chosen = _chat_answer(data["chosen"], "chosen", prompt)
    other, rejected = _chat_answer(data["rejected"], "rejected", prompt)
    if other != conversation:
        raise InputError("'chosen' and 'rejected' answer different conversations")
    if not chosen.strip():
        raise InputError("the chosen response is empty")
    responses = [Response(chosen, _score(data.get("score_chosen")))]
    dropped = 0
    if rejected.strip():
        responses.append(Response(rejected, _score(data.get("score_rejected"))))
    else:
        dropped = 1
    return PreferenceRecord(source, "binarized", conversation, responses, 0, None, dropped)


def _gsm8k(data: Mapping[str, Any], source: Source) -> PreferenceRecord:
    question, answer = data["question"], data["answer"]
    for key, value in (("question", question), ("answer", answer)):
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{key!r} must be a non-empty string, got {value!r}")
    return PreferenceRecord(source, "gsm8k", (Message("user", question),), [Response(answer)], 0)


def parse_preference(
    data: Any, *, source: Source, score_key: str = "overall_score", prompts: bool = False
) -> PreferenceRecord:
    """Recognise one decoded JSON value as a preference record.

    Raises:
        InputError: The value matches no layout, or is malformed.
    """
    if not isinstance(data, Mapping):
        raise InputError(f"a record is a JSON object, got {type(data).__name__}")
    source = Source(source.file, source.line, _own_id(data))
    if "completions" in data:
        return _ultrafeedback(data, source, score_key)
    if "chosen" in data and "rejected" in data:
        return _binarized(data, source)
    if "question" in data and "answer" in data:
        return _gsm8k(data, source)
    if prompts:
        record = parse_input_record(dict(data), line=source.line)
        if record.followups:
            raise InputError("multi-turn 'turns' records are not supported here; give one conversation")
        return PreferenceRecord(source, "prompt", record.conversation, ())
    keys = ", ".join(sorted(data)) or "none"
    raise InputError(
        "unrecognised layout: expected 'completions' (UltraFeedback), 'chosen' and 'rejected' "
        f"(binarized), or 'question' and 'answer' (GSM8K); it has {keys}"
    )


def read_preferences(
    path: str | os.PathLike[str], *, score_key: str = "overall_score", prompts: bool = False
) -> Iterator[PreferenceRecord | Skip]:
    """Read preference records one at a time (JSONL streamed, or a JSON array).

    Args:
        path: The input file.
        score_key: The numeric key of an UltraFeedback completion that rates it (``overall_score``, or
            for example ``fine-grained_score``).
        prompts: Also accept records with no responses (any shape ``aftlib run`` reads: ``query``,
            ``messages``, ``instruction``, ``prompt``), as records of layout ``"prompt"``. Only drafts
            with an engine target can use them.

    Yields:
        A :class:`PreferenceRecord` per usable record, and a :class:`~aftlib.finetune.Skip` (reason
        ``"invalid JSON"``, ``"unrecognised layout"`` or ``"malformed record"``) per line that is not.

    Raises:
        InputError: The file cannot be read.
    """
    file = str(path)
    for item in iter_json(path, what="input"):
        line, value = item.line, item.value
        source = Source(file, line)
        if item.error is not None:
            yield Skip("invalid JSON", item.error, source)
            continue
        try:
            yield parse_preference(value, source=source, score_key=score_key, prompts=prompts)
        except InputError as exc:
            if isinstance(value, Mapping):
                own = value.get("id", value.get("prompt_id"))
                if isinstance(own, str | int) and not isinstance(own, bool):
                    source = Source(file, line, str(own))
            reason = "unrecognised layout" if exc.message.startswith("unrecognised") else "malformed record"
            yield Skip(reason, str(exc), source)
