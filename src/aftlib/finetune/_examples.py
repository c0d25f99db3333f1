"""Training examples: the chat an aggregator (or a proposer) learns from, built by one function.

An aggregation example is exactly the request aftlib sends an aggregator at inference time, rendered by
the same :class:`~aftlib.PromptTemplate` code path, followed by the target as the assistant turn. A direct
example is the AFT proposal request (a system message holding one newline, then the conversation)
followed by the target. Every builder (off-policy, on-policy, traces) goes through :func:`examples_for`,
so identical inputs give identical examples whichever way they came in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from attrs import field, frozen

from .._errors import InputError
from .._templates import PromptTemplate, as_template
from .._types import Message, as_conversation

__all__ = (
    "Example",
    "Skip",
    "Source",
    "aggregation_example",
    "direct_example",
    "examples_for",
)

Kind = Literal["aggregation", "direct"]


@frozen
class Source:
    """Where an example or a skipped record came from.

    Attributes:
        file: The input file, as given.
        line: The record's line in it (its position, for a JSON array); 1-based.
        id: The record's own id as a string, or None when it has none.
    """

    file: str
    line: int
    id: str | None = None

    @property
    def key(self) -> str:
        """What identifies the record for seeding and resuming: its id, or else its line."""
        return f"id {self.id}" if self.id is not None else f"line {self.line}"

    def to_json(self) -> dict[str, Any]:
        """The source as written in a dataset line: ``{"file", "line", "id"}``.

        The id is always a string, the line number when the record has no id of its own, so that every
        line of a dataset has the same types.
        """
        return {
            "file": self.file,
            "line": self.line,
            "id": self.id if self.id is not None else str(self.line),
        }


def _messages(value: Iterable[Message]) -> tuple[Message, ...]:
    return tuple(value)


@frozen
class Example:
    """One training example: a chat whose last turn is the assistant's target.

    Attributes:
        messages: The chat: the prompt (a system message, then the conversation), then the target.
        kind: ``"aggregation"`` (the prompt holds the drafts) or ``"direct"`` (the prompt is the
            conversation alone).
        source: The record it came from.
    """

    messages: tuple[Message, ...] = field(converter=_messages)
    kind: Kind
    source: Source

    @property
    def prompt(self) -> tuple[Message, ...]:
        """Every message before the target."""
        return self.messages[:-1]

    @property
    def target(self) -> str:
        """The assistant turn the model learns to write."""
        return self.messages[-1].content

    def to_json(self) -> dict[str, Any]:
        """The dataset line: ``{"messages": [{"role", "content"}, ...], "kind", "source"}``."""
        return {
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "kind": self.kind,
            "source": self.source.to_json(),
        }


@frozen
class Skip:
    """A record (or one turn of a multi-turn record) that gave no example, and why.

    Attributes:
        reason: A short reason shared by similar records, such as ``"too few responses"``,
            ``"missing score"``, ``"invalid JSON"`` or ``"target engine failed"``; the data card counts
            skipped records by it.
        detail: What exactly was wrong with this record.
        source: The record.
    """

    reason: str
    detail: str
    source: Source

    def to_json(self) -> dict[str, Any]:
        """One line of the skipped-records file."""
        return {**self.source.to_json(), "reason": self.reason, "detail": self.detail}


def _target(target: str) -> Message:
    if not isinstance(target, str) or not target.strip():
        raise InputError("the target is empty")
    return Message("assistant", target)


def aggregation_example(
    conversation: Sequence[Mapping[str, Any]] | str,
    drafts: Sequence[str],
    target: str,
    *,
    template: str | PromptTemplate = "aft_aggregate",
) -> list[Message]:
    """The chat of one aggregation example: the aggregation request over ``drafts``, then ``target``.

    The prompt is what an :class:`~aftlib.Aggregator` with this template sends at inference time
    (``template.messages(conversation, drafts)``): for ``aft_aggregate``, a system message with the AFT
    instruction and the numbered drafts, then the conversation unchanged.

    Args:
        conversation: The conversation, ending with the user turn that the drafts answer.
        drafts: The proposals, in the order the aggregator reads them.
        target: The answer the aggregator should learn to write.
        template: The aggregation template (a built-in name or a ``.j2`` path).

    Raises:
        InputError: The conversation is malformed, there is no draft, or the target is empty.
    """
    turns = as_conversation(conversation)
    if not drafts:
        raise InputError("an aggregation example needs at least one draft")
    return [*as_template(template).messages(turns, list(drafts)), _target(target)]


def direct_example(
    conversation: Sequence[Mapping[str, Any]] | str,
    target: str,
    *,
    template: str | PromptTemplate = "aft_propose",
) -> list[Message]:
    """The chat of one direct example: the AFT proposal request, then ``target``.

    The prompt is what a :class:`~aftlib.Proposer` sends with the ``aft_propose`` template: a system
    message holding one newline (or the conversation's own system message), then the conversation.

    Raises:
        InputError: The conversation is malformed or the target is empty.
    """
    turns = as_conversation(conversation)
    return [*as_template(template).messages(turns, []), _target(target)]


def seeded_random(seed: int, *parts: str) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``parts`` alone (no global state, same on every run)."""
    digest = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def rng_seed(seed: int, *parts: str) -> int:
    """An integer seed fixed by ``seed`` and ``parts``, for :class:`random.Random` or an engine (31 bits)."""
    return int(seeded_random(seed, *parts) * 2**31)


def wants_direct(seed: int, key: str, ratio: float) -> bool:
    """Whether a record also gets a direct example: true for a seeded fraction ``ratio`` of records."""
    if ratio <= 0:
        return False
    return ratio >= 1 or seeded_random(seed, "direct", key) < ratio


def examples_for(
    conversation: Sequence[Message],
    drafts: Sequence[str],
    target: str,
    *,
    source: Source,
    template: PromptTemplate,
    direct: bool,
) -> list[Example]:
    """The examples of one record: its aggregation example, then its direct example if asked for.

    Every builder makes its examples here, so the same inputs make the same examples.
    """
    aggregation = aggregation_example(conversation, drafts, target, template=template)
    examples = [Example(aggregation, "aggregation", source)]
    if direct:
        examples.append(Example(direct_example(conversation, target), "direct", source))
    return examples
