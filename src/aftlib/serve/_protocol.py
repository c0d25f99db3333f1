"""The OpenAI chat-completions protocol: request parsing, responses, stream chunks and errors."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from .._errors import ConfigError
from .._results import AnswerDone, CandidateDone, Event, LayerDone, Result, TokenDelta
from .._structured import as_response_format
from .._topology import Topology
from .._types import Usage

__all__ = (
    "ApiError",
    "ChatCall",
    "Chunks",
    "completion_body",
    "parse_chat",
    "sse",
    "topology_event",
    "usage_body",
)

UNSUPPORTED = (
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "audio",
)
"""Request fields the server refuses (with a 400 naming the field) when they ask for something: a value
other than null, false, 0 or empty is refused."""

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class ApiError(Exception):
    """An error answered in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        status: The HTTP status.
        message: What is wrong, naming the field or the problem.
        type: The OpenAI error type (``invalid_request_error``, ``authentication_error``, ...).
        param: The request field at fault, if any.
        code: A short machine-readable code, if any.
        headers: Extra response headers (``retry-after``, ``x-should-retry``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 invalid-request error."""
    return ApiError(400, message, param=param, code=code)


@frozen
class ChatCall:
    """A parsed chat-completions request.

    Attributes:
        model: The model name asked for.
        messages: The conversation, as ``{"role", "content"}`` with string content (and an assistant
            turn's ``tool_calls``, a tool turn's ``tool_call_id``, as given).
        stream: Whether to answer with server-sent events.
        include_usage: Whether a streamed answer ends with a usage chunk.
        events: Whether a streamed answer also carries the draft events (``stream_options.aftlib_events``).
        sampling: Overrides of the final agent's sampling (``temperature``, ``top_p``, ``seed``,
            ``max_tokens``, ``stop``), only those the request gave.
        tools: The ``tools`` as given (checked with the conversation), or None.
        tool_choice: The ``tool_choice`` as given, or None.
    """

    model: str
    messages: tuple[dict[str, Any], ...]
    stream: bool = False
    include_usage: bool = False
    events: bool = False
    sampling: Mapping[str, Any] = {}
    tools: Any = None
    tool_choice: Any = None


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        raise bad(f"{where}.content is missing or null", f"{where}.content")
    if not isinstance(content, list):
        raise bad(f"{where}.content must be a string or a list of text parts", f"{where}.content")
    texts = []
    for i, part in enumerate(content):
        here = f"{where}.content[{i}]"
        if not isinstance(part, Mapping):
            raise bad(f"{here} must be an object like {{'type': 'text', 'text': ...}}", here)
        kind = part.get("type")
        if kind != "text":
            raise bad(f"{here} has type {kind!r}; only text parts are supported", f"{here}.type")
        text = part.get("text")
        if not isinstance(text, str):
            raise bad(f"{here}.text must be a string", f"{here}.text")
        texts.append(text)
    return "".join(texts)


def _number(body: Mapping[str, Any], key: str, *, integer: bool = False) -> float | int | None:
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise bad(f"{key} must be {'an integer' if integer else 'a number'}, got {value!r}", key)
    if not integer and not math.isfinite(value):
        raise bad(f"{key} must be a finite number, got {value!r}", key)
    return int(value) if integer else float(value)


def _flag(options: Mapping[str, Any], key: str, where: str) -> bool:
    value = options.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"'{where}' must be true or false, got {value!r}", where)
    return value


def parse_chat(body: Any) -> ChatCall:
    """Check a chat-completions body and take what the server uses from it; unknown keys are accepted.

    Raises:
        ApiError: 400 naming the field that is missing, malformed or not supported.
    """
    if not isinstance(body, Mapping):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' is required: the name of a topology (see GET /v1/models)", "model")
    for key in UNSUPPORTED:
        value = body.get(key)
        if value not in (None, False, [], {}):
            raise bad(f"{key!r} is not supported by this server", key, "unsupported_parameter")
    try:
        response_format = as_response_format(body.get("response_format"))
    except ConfigError as exc:
        raise bad(exc.message, exc.path or "response_format") from None
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise bad(f"'n' must be an integer, got {n!r}", "n")
    if n is not None and n != 1:
        raise bad(f"'n' must be 1 (one topology run per request), got {n!r}", "n", "unsupported_parameter")
    if "messages" not in body:
        raise bad("'messages' is required: a list of {'role', 'content'} turns", "messages")
    raw = body["messages"]
    if not isinstance(raw, list):
        raise bad("'messages' must be a list of {'role', 'content'} turns", "messages")
    if not raw:
        raise bad("'messages' is empty: the conversation needs at least one user turn", "messages")
    messages = []
    for i, turn in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(turn, Mapping):
            raise bad(f"{where} must be an object with 'role' and 'content'", where)
        role = turn.get("role")
        if role not in _ROLES:
            known = ", ".join(_ROLES)
            raise bad(f"{where}.role is {role!r}; this server takes {known}", f"{where}.role")
        calls = turn.get("tool_calls") if role == "assistant" else None
        content = turn.get("content")
        message: dict[str, Any] = {
            "role": _ROLES[role],
            "content": "" if calls and content is None else _content(content, where),
        }
        if calls:
            message["tool_calls"] = calls
        if role == "tool":
            message["tool_call_id"] = turn.get("tool_call_id")
        messages.append(message)
    if messages[-1]["role"] not in ("user", "tool"):
        raise bad(
            f"the conversation must end with a user turn or a tool result; messages[{len(messages) - 1}] "
            f"is {messages[-1]['role']!r}",
            "messages",
        )
    stream = _flag(body, "stream", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping):
        raise bad("'stream_options' must be an object", "stream_options")
    include_usage = _flag(options, "include_usage", "stream_options.include_usage")
    events = _flag(options, "aftlib_events", "stream_options.aftlib_events")
    sampling: dict[str, Any] = {}
    for key in ("temperature", "top_p"):
        value = _number(body, key)
        if value is not None:
            sampling[key] = float(value)
    seed = _number(body, "seed", integer=True)
    if seed is not None:
        sampling["seed"] = seed
    for key in ("max_completion_tokens", "max_tokens"):
        value = _number(body, key, integer=True)
        if value is not None:
            if value < 1:
                raise bad(f"{key} must be at least 1, got {value}", key)
            sampling.setdefault("max_tokens", value)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad("'stop' must be a string or a list of strings", "stop")
        sampling["stop"] = tuple(stops)
    if response_format is not None:
        sampling["response_format"] = response_format
    return ChatCall(
        model,
        tuple(messages),
        stream,
        include_usage,
        events,
        sampling,
        body.get("tools"),
        body.get("tool_choice"),
    )


def _usage_counts(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "saved_tokens": usage.saved_tokens,
    }


def layer_usages(result: Result) -> list[tuple[int, Usage]]:
    """Every layer's usage, the final agent's as layer ``len(layers)`` (absent when the run exited early)."""
    layers = [(layer.index, layer.usage) for layer in result.layers]
    if result.exit_layer is None:
        layers.append((len(result.layers), result.answer_usage))
    return layers


def usage_body(result: Result) -> dict[str, Any]:
    """The OpenAI ``usage`` object of a whole run, with the per-layer breakdown in ``aftlib_layers``.

    ``aftlib_saved_tokens`` estimates the completion tokens drafting did not generate (online stopping,
    adaptive sampling; :attr:`Usage.saved_tokens <aftlib.Usage.saved_tokens>`).
    """
    usage = result.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "aftlib_saved_tokens": usage.saved_tokens,
        "aftlib_layers": [{"layer": index, **_usage_counts(u)} for index, u in layer_usages(result)],
    }


def new_id() -> str:
    """A fresh completion id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(result: Result, model: str, completion_id: str) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message_body(result),
                "finish_reason": result.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": usage_body(result),
    }


def message_body(result: Result) -> dict[str, Any]:
    """The answer as an assistant message: its text, and its tool calls when it makes any.

    With tool calls, an empty text is null, as OpenAI answers.
    """
    if not result.tool_calls:
        return {"role": "assistant", "content": result.text}
    calls = [c.to_openai() for c in result.tool_calls]
    return {"role": "assistant", "content": result.text or None, "tool_calls": calls}


def call_deltas(result: Result) -> list[dict[str, Any]]:
    """The streamed ``delta`` objects of the answer's tool calls: one per call, whole, after the text."""
    return [{"tool_calls": [{"index": i, **c.to_openai()}]} for i, c in enumerate(result.tool_calls)]


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


KEEPALIVE = b": keep-alive\n\n"
DONE = sse("[DONE]")


@frozen
class Chunks:
    """Builds the ``chat.completion.chunk`` objects of one streamed answer (same id, created, model)."""

    id: str
    model: str
    created: int

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A chunk with ``choices`` and ``usage: null`` unless ``extra`` sets it."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": None,
            **extra,
        }

    def delta(self, delta: Mapping[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        """A standard chunk of choice 0."""
        return self.chunk(
            [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish_reason}]
        )

    def event(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """An extension chunk: no choices, the event under ``aftlib``."""
        return self.chunk([], aftlib=dict(event))


def topology_event(topology: Topology) -> dict[str, Any]:
    """The first extension event: the layers' agents and the final agent, so a UI can lay out columns."""
    return {
        "type": "topology",
        "layers": [
            {"layer": i, "agents": [{"name": a.name, "samples": a.samples} for a in layer.agents]}
            for i, layer in enumerate(topology.layers)
        ],
        "final": topology.final.name,
    }


def extension_event(event: Event) -> dict[str, Any] | None:
    """The extension event of a run event (None for the answer's end, which the standard chunks tell)."""
    if isinstance(event, TokenDelta):
        return {
            "type": "delta",
            "layer": event.layer,
            "agent": event.agent,
            "index": event.index,
            "text": event.text,
            "is_answer": event.is_answer,
        }
    if isinstance(event, CandidateDone):
        c = event.candidate
        return {
            "type": "candidate",
            "layer": c.layer,
            "agent": c.agent,
            "index": c.index,
            "completion_tokens": c.completion_tokens,
            "finish_reason": c.finish_reason,
        }
    if isinstance(event, LayerDone):
        layer = event.layer
        return {
            "type": "layer",
            "layer": layer.index,
            "candidates": len(layer.candidates),
            "usage": _usage_counts(layer.usage),
        }
    if isinstance(event, AnswerDone):
        return None
    return None


def models_body(names: Sequence[str], created: int) -> dict[str, Any]:
    """``GET /v1/models``: one entry per name."""
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": created, "owned_by": "aftlib"} for n in names],
    }
