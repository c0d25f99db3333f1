"""``aftlib serve`` over the real CPU vLLM engine, through the openai SDK and a raw HTTP client.

The session's one vLLM engine is bound to the session's event loop, so uvicorn serves the app on that
loop too (in a task the module fixture owns); the sync SDK runs in a worker thread. The topology is
seeded and each layer sends one engine request, so the same run gives the same tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest

from aftlib import Aggregator, Proposer, Result, SamplingParams, Topology
from aftlib.engines import VLLMEngine
from aftlib.serve import create_app

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

QUESTION = [{"role": "user", "content": "Name three colours."}]


def seeded(engine: VLLMEngine, max_tokens: int = 12) -> Topology:
    """One proposer with two seeded samples (one request), then a seeded aggregator."""
    return Topology(
        [[Proposer(engine, name="draft", sampling=SamplingParams(n=2, max_tokens=max_tokens, seed=5))]],
        Aggregator(engine, name="final", sampling=SamplingParams(max_tokens=max_tokens, seed=9)),
    )


@contextlib.asynccontextmanager
async def served_here(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on this event loop, on a free loopback port; yields the base URL."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # the test runner keeps its own signal handlers
            yield

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture(scope="module")
async def url(vllm_engine: VLLMEngine) -> AsyncIterator[str]:
    """The server for the module: 'tiny-moa' (seeded, short) and 'tiny-long' (long drafts)."""
    app = create_app({"tiny-moa": seeded(vllm_engine), "tiny-long": seeded(vllm_engine, max_tokens=1500)})
    async with served_here(app) as base:
        yield base


@pytest.fixture
async def expected(vllm_engine: VLLMEngine) -> Result:
    """The same seeded topology run in process."""
    return await seeded(vllm_engine).run(QUESTION)


async def test_sync_and_async_sdk_give_the_topology_answer_and_usage(url: str, expected: Result) -> None:
    """Both SDK clients, streamed and not: the content is the in-process answer, the usage its totals."""
    assert expected.text

    def sync_calls() -> tuple[Any, list[Any]]:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        plain = client.chat.completions.create(model="tiny-moa", messages=QUESTION)
        stream = client.chat.completions.create(
            model="tiny-moa", messages=QUESTION, stream=True, stream_options={"include_usage": True}
        )
        return plain, list(stream)

    plain, chunks = await anyio.to_thread.run_sync(sync_calls)
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    aplain = await client.chat.completions.create(model="tiny-moa", messages=QUESTION)
    astream = await client.chat.completions.create(
        model="tiny-moa", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    achunks = [chunk async for chunk in astream]
    await client.close()
    for response in (plain, aplain):
        assert response.choices[0].message.content == expected.text
        assert response.usage.prompt_tokens == expected.usage.prompt_tokens
        assert response.usage.completion_tokens == expected.usage.completion_tokens
    for stream in (chunks, achunks):
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected.text
        assert stream[-1].usage.completion_tokens == expected.usage.completion_tokens
        assert stream[-1].usage.prompt_tokens == expected.usage.prompt_tokens
        layers = stream[-1].usage.model_extra["aftlib_layers"]
        assert sum(layer["completion_tokens"] for layer in layers) == expected.usage.completion_tokens


async def test_a_client_that_leaves_mid_stream_leaves_nothing_in_vllm(
    url: str, vllm_engine: VLLMEngine
) -> None:
    """Closing the stream while the drafts are written cancels the run: 0 requests stay in flight in vLLM."""
    body = {
        "model": "tiny-long",
        "messages": QUESTION,
        "stream": True,
        "stream_options": {"aftlib_events": True},
    }
    deltas, running = 0, 0
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{url}/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if '"type":"delta"' in line:
                deltas += 1
                if deltas == 5:
                    running = vllm_engine.llm.get_num_unfinished_requests()
                    break
    assert running >= 1  # the drafts were being written when the client left
    for _ in range(40):  # the cancel lands within a moment, long before 1500-token drafts could end
        if vllm_engine.llm.get_num_unfinished_requests() == 0:
            break
        await anyio.sleep(0.05)
    assert vllm_engine.llm.get_num_unfinished_requests() == 0
    async with httpx.AsyncClient(timeout=60) as client:
        health = (await client.get(url.removesuffix("/v1") + "/health")).json()
        assert health["in_flight"] == 0
        again = await client.post(f"{url}/chat/completions", json={"model": "tiny-moa", "messages": QUESTION})
        assert again.status_code == 200
