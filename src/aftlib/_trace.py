"""Traces: a result written out in full, complete enough to send the same requests again.

``aftlib run --trace`` adds one trace per answered turn to each output line. A trace holds every
layer's candidates (text, tokens, cuts, and their confidence metrics when their requests asked for log
probabilities), the agents that failed, and every engine request as it was
sent (messages, sampling, LoRA adapter). :func:`traced_requests` reads the requests back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen

from ._errors import InputError
from ._results import AgentFailure, Candidate, Result
from ._tools import as_tool_choice, as_tools
from ._types import ChatRequest, Message, SamplingParams, turn_calls

__all__ = ("TracedRequest", "failure_dict", "trace", "traced_requests")


@frozen
class TracedRequest:
    """One engine request read back from a trace.

    Attributes:
        layer: The layer's position (the final agent's is the number of layers).
        agent: The agent's name.
        request: The request as it was sent.
    """

    layer: int
    agent: str
    request: ChatRequest


def failure_dict(failure: AgentFailure) -> dict[str, Any]:
    """``failure`` as a JSON-ready mapping."""
    return {"layer": failure.layer, "agent": failure.agent, "reason": failure.reason, "error": failure.error}


def _request_dict(layer: int, agent: str, request: ChatRequest) -> dict[str, Any]:
    s = request.sampling
    return {
        "layer": layer,
        "agent": agent,
        "messages": [dict(m) for m in request.messages],
        "sampling": {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "n": s.n,
            "seed": s.seed,
            "stop": list(s.stop),
            "logprobs": s.logprobs,
            "response_format": None if s.response_format is None else s.response_format.to_openai(),
        },
        "lora": request.lora,
        **(
            {"tools": [t.to_openai() for t in request.tools], "tool_choice": request.tool_choice.to_openai()}
            if request.tools
            else {}
        ),
    }


def _candidate_dict(c: Candidate) -> dict[str, Any]:
    return {
        "agent": c.agent,
        "index": c.index,
        "text": c.text,
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "cuts": [{"reference": k.reference, "tokens": k.tokens, "kept": k.kept} for k in c.cuts],
        **({"read": list(c.read)} if c.read is not None else {}),
        **({"details": dict(c.details)} if c.details else {}),
        **({"confidence": c.confidence.summary()} if c.confidence is not None else {}),
        **({"tool_calls": [t.to_openai() for t in c.tool_calls]} if c.tool_calls else {}),
        **({"tool_error": c.tool_error} if c.tool_error is not None else {}),
    }


def trace(result: Result) -> dict[str, Any]:
    """The trace of one result, as a JSON-ready mapping."""
    requests: list[dict[str, Any]] = []
    seen: set[int] = set()
    for candidate in (*(c for layer in result.layers for c in layer.candidates), result.answer):
        for request in candidate.requests:  # the n samples of one request share it: write it once
            if id(request) not in seen:
                seen.add(id(request))
                requests.append(_request_dict(candidate.layer, candidate.agent, request))
    return {
        "layers": [[_candidate_dict(c) for c in layer.candidates] for layer in result.layers],
        "layer_elapsed": [round(layer.elapsed, 4) for layer in result.layers],
        "failures": [failure_dict(f) for f in result.failures],
        **(
            {"malformed": [[_candidate_dict(c) for c in layer.malformed] for layer in result.layers]}
            if any(layer.malformed for layer in result.layers)
            else {}
        ),
        "answer": _candidate_dict(result.answer),
        "requests": requests,
        "elapsed": round(result.elapsed, 4),
    }


def traced_requests(entry: Mapping[str, Any]) -> list[TracedRequest]:
    """Read the requests of one trace back, in the order they were written (layer by layer).

    Args:
        entry: One trace: an item of an output line's ``trace`` list.

    Raises:
        InputError: The trace has no requests or a malformed one (the error names which).
    """
    raw = entry.get("requests") if isinstance(entry, Mapping) else None
    if not isinstance(raw, list):
        raise InputError("the trace has no 'requests' list (written by aftlib run --trace)")
    out = []
    for i, item in enumerate(raw):
        where = f"requests[{i}]"
        if not isinstance(item, Mapping):
            raise InputError(f"a request is an object, got {type(item).__name__}", where=where)
        for key in ("layer", "agent", "messages", "sampling", "lora"):
            if key not in item:
                raise InputError(f"malformed request: missing {key!r}", where=where)
        try:
            messages = [_message(m, f"{where}.messages[{j}]") for j, m in enumerate(item["messages"])]
            sampling = SamplingParams(**item["sampling"])
            tools = as_tools(item.get("tools"), where=f"{where}.tools")
            choice = as_tool_choice(item.get("tool_choice"), tools, where=f"{where}.tool_choice")
            request = ChatRequest(messages, sampling, item["lora"], tools=tools, tool_choice=choice)
            out.append(TracedRequest(int(item["layer"]), str(item["agent"]), request))
        except InputError:
            raise
        except (TypeError, ValueError) as exc:
            raise InputError(f"malformed request: {exc}", where=where) from None
    return out


def _message(turn: Any, where: str) -> Message:
    if not isinstance(turn, Mapping):
        raise InputError(f"a message is an object, got {type(turn).__name__}", where=where)
    for key in ("role", "content"):
        if key not in turn:
            raise InputError(f"malformed request: missing {key!r}", where=where)
    return Message(turn["role"], turn["content"], turn_calls(turn, where), turn.get("tool_call_id"))
