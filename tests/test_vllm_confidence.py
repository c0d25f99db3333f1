"""Online stopping on the real vLLM CPU engine: a stopped draft is aborted, its tokens counted once."""

from __future__ import annotations

from typing import Any

import pytest
from attrs import evolve

from aftlib import (
    ChatRequest,
    Confidence,
    Drafts,
    Message,
    OnlineStop,
    Proposer,
    SamplingParams,
    TokenConfidences,
    TokenDelta,
    Topology,
    Vote,
)
from aftlib.engines import VLLMEngine

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

WINDOW = 4
SAMPLING = SamplingParams(temperature=1.0, max_tokens=256, n=2, logprobs=20)
QUESTION = [Message("user", "Count the apples: 3 and 4 more.")]


def _stop_at(confidences: TokenConfidences, threshold: float) -> int | None:
    """The tokens a draft streams before a window of it falls below ``threshold`` (None: it never does)."""
    tokens = confidences.tokens
    for end in range(WINDOW, len(tokens) + 1):
        if sum(tokens[end - WINDOW : end]) / WINDOW < threshold:
            return end
    return None


async def test_a_stopped_draft_is_aborted_in_vllm_and_its_tokens_counted_once(
    vllm_engine: VLLMEngine,
) -> None:
    """Draft 0 falls below the threshold and is stopped; draft 1, drawn after it, never does.

    The threshold is set between the two drafts' lowest group confidences, read from the same seeded
    drafts generated whole beforehand. While draft 1 streams, vLLM holds one unfinished request (draft
    0's was aborted, not left to run to max_tokens); draft 0 generated exactly the tokens up to its
    stop; the saved tokens appear once in the layer's and the run's usage.
    """
    lowest = Confidence("lowest_group", window=WINDOW)
    chosen: tuple[int, float, int, Any] | None = None
    for seed in range(100, 140, 2):  # seeded drafts come out the same every time: find a pair that splits
        whole = []
        for index in range(2):
            one = evolve(SAMPLING, n=1, seed=seed + index)
            (sample,) = (await vllm_engine.generate(ChatRequest(QUESTION, one))).samples
            assert sample.logprobs is not None
            whole.append((sample, TokenConfidences.of(sample.logprobs)))
        low, high = (lowest.score(c) for _, c in whole)
        if low is not None and high is not None and low < high and len(whole[0][1].tokens) > WINDOW:
            threshold = (low + high) / 2
            stop = _stop_at(whole[0][1], threshold)
            assert stop is not None
            assert _stop_at(whole[1][1], threshold) is None
            chosen = (seed, threshold, stop, whole[1][0])
            break
    assert chosen is not None, "no seed gave a draft above another's lowest group"
    seed, threshold, stop, survivor = chosen

    proposer = Proposer(vllm_engine, template="passthrough", sampling=evolve(SAMPLING, seed=seed))
    drafts = Drafts(proposer, stop=OnlineStop(threshold=threshold, window=WINDOW), wave=1)
    loads: list[int] = []

    def watch(event: object) -> None:
        if isinstance(event, TokenDelta) and event.layer == 0 and event.index == 1:
            loads.append(vllm_engine.load)

    result = await Topology([drafts], Vote(on_no_answer="first")).run(
        [dict(m) for m in QUESTION], on_event=watch
    )
    (candidate,) = result.layers[0].candidates
    assert (candidate.index, candidate.text) == (1, survivor.text)
    assert max(loads) == 1  # draft 0's request is gone while draft 1 streams (else 2, for 256 tokens)
    assert vllm_engine.load == 0
    usage = result.layers[0].usage
    assert stop < SAMPLING.max_tokens
    assert usage.completion_tokens == stop + survivor.completion_tokens
    assert usage.saved_tokens == max(survivor.completion_tokens - stop, 0)
    assert result.usage.saved_tokens == usage.saved_tokens
    assert candidate.details["drafting"]["stopped"] == 1
