"""The core on the real vLLM engine (CPU build) with the tiny model, started once per session."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.abc
import pytest

from aftlib import (
    AnswerDone,
    ChatRequest,
    ContextLengthError,
    Delta,
    Event,
    Message,
    SamplingParams,
    TokenDelta,
    presets,
)
from aftlib.engines import LimitedEngine, RetryingEngine, VLLMEngine, _vllm, collect

from .conftest import TWO_TURNS, reference_aggregation_system

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]


def record_prompts(
    engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[ChatRequest, list[int]]]:
    """Record each request the engine tokenizes, with the token ids it sends to vLLM."""
    seen: list[tuple[ChatRequest, list[int]]] = []
    original = VLLMEngine.prompt_token_ids

    def spy(self: VLLMEngine, request: ChatRequest) -> list[int]:
        ids = original(self, request)
        if self is engine:
            seen.append((request, ids))
        return ids

    monkeypatch.setattr(VLLMEngine, "prompt_token_ids", spy)
    return seen


async def test_aft_end_to_end_on_a_two_turn_conversation(
    vllm_engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AFT (n=5, num_aggregation=2) on vLLM: 11 samples in 3 requests, streamed answer == result.text."""
    seen = record_prompts(vllm_engine, monkeypatch)
    events: list[Event] = []
    topology = presets.aft(vllm_engine, n=5, num_aggregation=2, max_tokens=24, seed=1)
    result = await topology.run(TWO_TURNS, on_event=events.append)

    assert [len(layer.candidates) for layer in result.layers] == [5, 5]
    assert result.usage.requests == 3
    candidates = [*result.layers[0].candidates, *result.layers[1].candidates, result.answer]
    assert len(candidates) == 11
    assert all(c.finish_reason in {"stop", "length"} for c in candidates)
    assert all(0 < c.completion_tokens <= 24 for c in candidates)
    assert result.usage.completion_tokens == sum(c.completion_tokens for c in candidates)
    assert len(set(result.layers[0].texts)) > 1, "the five proposals should differ"

    answer = "".join(e.text for e in events if isinstance(e, TokenDelta) and e.is_answer)
    assert answer == result.text
    assert isinstance(events[-1], AnswerDone)

    # Byte parity: the aggregation requests carry the reference system message over the previous texts,
    # and what reaches vLLM is exactly the chat template's rendering of those messages, BOS once.
    assert len(seen) == 3
    tokenizer = vllm_engine.tokenizer
    for (request, ids), previous in zip(seen[1:], result.layers, strict=True):
        expected = [{"role": "system", "content": reference_aggregation_system(previous.texts)}, *TWO_TURNS]
        assert request.messages == expected
        rendered = tokenizer.apply_chat_template(expected, tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(ids) == rendered
        assert ids.count(tokenizer.bos_token_id) == 1
    assert result.usage.prompt_tokens == sum(len(ids) for _, ids in seen)


async def test_a_slow_tokenizer_does_not_stall_another_requests_token_stream(
    vllm_engine: VLLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request's prompt takes long to render; meanwhile another request's tokens keep streaming.

    The second request is sent once the first has begun streaming; its rendering waits (in its worker
    thread) until the first stream has given three more deltas: were rendering on the event loop, that
    stream could not move and the test would time out.
    """
    streamed = threading.Event()
    original = _vllm.prompt_token_ids

    def slow(tokenizer: Any, messages: Any, **kwargs: Any) -> list[int]:
        if "slow to render" in messages[-1].content:
            assert streamed.wait(60), "the other stream gave no tokens while this prompt rendered"
        return original(tokenizer, messages, **kwargs)

    monkeypatch.setattr(_vllm, "prompt_token_ids", slow)
    fast = ChatRequest(
        [Message("user", "Count slowly from one to fifty.")],
        SamplingParams(max_tokens=64, temperature=1.0, seed=1),
    )
    late = ChatRequest([Message("user", "This prompt is slow to render.")], SamplingParams(max_tokens=4))
    deltas = 0

    async def stream_fast(tg: anyio.abc.TaskGroup) -> None:
        nonlocal deltas
        async with vllm_engine.stream(fast) as items:
            async for item in items:
                if isinstance(item, Delta) and item.text:
                    deltas += 1
                    if deltas == 1:
                        tg.start_soon(vllm_engine.generate, late)
                    if deltas == 4:
                        streamed.set()

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream_fast, tg)
    assert deltas >= 4


async def test_n_samples_share_one_engine_request(vllm_engine: VLLMEngine) -> None:
    """An agent's n samples come from one vLLM request: one prompt, n indexed samples."""
    request = ChatRequest([Message("user", "hello")], SamplingParams(n=4, max_tokens=8, seed=3))
    completion = await vllm_engine.generate(request)
    assert [s.index for s in completion.samples] == [0, 1, 2, 3]
    assert completion.usage.requests == 1
    assert completion.usage.completion_tokens == sum(s.completion_tokens for s in completion.samples)


async def test_seeded_requests_repeat(vllm_engine: VLLMEngine) -> None:
    """The same per-request seed gives the same samples."""
    request = ChatRequest([Message("user", "hello")], SamplingParams(n=2, max_tokens=12, seed=11))
    first = await vllm_engine.generate(request)
    second = await vllm_engine.generate(request)
    assert [s.text for s in first.samples] == [s.text for s in second.samples]


async def test_cancelling_a_run_leaves_no_request_in_the_engine(vllm_engine: VLLMEngine) -> None:
    """Cancel mid-generation: every request is aborted inside vLLM, none is left unfinished."""
    topology = presets.aft(vllm_engine, n=3, num_aggregation=2, max_tokens=1500)
    deltas = 0

    def on_event(event: Any) -> None:
        nonlocal deltas
        if isinstance(event, TokenDelta):
            deltas += 1
            if deltas == 20:
                scope.cancel()

    with anyio.CancelScope() as scope:
        await topology.run(TWO_TURNS, on_event=on_event)
    assert scope.cancelled_caught
    assert deltas >= 20
    assert vllm_engine.llm.get_num_unfinished_requests() == 0


async def test_cancelling_a_run_without_callbacks_aborts_too(vllm_engine: VLLMEngine) -> None:
    """Without on_event the engine does not stream tokens; cancelling still aborts every request."""
    topology = presets.aft(vllm_engine, n=3, num_aggregation=2, max_tokens=1500)
    with anyio.move_on_after(1.5) as scope:
        await topology.run(TWO_TURNS)
    assert scope.cancelled_caught
    assert vllm_engine.llm.get_num_unfinished_requests() == 0


async def test_streamed_and_unstreamed_generation_agree(vllm_engine: VLLMEngine) -> None:
    """generate() (final outputs only) and stream() (token deltas) give the same seeded samples."""
    request = ChatRequest([Message("user", "same")], SamplingParams(n=2, max_tokens=10, seed=21))
    whole = await vllm_engine.generate(request)
    streamed = await collect(vllm_engine.stream(request))
    assert whole.samples == streamed.samples
    assert whole.usage.completion_tokens == streamed.usage.completion_tokens


async def test_closing_a_stream_aborts_the_request(vllm_engine: VLLMEngine) -> None:
    """Leaving topology.stream() early aborts the generation in the engine."""
    topology = presets.aft(vllm_engine, n=2, max_tokens=1500)
    async with topology.stream("Tell me a story.") as events:
        async for event in events:
            if isinstance(event, TokenDelta):
                break
    assert vllm_engine.llm.get_num_unfinished_requests() == 0


async def test_leaving_a_wrapped_stream_early_leaves_nothing_in_flight(vllm_engine: VLLMEngine) -> None:
    """Through RetryingEngine and LimitedEngine (tasks of their own), leaving stream() early aborts."""
    wrapped = LimitedEngine(RetryingEngine(vllm_engine, timeout=60), max_in_flight=2)
    request = ChatRequest([Message("user", "Tell me a long story.")], SamplingParams(n=3, max_tokens=1500))
    async with wrapped.stream(request) as items:
        async for item in items:
            if isinstance(item, Delta):
                break
    assert vllm_engine.llm.get_num_unfinished_requests() == 0
    topology = presets.aft(wrapped, n=2, max_tokens=1500)
    async with topology.stream("Tell me a story.") as events:
        async for event in events:
            if isinstance(event, TokenDelta) and event.layer == 0:
                break
    assert vllm_engine.llm.get_num_unfinished_requests() == 0
    assert wrapped.in_flight == 0


async def test_max_tokens_is_lowered_to_fit_the_context(vllm_engine: VLLMEngine) -> None:
    """max_tokens beyond the context is cut to what fits; a prompt that cannot fit is a ContextLengthError."""
    request = ChatRequest([Message("user", "hi")], SamplingParams(max_tokens=10_000, seed=0, stop=["e"]))
    completion = await vllm_engine.generate(request)
    assert completion.samples[0].completion_tokens < vllm_engine.max_model_len
    huge = ChatRequest([Message("user", "word " * 5000)], SamplingParams(max_tokens=4))
    with pytest.raises(ContextLengthError, match="context is 2048"):
        await vllm_engine.generate(huge)


async def test_an_adapter_added_later_never_takes_a_removed_adapters_number(vllm_engine: VLLMEngine) -> None:
    """Adapter weights are cached by number: a new (name, folder) gets a new number, an old one keeps its."""
    adapters = vllm_engine.lora_adapters
    first = vllm_engine._lora_request(next(iter(adapters)))
    adapters["later"] = "/nonexistent/one"
    one = vllm_engine._lora_request("later")
    adapters["later"] = "/nonexistent/two"
    two = vllm_engine._lora_request("later")
    del adapters["later"]
    assert len({first.lora_int_id, one.lora_int_id, two.lora_int_id}) == 3
    assert vllm_engine._lora_request(next(iter(adapters))).lora_int_id == first.lora_int_id
