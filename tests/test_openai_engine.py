"""OpenAIEngine against httpx.MockTransport: streaming, n, replicas, fallbacks and error translation."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from aftlib import (
    ChatRequest,
    ConfigError,
    ContextLengthError,
    EngineError,
    EngineTimeoutError,
    Message,
    RateLimitError,
    SamplingParams,
    presets,
)
from aftlib.engines import FakeEngine, OpenAIEngine, Replicas

pytestmark = pytest.mark.anyio

SECRET = "sk-test-0123456789-do-not-leak"


def sse(chunks: list[dict[str, object]]) -> httpx.Response:
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def chunk(index: int, text: str | None, finish: str | None = None) -> dict[str, object]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": finish}],
    }


def usage_chunk(prompt: int, completion: int) -> dict[str, object]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


class Server:
    """A scripted OpenAI-compatible server that records the requests it gets."""

    def __init__(self, chat: Callable[[dict[str, object]], httpx.Response], models: tuple[str, ...] = ("m",)):
        self.chat = chat
        self.models = models
        self.bodies: list[dict[str, object]] = []
        self.hosts: list[str] = []
        self.keys: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        self.keys.append(request.headers.get("authorization", ""))
        if request.url.path.endswith("/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "x"} for m in self.models]
            return httpx.Response(200, json={"object": "list", "data": data})
        body = json.loads(request.content)
        self.bodies.append(body)
        return self.chat(body)


def engine_for(server: Server, **kwargs: object) -> OpenAIEngine:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    return OpenAIEngine("m", kwargs.pop("base_url", "http://one.test/v1"), http_client=client, **kwargs)  # type: ignore[arg-type]


def two_samples(body: dict[str, object]) -> httpx.Response:
    return sse(
        [
            chunk(0, "Hel"),
            chunk(1, "Wor"),
            chunk(0, "lo", "stop"),
            chunk(1, "ld", "length"),
            usage_chunk(9, 4),
        ]
    )


async def test_streams_n_samples_in_one_call_with_usage() -> None:
    """n=2 goes in one call; deltas carry their sample index; usage comes from the server."""
    server = Server(two_samples)
    async with engine_for(server) as engine:
        request = ChatRequest(
            [Message("user", "hi")], SamplingParams(n=2, max_tokens=5, temperature=0.3, seed=4)
        )
        async with engine.stream(request) as stream:
            items = [item async for item in stream]
    completion = items[-1]
    assert [s.text for s in completion.samples] == ["Hello", "World"]  # type: ignore[union-attr]
    assert [s.finish_reason for s in completion.samples] == ["stop", "length"]  # type: ignore[union-attr]
    assert completion.usage.prompt_tokens == 9  # type: ignore[union-attr]
    (body,) = server.bodies
    assert (body["n"], body["max_tokens"], body["temperature"], body["seed"]) == (2, 5, 0.3, 4)
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stream"] is True


async def test_replicas_take_requests_in_turn_when_equally_loaded() -> None:
    """Replicas of OpenAI engines: one request at a time alternates between the servers."""
    server = Server(lambda body: sse([chunk(0, "x", "stop"), usage_chunk(1, 1)]))
    urls = ["http://a.test/v1", "http://b.test/v1"]
    async with Replicas([engine_for(server, base_url=url) for url in urls], name="m") as engine:
        for _ in range(4):
            await engine.generate(ChatRequest([Message("user", "q")]))
    chat_hosts = [h for h, b in zip(server.hosts[2:], range(4), strict=False)]
    assert chat_hosts == ["a.test", "b.test", "a.test", "b.test"]


async def test_replicas_send_to_the_replica_with_fewest_requests_in_flight() -> None:
    """While one replica is busy with a slow request, new requests go to the idle one."""
    slow = FakeEngine(name="slow", latency=0.5)
    fast = FakeEngine(name="fast")
    replicas = Replicas([slow, fast])
    request = ChatRequest([Message("user", "q")])
    async with replicas, anyio.create_task_group() as tg:
        tg.start_soon(replicas.generate, request)
        await anyio.sleep(0.05)
        assert replicas.in_flight == [1, 0]
        for _ in range(3):
            await replicas.generate(request)
    assert (len(slow.requests), len(fast.requests)) == (1, 3)
    assert replicas.in_flight == [0, 0]


def test_a_list_of_urls_points_to_replicas() -> None:
    """OpenAIEngine takes one URL; a list is a ConfigError that names the Replicas wrapper."""
    with pytest.raises(ConfigError, match="Replicas"):
        OpenAIEngine("m", ["http://a.test/v1", "http://b.test/v1"])  # type: ignore[arg-type]


async def test_a_server_without_n_gets_single_calls_when_told() -> None:
    """supports_n=False sends n concurrent single calls, re-indexed into one completion."""

    def chat(body: dict[str, object]) -> httpx.Response:
        assert body["n"] == 1
        return sse([chunk(0, "one", "stop"), usage_chunk(3, 1)])

    server = Server(chat)
    async with engine_for(server, supports_n=False) as engine:
        assert not engine.supports_n
        completion = await engine.generate(ChatRequest([Message("user", "q")], SamplingParams(n=3)))
    assert [s.index for s in completion.samples] == [0, 1, 2]
    assert completion.usage.requests == 3
    assert [b["n"] for b in server.bodies] == [1, 1, 1]


async def test_a_rejected_n_says_how_to_send_single_calls() -> None:
    """A server that rejects n answers with an EngineError that names supports_n; nothing is guessed."""

    def chat(body: dict[str, object]) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "parameter n must be 1", "type": "invalid"}})

    async with engine_for(Server(chat)) as engine:
        with pytest.raises(EngineError, match="supports_n=False") as info:
            await engine.generate(ChatRequest([Message("user", "q")], SamplingParams(n=3)))
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("status", "payload", "error", "message"),
    [
        (429, {"error": {"message": "slow down"}}, RateLimitError, "rate limited"),
        (
            400,
            {"error": {"message": "This model's maximum context length is 2048 tokens"}},
            ContextLengthError,
            "2048",
        ),
        (500, {"error": {"message": "boom"}}, EngineError, "HTTP 500"),
        (401, {"error": {"message": "bad key"}}, EngineError, r"refused the key in \$AFT_TEST_KEY"),
    ],
)
async def test_errors_are_translated(
    monkeypatch: pytest.MonkeyPatch, status: int, payload: object, error: type[Exception], message: str
) -> None:
    """HTTP errors become aftlib engine errors naming the engine and URL, with the cause chained."""
    monkeypatch.setenv("AFT_TEST_KEY", SECRET)
    server = Server(lambda body: httpx.Response(status, json=payload))
    async with engine_for(server, api_key_env="AFT_TEST_KEY") as engine:
        with pytest.raises(error, match=message) as info:
            await engine.generate(ChatRequest([Message("user", "q")]))
    assert "one.test" in str(info.value)
    assert info.value.__cause__ is not None
    assert SECRET not in str(info.value)


async def test_timeouts_and_dropped_connections() -> None:
    """A read timeout is an EngineTimeoutError; a dropped connection an EngineError naming the server."""

    def timeout(body: dict[str, object]) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    async with engine_for(Server(timeout), timeout=1.0) as engine:
        with pytest.raises(EngineTimeoutError, match="no answer within 1s"):
            await engine.generate(ChatRequest([Message("user", "q")]))

    def dropped(body: dict[str, object]) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection")

    async with engine_for(Server(dropped)) as engine:
        with pytest.raises(EngineError, match="cannot reach the server"):
            await engine.generate(ChatRequest([Message("user", "q")]))


async def test_problems_known_in_advance_fail_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset key variable, a refused key and an unserved model fail on start, before any generation."""
    monkeypatch.delenv("AFT_MISSING_KEY", raising=False)
    with pytest.raises(ConfigError, match="AFT_MISSING_KEY"):
        async with engine_for(Server(two_samples), api_key_env="AFT_MISSING_KEY"):
            pass
    with pytest.raises(ConfigError, match="does not serve model 'm'; it serves other"):
        async with engine_for(Server(two_samples, models=("other",))):
            pass

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": "invalid key"}})

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    with pytest.raises(EngineError, match="refused no API key"):
        async with OpenAIEngine("m", "http://one.test/v1", http_client=client):
            pass


async def test_unreachable_server_fails_at_start() -> None:
    """Nothing listening on the port: a clear EngineError on start."""
    with pytest.raises(EngineError, match=r"cannot reach the server"):
        async with OpenAIEngine("m", "http://127.0.0.1:9/v1", timeout=5):
            pass


async def test_api_key_never_reaches_logs_results_or_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key from the environment is sent to the server, and appears nowhere else."""
    monkeypatch.setenv("AFT_TEST_KEY", SECRET)
    server = Server(lambda body: sse([chunk(0, "fine", "stop"), usage_chunk(2, 1)]))
    with capture_logs() as logs:
        async with engine_for(server, api_key_env="AFT_TEST_KEY") as engine:
            result = await presets.aft(engine, n=1).run("q")
            text = repr(engine) + repr(result) + repr(logs)
    assert all(key == f"Bearer {SECRET}" for key in server.keys)
    assert SECRET not in text
