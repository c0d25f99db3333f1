"""Mixture-of-Agents on real engines: two vLLM models, an OpenAI-compatible vLLM server, LoRA variants."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from aftlib import (
    Aggregator,
    ChatRequest,
    ConfigError,
    Layer,
    Message,
    Proposer,
    Result,
    SamplingParams,
    Topology,
    presets,
)
from aftlib.engines import OpenAIEngine, VLLMEngine

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]


async def test_openai_engine_against_a_real_vllm_server(openai_server: str) -> None:
    """OpenAIEngine streams n samples with usage from a loopback vLLM server."""
    async with OpenAIEngine("tiny-served", openai_server) as engine:
        request = ChatRequest([Message("user", "hello")], SamplingParams(n=3, max_tokens=8, seed=1))
        deltas = []
        completion = None
        async with engine.stream(request) as items:
            async for item in items:
                if isinstance(item, type(completion)) or hasattr(item, "samples"):
                    completion = item
                else:
                    deltas.append(item)
    assert completion is not None
    assert [s.index for s in completion.samples] == [0, 1, 2]
    for sample in completion.samples:
        assert "".join(d.text for d in deltas if d.index == sample.index) == sample.text
    assert completion.usage.completion_tokens > 0
    assert completion.usage.prompt_tokens > 0


async def test_a_model_the_server_does_not_serve_fails_at_start(openai_server: str) -> None:
    """Asking the real server for a model it does not serve fails before any generation."""
    with pytest.raises(ConfigError, match="does not serve model 'gpt-9'; it serves tiny-served"):
        async with OpenAIEngine("gpt-9", openai_server):
            pass


async def test_moa_over_two_vllm_models_and_a_server(
    vllm_engine: VLLMEngine, other_tiny_model: Path, openai_server: str
) -> None:
    """A MoA over two in-process vLLM engines of different models and one OpenAI agent: all answer.

    The second vLLM engine is shared by two topologies entered from two tasks at once: it starts once
    and closes once (a second start would leak the first engine's process and memory).
    """
    calls: list[str] = []

    class Counted(VLLMEngine):
        async def start(self) -> None:
            calls.append("start")
            await anyio.lowlevel.checkpoint()  # let the other task try to enter while this one starts
            await super().start()

        async def aclose(self) -> None:
            calls.append("close")
            await super().aclose()

    other = Counted(str(other_tiny_model), name="wide", max_model_len=2048, enforce_eager=True)
    remote = OpenAIEngine("tiny-served", openai_server, name="server")
    topology = presets.moa([vllm_engine, other, remote], vllm_engine, layers=3, max_tokens=12)
    alone = Topology([[Proposer(other)]], Aggregator(other, sampling=SamplingParams(max_tokens=8)))
    results: dict[str, Result] = {}

    async def use(name: str, which: Topology) -> None:
        async with which:
            results[name] = await which.run("Name three colours.")

    async with anyio.create_task_group() as tg:
        tg.start_soon(use, "moa", topology)
        tg.start_soon(use, "alone", alone)
    assert calls == ["start", "close"]
    result = results["moa"]
    assert [len(layer.candidates) for layer in result.layers] == [3, 3]
    assert all(c.completion_tokens > 0 for layer in result.layers for c in layer.candidates)
    assert isinstance(result.text, str)
    assert result.usage.requests == 7
    assert results["alone"].usage.requests == 2


async def test_two_lora_adapters_on_one_engine_in_one_run(vllm_engine: VLLMEngine) -> None:
    """Agents with two different adapters share one base engine in one run; the adapters change the samples.

    The base model's own answer is taken in a run of its own: vLLM's CPU build was once seen (in one of
    several full runs) to apply an adapter to a request without one that it batched with LoRA requests.
    """
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    layer = Layer(
        [
            Proposer(vllm_engine, name="terse", sampling=greedy, lora="terse"),
            Proposer(vllm_engine, name="verbose", sampling=greedy, lora="verbose"),
        ]
    )
    result = await Topology([layer], Aggregator(vllm_engine, sampling=greedy, lora="terse")).run("Hi!")
    terse, verbose = result.layers[0].texts
    alone = await Topology([[Proposer(vllm_engine, sampling=greedy)]], Aggregator(vllm_engine)).run("Hi!")
    (base,) = alone.layers[0].texts
    assert len({base, terse, verbose}) == 3, "each adapter should steer greedy decoding differently"


def test_an_unknown_adapter_is_refused_before_running(vllm_engine: VLLMEngine) -> None:
    """An agent naming an adapter the engine does not serve is a ConfigError at construction."""
    with pytest.raises(ConfigError, match="has no LoRA adapter 'formal'; it has terse, verbose"):
        Proposer(vllm_engine, lora="formal")
    with pytest.raises(ConfigError, match="serves no LoRA adapters"):
        Proposer(OpenAIEngine("m", "http://127.0.0.1:9/v1"), lora="terse")
