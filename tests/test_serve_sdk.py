"""The openai SDK, sync and async, streamed and not, against ``aftlib serve`` over a FakeEngine topology.

The app is served once for the module by uvicorn on a free loopback port; the sync client runs in a
worker thread, the async one on the test's loop. FakeEngine is deterministic, so the same topology run
in this process gives the answer and usage the server must report.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import openai
import pytest

from aftlib import Result
from aftlib.serve import create_app

from .test_serve import QUESTION, fake_topology, served

pytestmark = pytest.mark.anyio

KEY = "sdk-key"


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The server for the module: 'fake-moa', a failing 'broken' model, and a key."""
    broken = fake_topology(final_faults=lambda number, request: "mid_stream")
    app = create_app({"fake-moa": fake_topology(), "broken": broken}, api_keys=[KEY])
    with served(app) as url:
        yield url


@pytest.fixture
async def expected() -> Result:
    """The answer of the same topology run in this process."""
    return await fake_topology().run(QUESTION)


def sync_client(base_url: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=kwargs.pop("api_key", KEY), max_retries=0, **kwargs)


def check_usage(usage: Any, expected: Result) -> None:
    """The SDK's usage object holds the topology's totals and the per-layer extension."""
    assert usage.prompt_tokens == expected.usage.prompt_tokens
    assert usage.completion_tokens == expected.usage.completion_tokens
    assert usage.total_tokens == expected.usage.total_tokens
    assert usage.prompt_tokens_details.cached_tokens == expected.usage.cached_tokens
    layers = usage.model_extra["aftlib_layers"]
    assert [layer["layer"] for layer in layers] == [0, 1]
    assert layers[0]["completion_tokens"] == expected.layers[0].usage.completion_tokens


async def test_sync_sdk_not_streamed(base_url: str, expected: Result) -> None:
    """openai.OpenAI (in a thread): the content is the topology's answer and the usage its totals."""

    def call() -> Any:
        return sync_client(base_url).chat.completions.create(model="fake-moa", messages=QUESTION)

    response = await anyio.to_thread.run_sync(call)
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == "stop"
    check_usage(response.usage, expected)


async def test_sync_sdk_streamed(base_url: str, expected: Result) -> None:
    """openai.OpenAI streamed: the deltas concatenate to the answer; the usage chunk holds the totals."""

    def call() -> list[Any]:
        stream = sync_client(base_url).chat.completions.create(
            model="fake-moa",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
        )
        return list(stream)

    chunks = await anyio.to_thread.run_sync(call)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    check_usage(chunks[-1].usage, expected)


async def test_async_sdk_streamed_and_not(base_url: str, expected: Result) -> None:
    """openai.AsyncOpenAI: streamed deltas concatenate to the non-streamed content, equal to the answer."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    plain = await client.chat.completions.create(model="fake-moa", messages=QUESTION)
    stream = await client.chat.completions.create(
        model="fake-moa",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(parts) == plain.choices[0].message.content == expected.text
    check_usage(plain.usage, expected)
    check_usage(usage, expected)
    await client.close()


async def test_the_sdk_parses_a_stream_with_draft_events(base_url: str, expected: Result) -> None:
    """With aftlib_events the SDK still parses every chunk; the events ride on chunks with no choices."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    stream = await client.chat.completions.create(
        model="fake-moa",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True, "aftlib_events": True},
    )
    parts, kinds = [], []
    async for chunk in stream:
        event = (chunk.model_extra or {}).get("aftlib")
        if event is not None:
            assert chunk.choices == []
            kinds.append(event["type"])
        elif chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
    assert "".join(parts) == expected.text
    assert kinds[0] == "topology"
    assert {"delta", "candidate", "layer"} <= set(kinds)
    await client.close()


async def test_models_list(base_url: str) -> None:
    """client.models.list() gives the served models by name."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    assert [m.id async for m in client.models.list()] == ["fake-moa", "broken"]
    await client.close()


async def test_sdk_errors_are_typed(base_url: str) -> None:
    """The SDK raises its typed errors: 401 wrong key, 404 unknown model, 400 a bad tool, 503 a failed run."""
    good = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    wrong = openai.AsyncOpenAI(base_url=base_url, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong.chat.completions.create(model="fake-moa", messages=QUESTION)
    with pytest.raises(openai.NotFoundError, match="serves fake-moa, broken"):
        await good.chat.completions.create(model="gpt-9", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="not a JSON schema"):
        await good.chat.completions.create(
            model="fake-moa",
            messages=QUESTION,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}],
        )
    with pytest.raises(openai.InternalServerError) as failed:
        await good.chat.completions.create(model="broken", messages=QUESTION)
    assert failed.value.status_code == 503
    assert failed.value.response.headers["x-should-retry"] == "false"
    await good.close()
    await wrong.close()


async def test_an_error_mid_stream_raises_in_the_sdk(base_url: str) -> None:
    """A run failing after its stream began: the SDK yields the first deltas, then raises APIError."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    stream = await client.chat.completions.create(model="broken", messages=QUESTION, stream=True)
    parts: list[str] = []

    async def read() -> None:
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="mid-stream"):
        await read()
    assert "".join(parts)
    await client.close()
