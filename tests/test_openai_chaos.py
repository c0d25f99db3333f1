"""OpenAIEngine against a real loopback server that answers 429/500 or drops connections at random."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import openai
import pytest

from aftlib import (
    ChatRequest,
    Completion,
    Delta,
    EngineError,
    Message,
    RateLimitError,
    SamplingParams,
    ServerError,
)
from aftlib.engines import Engine, OpenAIEngine, RetryingEngine
from aftlib.testing import ChaosFault, ChaosServer, chaos_server

pytestmark = pytest.mark.anyio

KEY_ENV = "AFT_CHAOS_KEY"
KEY = "sk-chaos-test-key"
SAMPLING = SamplingParams(n=2, max_tokens=64)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engines read their key from the environment, as a config names it."""
    monkeypatch.setenv(KEY_ENV, KEY)


def request(k: int) -> ChatRequest:
    """Request number ``k``: its own question, two samples."""
    return ChatRequest([Message("user", f"question {k}")], SAMPLING)


@asynccontextmanager
async def engine_on(server: ChaosServer) -> AsyncIterator[OpenAIEngine]:
    """A started OpenAIEngine on the chaos server, with the key from the environment."""
    async with OpenAIEngine(server.model, server.base_url, api_key_env=KEY_ENV, timeout=30) as engine:
        yield engine


async def stream_into(engine: Engine, req: ChatRequest, deltas: list[Delta]) -> Completion:
    """Stream ``req``, keeping its deltas, and return its completion."""
    completion = None
    async with engine.stream(req) as items:
        async for item in items:
            if isinstance(item, Delta):
                deltas.append(item)
            else:
                completion = item
    assert completion is not None
    return completion


def only_first(fault: ChaosFault) -> dict[str, object]:
    """Fail chat request 0 with ``fault``; answer the rest."""
    return {"script": lambda number, body: fault if number == 0 else None, "api_key": KEY}


@pytest.mark.parametrize("streaming", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("rate_limit", RateLimitError, "rate limited"),
        ("server_error", ServerError, "HTTP 500"),
        ("drop", ServerError, "cannot reach the server|disconnected"),
        ("drop_mid_stream", ServerError, "dropped mid-stream"),
    ],
)
async def test_each_fault_is_the_right_aftlib_error(
    fault: ChaosFault, error: type[EngineError], message: str, streaming: bool
) -> None:
    """Unretried: 429 is a RateLimitError; a 500 or a drop (before headers, mid-stream) a ServerError."""
    with chaos_server(**only_first(fault)) as server:  # type: ignore[arg-type]
        async with engine_on(server) as engine:
            deltas: list[Delta] = []
            with pytest.raises(EngineError, match=message) as info:
                await (stream_into(engine, request(0), deltas) if streaming else engine.generate(request(0)))
            assert type(info.value) is error
            assert server.base_url in str(info.value)
            assert isinstance(info.value.__cause__, openai.OpenAIError | httpx.HTTPError)
            if fault == "drop_mid_stream" and streaming:
                assert deltas, "a stream cut in the middle delivers its first deltas"
            else:
                assert not deltas
            # The engine and its connection pool recover: the next request is answered in full.
            completion = await engine.generate(request(1))
            assert [s.text for s in completion.samples] == [server.text("question 1", i) for i in range(2)]
        assert server.requests == 2
        assert server.faults == Counter({fault: 1})
        assert server.completed == 1


async def test_the_client_does_not_retry_on_its_own() -> None:
    """OpenAIEngine leaves retrying to RetryingEngine: a 429 or a drop is sent once, not again by openai."""
    for fault in ("rate_limit", "drop"):
        with chaos_server(**only_first(fault)) as server:  # type: ignore[arg-type]
            async with engine_on(server) as engine:
                with pytest.raises(EngineError):
                    await engine.generate(request(0))
            assert server.requests == 1


async def test_retrying_engine_completes_every_request_through_chaos() -> None:
    """200 concurrent generations with ~30 % faults of every kind all complete, each exactly once."""
    with chaos_server(0.3, seed=1, api_key=KEY, retry_after=0.01) as server:
        async with RetryingEngine(
            OpenAIEngine(server.model, server.base_url, api_key_env=KEY_ENV, timeout=30),
            attempts=12,
            backoff=0.01,
            max_backoff=0.2,
        ) as engine:
            texts: dict[int, list[str]] = {}

            async def one(k: int) -> None:
                completion = await engine.generate(request(k))
                texts[k] = [s.text for s in completion.samples]

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for k in range(200):
                        tg.start_soon(one, k)
        assert texts == {k: [server.text(f"question {k}", i) for i in range(2)] for k in range(200)}
        faults = server.faults
        assert server.completed == 200
        assert server.requests == 200 + faults.total()
        assert 0.2 < faults.total() / server.requests < 0.4
        assert set(faults) == {"rate_limit", "server_error", "drop", "drop_mid_stream"}


async def test_retrying_streams_complete_unless_cut_after_text() -> None:
    """200 concurrent streams, ~30 % faults: only streams cut after some text fail; the rest complete once."""
    with chaos_server(0.3, seed=2, api_key=KEY, retry_after=0.01) as server:
        async with RetryingEngine(
            OpenAIEngine(server.model, server.base_url, api_key_env=KEY_ENV, timeout=30),
            attempts=12,
            backoff=0.01,
            max_backoff=0.2,
        ) as engine:
            done: dict[int, list[str]] = {}
            cut: dict[int, list[Delta]] = {}
            errors: list[str] = []

            async def one(k: int) -> None:
                deltas: list[Delta] = []
                try:
                    completion = await stream_into(engine, request(k), deltas)
                except ServerError as exc:
                    errors.append(str(exc))
                    cut[k] = deltas
                    return
                done[k] = [s.text for s in completion.samples]
                assert ["".join(d.text for d in deltas if d.index == i) for i in range(2)] == done[k]

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for k in range(200):
                        tg.start_soon(one, k)
        faults = server.faults
        assert all("dropped mid-stream" in error for error in errors)
        assert len(done) + len(cut) == 200
        assert len(cut) == faults["drop_mid_stream"] > 0
        assert server.completed == len(done)
        assert server.requests == 200 + faults.total() - len(cut)
        for k, texts in done.items():
            assert texts == [server.text(f"question {k}", i) for i in range(2)]
        for k, deltas in cut.items():
            assert deltas
            assert server.text(f"question {k}", 0).startswith("".join(d.text for d in deltas if d.index == 0))


def test_the_server_speaks_plain_and_streamed_chat_completions() -> None:
    """Plain answers: n choices, max_tokens, usage; 429 has retry-after; keys checked; a cut body fails."""
    faults: list[ChaosFault | None] = [None, "rate_limit", "drop_mid_stream"]
    with chaos_server(script=lambda number, body: faults[number], api_key="k", retry_after=2) as server:
        with httpx.Client(base_url=server.base_url, headers={"authorization": "Bearer k"}) as client:
            assert client.get("/models").json()["data"][0]["id"] == "chaos"
            body = {"model": "chaos", "messages": [{"role": "user", "content": "two words"}], "n": 3}
            answer = client.post("/chat/completions", json={**body, "max_tokens": 4}).json()
            assert [c["message"]["content"] for c in answer["choices"]] == [
                f"sample {i} for two" for i in range(3)
            ]
            assert {c["finish_reason"] for c in answer["choices"]} == {"length"}
            assert answer["usage"] == {"prompt_tokens": 2, "completion_tokens": 12, "total_tokens": 14}
            limited = client.post("/chat/completions", json=body)
            assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")
            with pytest.raises(httpx.RemoteProtocolError, match=r"complete message body"):
                client.post("/chat/completions", json=body)
            assert client.post("/chat/completions", json={**body, "model": "other"}).status_code == 404
            refused = httpx.post(f"{server.base_url}/chat/completions", json=body)
            assert refused.status_code == 401
        assert server.model_lists == 1
        assert server.requests == 3
        assert server.completed == 1
        assert server.faults == Counter({"rate_limit": 1, "drop_mid_stream": 1})
