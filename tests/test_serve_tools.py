"""Tool calling through ``aftlib serve`` on FakeEngine: the openai SDK and an agent framework's client.

The topology (two proposers, an aggregator) calls ``add`` until it has the tool's result, then answers
in text, so a client runs the whole round trip: call, tool result, final answer. The server is served
once for the module by uvicorn on a loopback port. The real vLLM engine's round trip is in
``test_vllm_tools.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import openai
import pytest

from aftlib import ChatRequest, Proposer, SamplingParams, Topology, Vote
from aftlib.serve import create_app
from aftlib.testing import FakeEngine

from .test_serve import served
from .test_tools import ADD, TOOLS

pytestmark = pytest.mark.anyio


def adder(request: ChatRequest, index: int) -> str:
    """Call ``add`` on the two numbers of the question; once the result is there, say it."""
    last = request.messages[-1]
    if last.role == "tool":
        return f"The sum is {last.content}."
    if not request.tools:
        return "I cannot add without a tool."
    numbers = [int(w) for w in last.content.replace("?", " ").split() if w.isdigit()]
    call = {"name": "add", "arguments": {"a": numbers[0], "b": numbers[1]}}
    return f"<tool_call>{json.dumps(call)}</tool_call>"


def tool_topology() -> Topology:
    """Two proposers (one with two samples) and a vote, on one FakeEngine."""
    engine = FakeEngine(handler=adder)
    return Topology(
        [[Proposer(engine, name="a", sampling=SamplingParams(n=2)), Proposer(engine, name="b")]],
        Vote(on_no_answer="first"),
    )


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The server for the module: the tool-calling topology as 'tools-moa'."""
    with served(create_app({"tools-moa": tool_topology()})) as url:
        yield url


@pytest.fixture
async def sdk(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    """An async openai client of the server, closed after the test."""
    async with openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0) as client:
        yield client


QUESTION = [{"role": "user", "content": "What is 2 + 40?"}]


async def test_sdk_round_trip_not_streamed(sdk: openai.AsyncOpenAI) -> None:
    """The answer is a call of ``add`` (finish ``tool_calls``); after the result, the text answer."""
    first = await sdk.chat.completions.create(model="tools-moa", messages=QUESTION, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == ("add", {"a": 2, "b": 40})
    result = {"role": "tool", "tool_call_id": call.id, "content": "42"}
    second = await sdk.chat.completions.create(
        model="tools-moa",
        messages=[*QUESTION, choice.message.model_dump(exclude_none=True), result],
        tools=TOOLS,
    )
    assert second.choices[0].message.content == "The sum is 42."
    assert second.choices[0].finish_reason == "stop"
    assert not second.choices[0].message.tool_calls


async def test_sdk_round_trip_streamed(sdk: openai.AsyncOpenAI) -> None:
    """Streamed, the call arrives as a ``tool_calls`` delta the SDK's stream helper assembles."""
    async with sdk.chat.completions.stream(model="tools-moa", messages=QUESTION, tools=[ADD]) as stream:
        async for _ in stream:
            pass
        done = await stream.get_final_completion()
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert json.loads(call.function.arguments) == {"a": 2, "b": 40}
    assistant = {"role": "assistant", "tool_calls": [call.model_dump(exclude_none=True)]}
    chunks = await sdk.chat.completions.create(
        model="tools-moa",
        messages=[*QUESTION, assistant, {"role": "tool", "tool_call_id": call.id, "content": "42"}],
        tools=[ADD],
        stream=True,
    )
    texts, reasons = [], []
    async for chunk in chunks:
        for c in chunk.choices:
            texts.append(c.delta.content or "")
            reasons.append(c.finish_reason)
    assert "".join(texts) == "The sum is 42."
    assert reasons[-1] == "stop"


async def test_tool_choice_none_answers_in_text(sdk: openai.AsyncOpenAI) -> None:
    """``tool_choice: none`` hides the tools from the model: it answers in text."""
    response = await sdk.chat.completions.create(
        model="tools-moa", messages=QUESTION, tools=TOOLS, tool_choice="none"
    )
    assert response.choices[0].message.content == "I cannot add without a tool."
    assert response.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]},
         "tools[0].function.parameters.type", "not a JSON schema"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "divide"}}},
         "tool_choice", "'divide', which is not a tool"),
        ({"tools": "add"}, "tools", "tools is a list"),
        ({"messages": [*QUESTION, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]},
         "messages[1].tool_call_id", "no assistant turn before it made"),
        ({"functions": [{"name": "f"}]}, "functions", "not supported"),
    ],
)  # fmt: skip
async def test_bad_tool_requests_are_openai_400s(
    sdk: openai.AsyncOpenAI, extra: dict[str, Any], param: str, words: str
) -> None:
    """Bad tools, tool choices and tool results: a 400 in the OpenAI error shape naming the field."""
    body = {"model": "tools-moa", "messages": QUESTION, **extra}
    with pytest.raises(openai.BadRequestError) as info:
        await sdk.chat.completions.create(**body)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == param
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"


async def test_agent_framework_round_trip(base_url: str) -> None:
    """pydantic-ai's OpenAI client: its agent calls our ``add`` tool through the topology, then answers."""
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    calls: list[tuple[int, int]] = []
    model = OpenAIChatModel("tools-moa", provider=OpenAIProvider(base_url=base_url, api_key="none"))
    agent = Agent(model)

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        """Add two integers."""
        calls.append((a, b))
        return a + b

    result = await agent.run("What is 2 + 40?")
    assert calls == [(2, 40)]
    assert result.output == "The sum is 42."
    async with agent.run_stream("What is 7 + 8?") as streamed:
        text = await streamed.get_output()
    assert calls[-1] == (7, 8)
    assert text == "The sum is 15."


async def test_sync_sdk_in_a_thread(base_url: str) -> None:
    """The sync client reads the same call (the server is one for every client)."""

    def call() -> Any:
        sdk = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
        return sdk.chat.completions.create(
            model="tools-moa", messages=QUESTION, tools=TOOLS, tool_choice="required"
        )

    response = await anyio.to_thread.run_sync(call)
    assert response.choices[0].message.tool_calls[0].function.name == "add"
