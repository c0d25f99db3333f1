"""Tool calls: the tools a conversation offers, the calls a model makes, and reading them from its text.

The shapes are OpenAI's chat-completions ones: a tool is ``{"type": "function", "function": {"name",
"description", "parameters"}}``, a call is ``{"id", "type": "function", "function": {"name",
"arguments"}}`` with the arguments as JSON text, and ``tool_choice`` is ``"auto"``, ``"none"``,
``"required"`` or ``{"type": "function", "function": {"name": ...}}``.

Engines that write text (vLLM in process, :class:`~aftlib.engines.FakeEngine`) give the tools to the
model's chat template, and the model calls them the way most open chat models were trained to (Hermes,
Qwen): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` after any text. When a call is
required (``"required"`` or a named function) and the engine constrains decoding, the answer is held to
that very format (:func:`calls_grammar`: free text, then tagged calls whose JSON is valid for the
tools), so even a model never trained on tools writes valid calls, and one that works a problem first
still can. :class:`CallReader` reads the calls while the text streams and at its end; an engine that
speaks the protocol itself (an OpenAI-compatible server) returns the calls it parsed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from attrs import field, frozen

from ._errors import EngineError, InputError

__all__ = (
    "CallReader",
    "Tool",
    "ToolCall",
    "ToolCallError",
    "ToolChoice",
    "as_tool_choice",
    "as_tools",
    "call_schema",
    "calls_grammar",
    "render_calls",
)

OPEN, CLOSE = "<tool_call>", "</tool_call>"
PREAMBLE = 256
"""The most characters of text before the calls of an answer that must call tools (a short working)."""
MAX_CALLS = 8
"""The most calls in an answer that must call tools (a model that would call forever cannot)."""
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ToolCallError(EngineError):
    """An answer's tool calls are malformed, or break the request's ``tool_choice``."""


def canonical(value: Any) -> str:
    """``value`` as canonical JSON text: sorted keys, no spaces (equal values, equal texts)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _jsonschema() -> Any:
    import jsonschema  # a dependency of aftlib, imported when a schema is checked

    return jsonschema


def check_schema(schema: Any, where: str) -> None:
    """Raise :class:`~aftlib.InputError` at ``where`` when ``schema`` is not a JSON schema."""
    if not isinstance(schema, Mapping):
        raise InputError(f"a JSON schema is an object, got {type(schema).__name__}", where=where)
    jsonschema = _jsonschema()
    try:
        jsonschema.validators.validator_for(dict(schema)).check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        inner = ".".join(str(p) for p in exc.path)
        raise InputError(
            f"not a JSON schema: {exc.message}", where=f"{where}.{inner}" if inner else where
        ) from None


def schema_problem(schema: Mapping[str, Any], value: Any) -> str | None:
    """Why ``value`` does not match ``schema`` (the first problem, with where it is), or None."""
    jsonschema = _jsonschema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return f"at {where}: {error.message}"


@frozen
class Tool:
    """A function the model may call.

    Attributes:
        name: The function's name (letters, digits, ``_`` and ``-``, at most 64).
        description: What it does, for the model.
        parameters_json: The JSON schema of its arguments, as compact JSON text in its own key order
            (the request stays hashable; a constrained call writes the arguments in the order the
            schema lists them, so a ``reasoning`` property listed before ``answer`` comes first).
    """

    name: str
    description: str = ""
    parameters_json: str = '{"type":"object","properties":{}}'

    @classmethod
    def function(cls, name: str, parameters: Mapping[str, Any] | None = None, description: str = "") -> Tool:
        """A tool from its name, argument schema and description (the schema is checked).

        Raises:
            InputError: The name is not a function name, or ``parameters`` is not a JSON schema.
        """
        schema = parameters or {"type": "object", "properties": {}}
        spec = {"name": name, "description": description, "parameters": schema}
        return as_tools([{"type": "function", "function": spec}])[0]

    @property
    def parameters(self) -> dict[str, Any]:
        """The argument schema, as a mapping."""
        value: dict[str, Any] = json.loads(self.parameters_json)
        return value

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's tool object."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


def new_call_id() -> str:
    """A fresh tool-call id (OpenAI's ``call_`` form)."""
    return f"call_{uuid.uuid4().hex[:24]}"


@frozen
class ToolCall:
    """A call of a tool, as a model proposed it.

    Two calls are equal when they call the same function with the same arguments: the id (which each
    sample draws anew) is left out, so votes and comparisons see what the call does.

    Attributes:
        name: The function called.
        arguments_json: Its arguments as canonical JSON text.
        id: The call's id, which the tool's result quotes (``tool_call_id``).
    """

    name: str
    arguments_json: str = "{}"
    id: str = field(factory=new_call_id, eq=False)

    @classmethod
    def of(cls, name: str, arguments: Mapping[str, Any], id: str | None = None) -> ToolCall:
        """A call of ``name`` with ``arguments`` (stored as canonical JSON)."""
        return cls(name, canonical(dict(arguments)), id or new_call_id())

    @property
    def arguments(self) -> dict[str, Any]:
        """The arguments, as a mapping."""
        value: dict[str, Any] = json.loads(self.arguments_json)
        return value

    @property
    def key(self) -> str:
        """The call as canonical JSON of its name and arguments: what votes compare."""
        return canonical({"name": self.name, "arguments": self.arguments})

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's tool-call object (arguments as JSON text)."""
        function = {"name": self.name, "arguments": self.arguments_json}
        return {"id": self.id, "type": "function", "function": function}

    def to_template(self) -> dict[str, Any]:
        """The call as chat templates expect it (arguments as a mapping, as Hugging Face templates do)."""
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


Mode = Literal["auto", "none", "required", "function"]


@frozen
class ToolChoice:
    """Whether the model may, must or must not call tools (OpenAI's ``tool_choice``).

    Attributes:
        mode: ``"auto"`` (text or calls, the model decides), ``"none"`` (text only), ``"required"``
            (at least one call) or ``"function"`` (a call of :attr:`name`).
        name: The function that must be called, for ``"function"``.
    """

    mode: Mode = "auto"
    name: str | None = None

    @property
    def must_call(self) -> bool:
        """True when the answer must be tool calls (``required`` or a named function)."""
        return self.mode in ("required", "function")

    def to_openai(self) -> str | dict[str, Any]:
        """OpenAI's ``tool_choice`` value."""
        if self.mode == "function":
            return {"type": "function", "function": {"name": self.name}}
        return self.mode


def _tools_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InputError(
            "tools is a list of {'type': 'function', 'function': {'name', 'parameters'}} objects, "
            f"got {type(value).__name__}",
            where=where,
        )
    return list(value)


def as_tools(value: Any, *, where: str = "tools") -> tuple[Tool, ...]:
    """Tools from :class:`Tool` objects or OpenAI's tool objects; None is no tools.

    Raises:
        InputError: A tool is malformed, its name is not a function name or is given twice, or its
            ``parameters`` is not a JSON schema (names the tool's place, ``tools[1].function.parameters``).
    """
    if value is None:
        return ()
    tools: list[Tool] = []
    for i, item in enumerate(_tools_list(value, where)):
        here = f"{where}[{i}]"
        if isinstance(item, Tool):
            tools.append(item)
            continue
        if not isinstance(item, Mapping) or item.get("type") != "function":
            raise InputError("a tool is {'type': 'function', 'function': {...}}", where=here)
        spec = item.get("function")
        if not isinstance(spec, Mapping):
            raise InputError("'function' is an object with 'name' and 'parameters'", where=f"{here}.function")
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(
                f"the function name must be 1 to 64 letters, digits, '_' or '-', got {name!r}",
                where=f"{here}.function.name",
            )
        description = spec.get("description") or ""
        if not isinstance(description, str):
            raise InputError("the description is a string", where=f"{here}.function.description")
        parameters = spec.get("parameters", {"type": "object", "properties": {}})
        check_schema(parameters, f"{here}.function.parameters")
        tools.append(Tool(name, description, json.dumps(dict(parameters), separators=(",", ":"))))
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.name in seen:
            raise InputError(
                f"the function {tool.name!r} is given twice", where=f"{where}[{i}].function.name"
            )
        seen.add(tool.name)
    return tuple(tools)


def as_tool_choice(value: Any, tools: Sequence[Tool], *, where: str = "tool_choice") -> ToolChoice:
    """A :class:`ToolChoice` from itself, None (``auto``) or OpenAI's ``tool_choice`` value.

    Raises:
        InputError: The value is malformed, names a function that is not among ``tools``, or asks for
            calls when there are no tools.
    """
    if value is None:
        choice = ToolChoice()
    elif isinstance(value, ToolChoice):
        choice = value
    elif value in ("auto", "none", "required"):
        choice = ToolChoice(value)
    elif isinstance(value, Mapping) and value.get("type") == "function":
        spec = value.get("function")
        name = spec.get("name") if isinstance(spec, Mapping) else None
        if not isinstance(name, str):
            raise InputError(
                "a named tool_choice is {'type': 'function', 'function': {'name': ...}}", where=where
            )
        choice = ToolChoice("function", name)
    else:
        raise InputError(
            "tool_choice is 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}, "
            f"got {value!r}",
            where=where,
        )
    names = [t.name for t in tools]
    if choice.mode == "function" and choice.name not in names:
        known = ", ".join(names) or "none"
        raise InputError(
            f"tool_choice names {choice.name!r}, which is not a tool (tools: {known})", where=where
        )
    if choice.mode == "required" and not tools:
        raise InputError("tool_choice is 'required', but there are no tools", where=where)
    return choice


def call_schema(tools: Sequence[Tool], choice: ToolChoice) -> dict[str, Any]:
    """The JSON schema of one call a constrained answer may make: ``{"arguments": ..., "name": ...}``.

    The arguments are the tool's ``parameters``; a named ``tool_choice`` allows that function only. The
    keys come in the order :func:`render_calls` writes them (canonical JSON: ``arguments`` first), so a
    constrained call reads as the calls an aggregator is shown and a model trained on them writes.
    """
    allowed = [t for t in tools if choice.mode != "function" or t.name == choice.name]
    calls = [
        {
            "type": "object",
            "properties": {"arguments": t.parameters, "name": {"const": t.name}},
            "required": ["arguments", "name"],
            "additionalProperties": False,
        }
        for t in allowed
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def calls_grammar(tools: Sequence[Tool], choice: ToolChoice) -> str:
    """The grammar (llguidance's Lark) of an answer that must call tools: text, then tagged calls.

    The text before the calls is free but for ``<``, up to :data:`PREAMBLE` characters (the model may
    work the problem first, as it would unconstrained, and a call still comes); then one or more
    ``<tool_call>`` tags (at most :data:`MAX_CALLS`), one per line, each around JSON valid for
    :func:`call_schema`. It is the format :class:`CallReader` reads, constrained or not. A tool whose
    ``parameters`` allow additional properties lets a model write arguments without end: give
    ``"additionalProperties": false``.
    """
    schema = json.dumps(call_schema(tools, choice), separators=(",", ":"))  # the parameters' own key order
    return (
        f'start: TEXT call ("\\n" call){{0,{MAX_CALLS - 1}}}\n'
        f"TEXT: /[^<]{{0,{PREAMBLE}}}/\n"
        f'call: "{OPEN}" body "{CLOSE}"\n'
        f"body: %json {schema}\n"
    )


def calls_key(calls: Sequence[ToolCall]) -> str:
    """What votes compare for an answer that calls tools: its calls' names and arguments, as JSON."""
    return "tool_calls:" + canonical([json.loads(c.key) for c in calls])


def render_calls(calls: Sequence[ToolCall]) -> str:
    """Calls as the tagged text a model writes them in (how an aggregator is shown a draft's calls)."""
    return "\n".join(f"{OPEN}{canonical({'name': c.name, 'arguments': c.arguments})}{CLOSE}" for c in calls)


def _call(value: Any, where: str) -> ToolCall:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} is not a JSON object")
    name, arguments = value.get("name"), value.get("arguments", value.get("parameters"))
    if not isinstance(name, str):
        raise ValueError(f"{where} has no function name")
    if isinstance(arguments, str):  # some models write the arguments as JSON text
        arguments = json.loads(arguments)
    if not isinstance(arguments, Mapping):
        raise ValueError(f"{where}'s arguments are not a JSON object")
    return ToolCall.of(name, arguments)


def _overlap(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag`` (text held back while streaming)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class CallReader:
    """Reads one sample's text into its content and its tool calls, while it streams and at its end.

    The text is read the same whether the engine constrained it (:func:`calls_grammar`) or not.

    Args:
        tools: The request's tools (none: the text is all content).
        choice: The request's ``tool_choice``.
    """

    def __init__(self, tools: Sequence[Tool], choice: ToolChoice) -> None:
        self.active = bool(tools) and choice.mode != "none"
        self._text = ""
        self._sent = 0

    def feed(self, delta: str) -> str:
        """The content among the text streamed so far that was not given yet (calls held back)."""
        if not self.active:
            return delta
        self._text += delta
        start = self._text.find(OPEN)
        end = start if start >= 0 else len(self._text) - _overlap(self._text, OPEN)
        out = self._text[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return out

    def read(self, text: str) -> tuple[str, tuple[ToolCall, ...], str | None]:
        """The content, the calls and why the calls could not be read (None when they could)."""
        if not self.active:
            return text, (), None
        try:
            start = text.find(OPEN)
            if start < 0:
                return text, (), None
            calls: list[ToolCall] = []
            rest = text[start:]
            while rest.strip():
                rest = rest.lstrip()
                if not rest.startswith(OPEN):
                    raise ValueError(f"text after the tool calls: {rest[:40]!r}")
                end = rest.find(CLOSE)
                if end < 0:
                    raise ValueError(f"a {OPEN} is never closed")
                calls.append(_call(json.loads(rest[len(OPEN) : end]), f"call {len(calls)}"))
                rest = rest[end + len(CLOSE) :]
            return text[:start], tuple(calls), None
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return text, (), f"malformed tool call: {exc}"


def call_problem(calls: Sequence[ToolCall], tools: Sequence[Tool], choice: ToolChoice) -> str | None:
    """Why ``calls`` break the tools or the choice, or None.

    The problems: an unknown function, arguments off their schema, no call when one is required, a
    call when none may be made.
    """
    if not tools or choice.mode == "none":
        return f"a call of {calls[0].name!r} where no call may be made" if calls else None
    if choice.must_call and not calls:
        return "no tool call, and tool_choice requires one"
    by_name = {t.name: t for t in tools}
    for i, call in enumerate(calls):
        tool = by_name.get(call.name)
        if tool is None:
            return f"call {i} is of {call.name!r}, which is not a tool"
        if choice.mode == "function" and call.name != choice.name:
            return f"call {i} is of {call.name!r}, and tool_choice requires {choice.name!r}"
        problem = schema_problem(tool.parameters, call.arguments)
        if problem is not None:
            return f"call {i} of {call.name!r} has arguments that do not match its parameters {problem}"
    return None
