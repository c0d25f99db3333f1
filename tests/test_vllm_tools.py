"""Tool calls on the real vLLM CPU engine: structured outputs make even the random tiny model's calls valid.

The tiny model never saw a tool. With ``tool_choice`` ``required`` (or a named function) the engine
constrains decoding to the calls' schema, so every draft and the answer are valid calls of the offered
tools; the openai SDK runs the whole round trip (call, tool result, text answer) through ``aftlib serve``,
streamed and not. The served app runs on the session's event loop, as in ``test_vllm_serve.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import jsonschema
import openai
import pytest

from aftlib import Aggregator, Proposer, SamplingParams, Topology, Vote
from aftlib.engines import OpenAIEngine, VLLMEngine
from aftlib.serve import create_app

from .test_vllm_serve import served_here

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

CITY = {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": CITY, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "time",
        "parameters": {
            "type": "object",
            "properties": {"city": CITY},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, TIME]
QUESTION = [{"role": "user", "content": "What is the weather in Oslo?"}]


def drafts_then(engine: VLLMEngine, final: str) -> Topology:
    """Three seeded drafts (one request), then an aggregator or a vote.

    A call takes the tiny model's tokenizer about 90 to 130 tokens, after at most 256 characters of
    text: the calls have room to finish.
    """
    drafts = Proposer(engine, name="draft", sampling=SamplingParams(n=3, max_tokens=448, seed=3))
    last = (
        Aggregator(engine, sampling=SamplingParams(max_tokens=448, seed=4))
        if final == "aggregate"
        else Vote()
    )
    return Topology([drafts], last)


def check_call(name: str, arguments: str) -> None:
    """The call is of an offered tool, with arguments valid against its parameters."""
    tool = {"weather": WEATHER, "time": TIME}[name]
    jsonschema.validate(json.loads(arguments), tool["function"]["parameters"])  # type: ignore[index]


@pytest.fixture(scope="module")
async def url(vllm_engine: VLLMEngine) -> AsyncIterator[str]:
    """The server for the module: drafts then an aggregator ('tiny-agg'), or then a vote ('tiny-vote')."""
    app = create_app(
        {"tiny-agg": drafts_then(vllm_engine, "aggregate"), "tiny-vote": drafts_then(vllm_engine, "vote")}
    )
    async with served_here(app) as base:
        yield base


@pytest.fixture
async def sdk(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """An async openai client of the server."""
    async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as client:
        yield client


async def test_sdk_round_trip_through_aftlib_serve_not_streamed(sdk: openai.AsyncOpenAI) -> None:
    """Required call: a valid call of an offered tool; with the tool's result, a text answer."""
    first = await sdk.chat.completions.create(
        model="tiny-agg", messages=QUESTION, tools=TOOLS, tool_choice="required"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert calls
    for call in calls:
        check_call(call.function.name, call.function.arguments)
    results = [{"role": "tool", "tool_call_id": c.id, "content": "Sunny, 21 C"} for c in calls]
    second = await sdk.chat.completions.create(
        model="tiny-agg",
        messages=[*QUESTION, choice.message.model_dump(exclude_none=True), *results],
        tools=TOOLS,
        tool_choice="none",
        max_tokens=12,
    )
    answer = second.choices[0]
    assert answer.message.tool_calls is None
    assert answer.message.content
    assert answer.finish_reason in ("stop", "length")


async def test_sdk_round_trip_through_aftlib_serve_streamed(sdk: openai.AsyncOpenAI) -> None:
    """Streamed, a named function: the SDK assembles the call from the chunks; then a streamed answer."""
    named = {"type": "function", "function": {"name": "time"}}
    async with sdk.chat.completions.stream(
        model="tiny-agg",
        messages=QUESTION,
        tools=TOOLS,
        tool_choice=named,  # type: ignore[arg-type]
    ) as stream:
        async for _ in stream:
            pass
        done = await stream.get_final_completion()
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert "<" not in (choice.message.content or "")  # free text before the calls, never a tag
    calls = choice.message.tool_calls or []
    assert calls
    assert all(c.function.name == "time" for c in calls)
    for call in calls:
        check_call(call.function.name, call.function.arguments)
    assistant = {"role": "assistant", "tool_calls": [c.model_dump(exclude_none=True) for c in calls]}
    results = [{"role": "tool", "tool_call_id": c.id, "content": "10:42"} for c in calls]
    chunks = await sdk.chat.completions.create(
        model="tiny-agg",
        messages=[*QUESTION, assistant, *results],
        tools=TOOLS,
        tool_choice="none",
        max_tokens=12,
        stream=True,
    )
    pieces = [c async for c in chunks]
    assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices)
    assert pieces[-1].choices[0].finish_reason in ("stop", "length")


async def test_vote_over_real_drafts_calls(vllm_engine: VLLMEngine) -> None:
    """A vote over three constrained drafts: each draft a valid call, the answer the most common one."""
    result = await drafts_then(vllm_engine, "vote").run(QUESTION, tools=TOOLS, tool_choice="required")
    (layer,) = result.layers
    assert len(layer.candidates) == 3
    assert not layer.malformed
    for candidate in layer.candidates:
        assert candidate.tool_calls
        for call in candidate.tool_calls:
            check_call(call.name, call.arguments_json)
    votes = result.answer.details["votes"]
    assert sum(votes.values()) == 3
    assert max(votes.values()) == votes[result.answer.details["answer"]]
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls


async def test_openai_engine_reads_calls_streamed_by_aftlib_serve(url: str) -> None:
    """An OpenAIEngine whose server is ``aftlib serve`` over the real engine reads the streamed calls.

    The calls streamed as OpenAI's ``tool_calls`` deltas come back whole and valid, as a topology of
    served topologies needs.
    """
    from aftlib import ChatRequest, Message, ToolChoice
    from aftlib._types import as_conversation

    tools = as_conversation("x", tools=TOOLS).tools
    request = ChatRequest(
        [Message("user", "Weather in Rome?")],
        SamplingParams(max_tokens=448, seed=1),
        tools=tools,
        tool_choice=ToolChoice("function", "weather"),
    )
    async with OpenAIEngine("tiny-vote", url) as engine:
        completion = await engine.generate(request)
    (sample,) = completion.samples
    assert sample.tool_error is None
    assert sample.tool_calls
    for call in sample.tool_calls:
        assert call.name == "weather"
        check_call(call.name, call.arguments_json)
