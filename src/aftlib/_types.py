"""Typed values that flow between agents and engines."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import attrs
from attrs import field, frozen

from ._errors import ConfigError, InputError
from ._priority import current as current_priority
from ._structured import ResponseFormat, as_response_format
from ._tools import Tool, ToolCall, ToolChoice, as_tool_choice, as_tools

__all__ = (
    "ChatRequest",
    "Completion",
    "Conversation",
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

Role = Literal["system", "user", "assistant", "tool"]
_ROLES: frozenset[str] = frozenset(("system", "user", "assistant", "tool"))


def _calls(value: Iterable[ToolCall]) -> tuple[ToolCall, ...]:
    return tuple(value)


@frozen(eq=False)
class Message(Mapping[str, Any]):
    """One chat turn.

    A ``Message`` is also a read-only mapping in OpenAI's shape: the keys ``"role"`` and ``"content"``,
    and ``"tool_calls"`` (an assistant's calls) or ``"tool_call_id"`` (a tool's result) when set. It
    compares equal to the dict it stands for and converts with ``dict(message)``.

    Attributes:
        role: ``"system"``, ``"user"``, ``"assistant"`` or ``"tool"`` (a tool's result).
        content: The text (empty for an assistant turn that only calls tools).
        tool_calls: The tools an assistant turn called.
        tool_call_id: The call a tool turn answers.
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = field(default=(), converter=_calls)
    tool_call_id: str | None = None

    def __getitem__(self, key: str) -> Any:
        if key == "role":
            return self.role
        if key == "content":
            return self.content
        if key == "tool_calls" and self.tool_calls:
            return [c.to_openai() for c in self.tool_calls]
        if key == "tool_call_id" and self.tool_call_id is not None:
            return self.tool_call_id
        raise KeyError(key)

    def _keys(self) -> tuple[str, ...]:
        extra = ("tool_calls",) if self.tool_calls else ()
        return ("role", "content", *extra, *(("tool_call_id",) if self.tool_call_id is not None else ()))

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        calls = tuple((c.id, c.name, c.arguments_json) for c in self.tool_calls)
        return hash((self.role, self.content, calls, self.tool_call_id))

    def __repr__(self) -> str:
        extra = f", tool_calls={list(self.tool_calls)!r}" if self.tool_calls else ""
        extra += f", tool_call_id={self.tool_call_id!r}" if self.tool_call_id is not None else ""
        return f"Message(role={self.role!r}, content={self.content!r}{extra})"

    def to_template(self) -> dict[str, Any]:
        """The turn as chat templates read it (a call's arguments as a mapping, not JSON text)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_template() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class Conversation(tuple[Message, ...]):
    """A checked conversation (:func:`as_conversation`): its turns, and the tools it offers the model.

    A tuple of :class:`Message`, so code that reads a conversation keeps working; agents that ask a
    model send :attr:`tools` and :attr:`tool_choice` with their request.

    Attributes:
        tools: The tools the model may call (none: a plain chat).
        tool_choice: Whether it may, must or must not call them.
    """

    tools: tuple[Tool, ...]
    tool_choice: ToolChoice

    def __new__(
        cls, messages: Iterable[Message], tools: Iterable[Tool] = (), tool_choice: ToolChoice | None = None
    ) -> Conversation:
        self = super().__new__(cls, messages)
        self.tools = tuple(tools)
        self.tool_choice = ToolChoice() if tool_choice is None else tool_choice
        return self

    def __repr__(self) -> str:
        tools = f", tools={[t.name for t in self.tools]!r}" if self.tools else ""
        return f"Conversation({list(self)!r}{tools})"


def tools_of(conversation: Sequence[Message]) -> tuple[tuple[Tool, ...], ToolChoice]:
    """The tools and tool choice a conversation offers (none for a bare sequence of messages)."""
    if isinstance(conversation, Conversation):
        return conversation.tools, conversation.tool_choice
    return (), ToolChoice()


def turn_calls(turn: Mapping[str, Any], where: str) -> tuple[ToolCall, ...]:
    """The tool calls of an assistant turn in OpenAI's shape (ids kept, arguments parsed).

    Raises:
        InputError: A call is malformed (names it, ``messages[2].tool_calls[0].id``).
    """
    raw = turn.get("tool_calls")
    if raw in (None, []):
        return ()
    if not isinstance(raw, list):
        raise InputError("tool_calls is a list of calls", where=f"{where}.tool_calls")
    calls = []
    for i, call in enumerate(raw):
        here = f"{where}.tool_calls[{i}]"
        if isinstance(call, ToolCall):
            calls.append(call)
            continue
        spec = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise InputError(
                "a call is {'id', 'type': 'function', 'function': {'name', 'arguments'}}", where=here
            )
        ident = call.get("id")
        if not isinstance(ident, str) or not ident:
            raise InputError("a call needs its 'id', which the tool's result quotes", where=f"{here}.id")
        arguments = spec.get("arguments", "{}")
        try:
            value = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError as exc:
            raise InputError(
                f"the arguments are not JSON ({exc})", where=f"{here}.function.arguments"
            ) from None
        if not isinstance(value, Mapping):
            raise InputError("the arguments are a JSON object", where=f"{here}.function.arguments")
        calls.append(ToolCall.of(spec["name"], value, ident))
    return tuple(calls)


def as_conversation(
    conversation: Iterable[Mapping[str, Any]] | str,
    *,
    tools: Any = None,
    tool_choice: Any = None,
    path: str = "conversation",
) -> Conversation:
    """Check a conversation and turn it into messages.

    Args:
        conversation: A sequence of ``{"role", "content"}`` mappings (or :class:`Message`), or a single
            string that stands for one user turn. Assistant turns may carry ``tool_calls`` and tool
            turns answer them (``{"role": "tool", "tool_call_id", "content"}``), in OpenAI's shapes.
        tools: The tools the model may call (:class:`~aftlib.Tool` objects or OpenAI's tool objects);
            None keeps those of a :class:`Conversation` given, else none.
        tool_choice: ``"auto"`` (the default), ``"none"``, ``"required"``, a named function
            (``{"type": "function", "function": {"name": ...}}``) or a :class:`~aftlib.ToolChoice`.
        path: The key path of the conversation in errors (``conversation[2].role``); a record's reader
            passes its key (``messages``, ``query``).

    Returns:
        The conversation, with its tools.

    Raises:
        InputError: The conversation is empty, a turn is malformed, a role is unknown, a system turn is not
            first, a tool result answers a call no assistant turn made, the conversation ends with neither
            a user turn nor a tool result, or the tools or tool choice are malformed.
    """
    if isinstance(conversation, Conversation):
        if tools is None and tool_choice is None:
            return conversation
        tools = conversation.tools if tools is None else tools
    if isinstance(conversation, str):
        conversation = [{"role": "user", "content": conversation}]
    top = None if path == "conversation" else path
    if isinstance(conversation, Mapping) or not isinstance(conversation, Iterable):
        raise InputError(
            f"a conversation is a list of {{'role', 'content'}} turns, got {type(conversation).__name__}",
            where=top,
        )
    offered = as_tools(tools)
    choice = as_tool_choice(tool_choice, offered)
    messages: list[Message] = []
    called: set[str] = set()
    for i, turn in enumerate(conversation):
        where = f"{path}[{i}]"
        if not isinstance(turn, Mapping):
            raise InputError(f"a turn is a mapping, got {type(turn).__name__}", where=where)
        role, content = turn.get("role"), turn.get("content")
        if "role" not in turn:
            present = ", ".join(repr(k) for k in turn) or "no keys"
            raise InputError(
                f"missing 'role': a turn is {{'role': ..., 'content': ...}}, this one has {present}",
                where=where,
            )
        if role not in _ROLES:
            raise InputError(
                f"unknown role {role!r}; expected one of system, user, assistant, tool",
                where=f"{where}.role",
            )
        calls = turn_calls(turn, where) if role == "assistant" else ()
        if calls and content is None:
            content = ""
        if "content" not in turn and not calls:
            present = ", ".join(repr(k) for k in turn) or "no keys"
            raise InputError(
                f"missing 'content': a turn is {{'role': ..., 'content': ...}}, this one has {present}",
                where=where,
            )
        if not isinstance(content, str):
            raise InputError(
                f"content must be a string, got {'null' if content is None else type(content).__name__}",
                where=f"{where}.content",
            )
        if role == "system" and i != 0:
            raise InputError("a system turn may only come first", where=where)
        call_id = None
        if role == "tool":
            call_id = turn.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in called:
                made = ", ".join(sorted(called)) or "none"
                raise InputError(
                    f"a tool result for call id {call_id!r}, which no assistant turn before it made "
                    f"(calls made: {made})",
                    where=f"{where}.tool_call_id",
                )
        called.update(c.id for c in calls)
        messages.append(Message(role, content, calls, call_id))
    if not messages or messages[-1].role == "system":
        raise InputError("the conversation has no user turn", where=top)
    if messages[-1].role not in ("user", "tool"):
        raise InputError(
            f"the conversation must end with a user turn (or a tool's result), it ends with "
            f"{messages[-1].role!r}",
            where=f"{path}[{len(messages) - 1}]",
        )
    return Conversation(messages, offered, choice)


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


def _tool_tuple(value: Iterable[Tool]) -> tuple[Tool, ...]:
    return tuple(value)


def _message_list(messages: Iterable[Message]) -> list[Message]:
    return list(messages)


@frozen
class ChatRequest:
    """One generation request to an engine: a chat and how to sample it.

    Attributes:
        messages: The chat, as :class:`Message` turns (each also a ``{"role", "content"}`` mapping).
        sampling: How to sample, including the number of samples ``n``.
        lora: The name of a LoRA adapter to apply, for engines that serve adapters.
        tools: The tools the model may call (the engine gives them to the model's chat template, or
            sends them to its server).
        tool_choice: Whether the model may, must or must not call them; an engine that constrains
            decoding makes a required call valid JSON for its tool's parameters.
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
    tools: tuple[Tool, ...] = field(default=(), converter=_tool_tuple, kw_only=True)
    tool_choice: ToolChoice = field(factory=ToolChoice, kw_only=True)
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
        tool_calls: The tools the sample calls, when the request offered tools (``text`` is then the
            text before the calls).
        tool_error: Why the sample's tool calls could not be read (a malformed call), or None.
    """

    index: int
    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = field(default=(), converter=_calls)
    tool_error: str | None = None


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
