"""Typed values that flow between agents and engines."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

import attrs
from attrs import field, frozen

from ._errors import ConfigError, InputError
from ._priority import current as current_priority
from ._structured import ResponseFormat, as_response_format

__all__ = (
    "ChatRequest",
    "Completion",
    "Cut",
    "Delta",
    "Message",
    "Role",
    "Sample",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
    "as_conversation",
)

Role = Literal["system", "user", "assistant"]
_ROLES: frozenset[str] = frozenset(("system", "user", "assistant"))


@frozen(eq=False)
class Message(Mapping[str, str]):
    """One chat turn.

    A ``Message`` is also a read-only mapping with the keys ``"role"`` and ``"content"``, so it compares
    equal to the ``{"role": ..., "content": ...}`` dict it stands for and converts with ``dict(message)``.
    """

    role: Role
    content: str

    def __getitem__(self, key: str) -> str:
        if key == "role":
            return self.role
        if key == "content":
            return self.content
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(("role", "content"))

    def __len__(self) -> int:
        return 2

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.role, self.content))

    def __repr__(self) -> str:
        return f"Message(role={self.role!r}, content={self.content!r})"


def as_conversation(
    conversation: Iterable[Mapping[str, Any]] | str, *, path: str = "conversation"
) -> tuple[Message, ...]:
    """Check a conversation and turn it into messages.

    Args:
        conversation: A sequence of ``{"role", "content"}`` mappings (or :class:`Message`), or a single
            string that stands for one user turn.
        path: The key path of the conversation in errors (``conversation[2].role``); a record's reader
            passes its key (``messages``, ``query``).

    Returns:
        The conversation as a tuple of messages.

    Raises:
        InputError: The conversation is empty, a turn is malformed, a role is unknown, a system turn is not
            first, or the conversation does not end with a user turn.
    """
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    top = None if path == "conversation" else path
    if isinstance(conversation, Mapping) or not isinstance(conversation, Iterable):
        raise InputError(
            f"a conversation is a list of {{'role', 'content'}} turns, got {type(conversation).__name__}",
            where=top,
        )
    messages: list[Message] = []
    for i, turn in enumerate(conversation):
        where = f"{path}[{i}]"
        if not isinstance(turn, Mapping):
            raise InputError(f"a turn is a mapping, got {type(turn).__name__}", where=where)
        for key in ("role", "content"):
            if key not in turn:
                present = ", ".join(repr(k) for k in turn) or "no keys"
                raise InputError(
                    f"missing {key!r}: a turn is {{'role': ..., 'content': ...}}, this one has {present}",
                    where=where,
                )
        role, content = turn.get("role"), turn.get("content")
        if role not in _ROLES:
            raise InputError(
                f"unknown role {role!r}; expected one of system, user, assistant",
                where=f"{where}.role",
            )
        if not isinstance(content, str):
            raise InputError(
                f"content must be a string, got {'null' if content is None else type(content).__name__}",
                where=f"{where}.content",
            )
        if role == "system" and i != 0:
            raise InputError("a system turn may only come first", where=where)
        messages.append(Message(role, content))
    if not messages or messages[-1].role == "system":
        raise InputError("the conversation has no user turn", where=top)
    if messages[-1].role != "user":
        raise InputError(
            f"the conversation must end with a user turn, it ends with {messages[-1].role!r}",
            where=f"{path}[{len(messages) - 1}]",
        )
    return tuple(messages)


def _check_positive(name: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and value < 1:
            raise ConfigError(f"{attribute.name} must be at least 1, got {value}", path=name)

    return check


def _check_temperature(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"temperature must be >= 0, got {value}", path="temperature")


def _check_top_p(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {value}", path="top_p")


def _check_logprobs(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 20):
        raise ConfigError(
            f"logprobs must be an integer from 0 to 20, or None; got {value!r}", path="logprobs"
        )


def _stop_tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@frozen
class SamplingParams:
    """How one agent samples.

    Attributes:
        temperature: Sampling temperature; 0 is greedy.
        top_p: Nucleus sampling mass, in (0, 1].
        max_tokens: The most tokens to generate per sample.
        n: Samples drawn per request (all from one prompt, in one engine request).
        seed: Per-request seed, or None for the engine's own randomness.
        stop: Strings that end a sample (the tokenizer's EOS always does).
        logprobs: Ask for the log probabilities of the generated tokens and of the ``logprobs`` most
            likely tokens at each position (0 for the chosen tokens only); None asks for none. Engines
            that cannot give them raise :class:`~aftlib.ConfigError` naming the engine.
        response_format: The answer must be JSON, or JSON matching a schema
            (:class:`~aftlib.ResponseFormat`, or OpenAI's ``response_format`` object); enforced while
            decoding by engines that can, and checked after (a mismatch is a
            :class:`~aftlib.StructuredOutputError`). None: free text.
    """

    temperature: float = field(default=0.7, converter=float, validator=_check_temperature)
    top_p: float = field(default=1.0, converter=float, validator=_check_top_p)
    max_tokens: int = field(default=1024, validator=_check_positive("max_tokens"))
    n: int = field(default=1, validator=_check_positive("n"))
    seed: int | None = None
    stop: tuple[str, ...] = field(default=(), converter=_stop_tuple)
    logprobs: int | None = field(default=None, validator=_check_logprobs)
    response_format: ResponseFormat | None = field(default=None, converter=as_response_format)


def _message_list(messages: Iterable[Message]) -> list[Message]:
    return list(messages)


@frozen
class ChatRequest:
    """One generation request to an engine: a chat and how to sample it.

    Attributes:
        messages: The chat, as :class:`Message` turns (each also a ``{"role", "content"}`` mapping).
        sampling: How to sample, including the number of samples ``n``.
        lora: The name of a LoRA adapter to apply, for engines that serve adapters.
        priority: The request's place in the engine's queue: lower runs first (vLLM's convention), equal
            priorities in arrival order. By default, the priority of the topology step the request is
            built in, or a neutral one outside any step (behind every answer in flight; the docs'
            "Priority by depth");
            engines without a priority scheduler ignore it (:attr:`Engine.supports_priority
            <aftlib.engines.Engine.supports_priority>`). Not part of a request's equality: two requests
            that differ only in their place in line are the same request.
    """

    messages: list[Message] = field(converter=_message_list)
    sampling: SamplingParams = field(factory=SamplingParams)
    lora: str | None = None
    priority: int = field(factory=current_priority, kw_only=True, eq=False)


@frozen
class Usage:
    """Token counts of one or more requests.

    Attributes:
        prompt_tokens: Prompt tokens, counted once per request.
        completion_tokens: Generated tokens over all samples.
        cached_tokens: Prompt tokens served from the engine's prefix cache.
        requests: How many engine requests these counts add up.
        reused_tokens: Completion tokens served from a request cache instead of generated
            (:class:`~aftlib.engines.CachingEngine`); not part of ``completion_tokens``.
        saved_tokens: An estimate of the completion tokens not generated because drafting stopped early
            (:class:`~aftlib.Drafts`: drafts stopped for low confidence, drafts not drawn once the drafts
            agreed or the budget ran out): for each, the mean length of the finished drafts of the same
            request less what it generated. Not part of ``completion_tokens``.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0
    reused_tokens: int = 0
    saved_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.requests + other.requests,
            self.reused_tokens + other.reused_tokens,
            self.saved_tokens + other.saved_tokens,
        )

    @staticmethod
    def sum(usages: Iterable[Usage]) -> Usage:
        """Add up several usages."""
        total = Usage()
        for usage in usages:
            total = total + usage
        return total


def _alternatives(value: Iterable[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    return tuple((str(token), float(logprob)) for token, logprob in value)


@frozen
class TokenLogprob:
    """The log probability of one generated token, and of the most likely tokens at its position.

    Attributes:
        token: The generated token's text.
        logprob: Its natural-log probability.
        top: The most likely tokens at this position as ``(token, logprob)``, most likely first (as many
            as the request's ``logprobs`` asked for; the generated token may or may not be among them).
    """

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = field(default=(), converter=_alternatives)


@frozen
class Sample:
    """One finished sample of a request.

    Attributes:
        index: Its position among the request's ``n`` samples.
        text: The generated text.
        finish_reason: Why it ended: ``"stop"`` (EOS or a stop string), ``"length"`` (max_tokens) or
            another engine-specific reason.
        completion_tokens: Tokens generated for it.
        logprobs: One entry per generated token when the request asked for log probabilities, else None.
    """

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None


def _sample_tuple(samples: Iterable[Sample]) -> tuple[Sample, ...]:
    return tuple(samples)


@frozen
class Completion:
    """The answer to one :class:`ChatRequest`: its samples, in index order, and its usage."""

    samples: tuple[Sample, ...] = field(converter=_sample_tuple)
    usage: Usage = field(factory=Usage)


def _logprob_tuple(value: Iterable[TokenLogprob]) -> tuple[TokenLogprob, ...]:
    return tuple(value)


@frozen
class Delta:
    """A piece of text streamed for one sample of a request.

    Attributes:
        index: The sample's index among the request's ``n`` samples.
        text: The new text (may be empty when a token adds no text yet).
        logprobs: The log probabilities of the tokens generated since the last delta, when the request
            asked for them (an engine that replays a stored sample may give them all in one delta).
    """

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = field(default=(), converter=_logprob_tuple)


@frozen
class Cut:
    """A reference shortened to fit the context.

    Attributes:
        reference: Its position among the references (0-based).
        tokens: Its length in tokens.
        kept: The tokens kept (the marker comes after them).
    """

    reference: int
    tokens: int
    kept: int
