"""Log probabilities: asked with SamplingParams(logprobs=K), given per token by every engine."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from aftlib import ChatRequest, ConfigError, Message, SamplingParams, TokenLogprob
from aftlib.engines import Engine, OpenAIEngine, RetryingEngine, VLLMEngine, collect
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio

ASK = ChatRequest(
    [Message("user", "Which is better?")], SamplingParams(max_tokens=1, temperature=1, logprobs=5)
)


def test_logprobs_are_checked() -> None:
    """The logprobs setting is an integer from 0 to 20 or None; anything else is a ConfigError."""
    assert SamplingParams().logprobs is None
    for bad in (-1, 21, True, 2.5):
        with pytest.raises(ConfigError, match="logprobs must be an integer from 0 to 20") as info:
            SamplingParams(logprobs=bad)  # type: ignore[arg-type]
        assert info.value.path == "logprobs"


async def test_fake_engine_scripts_logprobs_and_gives_none_unasked() -> None:
    """A scripted FakeEngine returns its entries; a request without logprobs gets None."""

    def script(request: ChatRequest, index: int, text: str) -> list[TokenLogprob]:
        return [TokenLogprob("m", -0.1, [("m", -0.1), ("M", -2.4)])]

    engine = FakeEngine(handler=lambda r, i: "m", logprobs=script)
    (sample,) = (await engine.generate(ASK)).samples
    assert sample.logprobs == (TokenLogprob("m", -0.1, (("m", -0.1), ("M", -2.4))),)
    plain = ChatRequest([Message("user", "q")])
    assert (await engine.generate(plain)).samples[0].logprobs is None
    streamed = await collect(engine.stream(ASK))
    assert streamed.samples[0].logprobs == sample.logprobs


async def test_fake_engine_default_logprobs_follow_the_words() -> None:
    """Without a script, each word is a token with log probability 0 and itself as the top alternative."""
    engine = FakeEngine(handler=lambda r, i: "a b c")
    (sample,) = (await engine.generate(ASK)).samples
    assert [t.token for t in sample.logprobs or ()] == ["a", " b", " c"]
    assert all(t.logprob == 0.0 and t.top == ((t.token, 0.0),) for t in sample.logprobs or ())


def test_an_engine_without_logprobs_is_named() -> None:
    """check_logprobs on an engine that cannot give them names the engine and what needs them."""

    class Plain(Engine):
        async def generate(self, request: ChatRequest):  # type: ignore[no-untyped-def]
            raise AssertionError

    with pytest.raises(ConfigError, match="the AlpacaEval judge needs log probabilities, and engine 'plain'"):
        Plain(name="plain").check_logprobs("the AlpacaEval judge")
    RetryingEngine(FakeEngine()).check_logprobs("the judge")  # wrappers forward the capability


async def test_openai_engine_asks_for_and_reads_top_logprobs() -> None:
    """OpenAIEngine sends logprobs=true and top_logprobs=K, and reads the streamed entries per sample."""
    bodies: list[dict[str, object]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        bodies.append(json.loads(request.content))
        entry = {
            "token": "M",
            "logprob": -0.3,
            "bytes": None,
            "top_logprobs": [
                {"token": "M", "logprob": -0.3, "bytes": None},
                {"token": "m", "logprob": -1.5, "bytes": None},
            ],
        }
        chunks = [
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": "M"},
                        "logprobs": {"content": [entry]},
                        "finish_reason": "length",
                    }
                ],
            }
        ]
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    async with OpenAIEngine("m", "http://judge.test/v1", http_client=client) as engine:
        (sample,) = (await engine.generate(ASK)).samples
    assert (bodies[0]["logprobs"], bodies[0]["top_logprobs"]) == (True, 5)
    assert sample.logprobs == (TokenLogprob("M", -0.3, (("M", -0.3), ("m", -1.5))),)


@pytest.mark.vllm
async def test_vllm_gives_the_top_k_of_every_generated_token(vllm_engine: VLLMEngine) -> None:
    """On the real engine: one entry per token, K alternatives most likely first, streamed = generated."""
    request = ChatRequest(
        [Message("user", "Name a color.")], SamplingParams(max_tokens=4, temperature=0.0, logprobs=5, seed=3)
    )
    (sample,) = (await vllm_engine.generate(request)).samples
    assert sample.logprobs is not None
    assert len(sample.logprobs) == sample.completion_tokens
    for entry in sample.logprobs:
        assert len(entry.top) == 5
        values = [lp for _, lp in entry.top]
        assert values == sorted(values, reverse=True)
        assert all(lp <= 0 for lp in values)
        assert math.isclose(entry.logprob, values[0], abs_tol=1e-3)  # greedy: the chosen one is the best
    streamed = await collect(vllm_engine.stream(request))
    assert [t.token for t in streamed.samples[0].logprobs or ()] == [t.token for t in sample.logprobs]


@pytest.mark.vllm
async def test_a_real_openai_server_gives_logprobs(openai_server: str) -> None:
    """The vLLM OpenAI-compatible server returns the first token's top-5 through OpenAIEngine."""
    async with OpenAIEngine("tiny-served", openai_server) as engine:
        (sample,) = (await engine.generate(ASK)).samples
    assert sample.logprobs is not None
    assert len(sample.logprobs) == 1
    assert len(sample.logprobs[0].top) == 5
