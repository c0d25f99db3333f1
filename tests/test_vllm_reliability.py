"""Reliability on the real vLLM engine (CPU build): a small context, failed and slow agents, aborts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aftlib import (
    Aggregator,
    Layer,
    Proposer,
    QuorumError,
    Runner,
    SamplingParams,
    Topology,
    presets,
    traced_requests,
)
from aftlib._budget import TRUNCATION_MARKER
from aftlib.engines import VLLMEngine
from aftlib.testing import FakeEngine

DATA = Path(__file__).parent / "data"

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]


@pytest.fixture(scope="module")
async def small_engine(tiny_model: Path) -> AsyncIterator[VLLMEngine]:
    """The tiny model served with a 512-token context."""
    engine = VLLMEngine(
        str(tiny_model),
        name="tiny-512",
        max_model_len=512,
        kv_cache_memory_bytes=1 << 28,
        enforce_eager=True,
        seed=0,
    )
    async with engine:
        yield engine


async def test_aft_with_drafts_that_cannot_fit_completes_and_traces_the_cuts(
    small_engine: VLLMEngine, tmp_path: Path
) -> None:
    """max_model_len=512, AFT n=4, num_aggregation=3, max_tokens=200: drafts that cannot fit whole.

    Every record completes, no request exceeds the context, and the trace records the cuts.
    """
    topology = presets.aft(small_engine, n=4, num_aggregation=3, max_tokens=200, seed=None)
    out = tmp_path / "out.jsonl"
    summary = await Runner(topology, DATA / "alpaca_eval_20.jsonl", out, limit=3, trace=True).run()
    assert (summary.done, summary.failed) == (3, 0)
    lines = [json.loads(text) for text in out.read_text().splitlines()]
    cut_layers = set()
    for line in lines:
        (entry,) = line["trace"]
        candidates = [c for layer in entry["layers"] for c in layer] + [entry["answer"]]
        for candidate in candidates:
            assert candidate["prompt_tokens"] + candidate["completion_tokens"] <= 512
        for index, layer in enumerate(entry["layers"]):
            if any(c["cuts"] for c in layer):
                cut_layers.add(index)
        if entry["answer"]["cuts"]:
            cut_layers.add(len(entry["layers"]))
        for cut in (k for c in candidates for k in c["cuts"]):
            assert cut["kept"] < cut["tokens"]
        requests = traced_requests(entry)
        assert len(requests) == 4  # one request per layer: 4 + 4 + 4 + 1 samples
        assert any(TRUNCATION_MARKER in r.request.messages[0].content for r in requests[1:])
    assert cut_layers & {1, 2}


async def test_one_of_three_proposers_failing_with_quorum_two_completes_and_names_it(
    vllm_engine: VLLMEngine,
) -> None:
    """Two real proposers and one that always fails: min_candidates=2 completes, naming the failed one.

    min_candidates=3 fails with a QuorumError that names it.
    """
    down = FakeEngine(name="down", faults=lambda number, request: "raise")
    sampling = SamplingParams(max_tokens=16, seed=None)

    def topology(quorum: int) -> Topology:
        layer = Layer(
            [
                Proposer(vllm_engine, name="left", sampling=sampling),
                Proposer(vllm_engine, name="right", sampling=sampling),
                Proposer(down, name="down"),
            ],
            min_candidates=quorum,
        )
        return Topology([layer], Aggregator(vllm_engine, sampling=sampling))

    result = await topology(2).run("Name a prime number.")
    assert [c.agent for c in result.layers[0].candidates] == ["left", "right"]
    assert [(f.agent, f.reason) for f in result.failures] == [("down", "error")]
    # the failure makes the quorum unreachable: the real proposers are cancelled at once
    with pytest.raises(QuorumError, match="left cancelled; right cancelled; down EngineError"):
        await topology(3).run("Name a prime number.")
    assert vllm_engine.llm.get_num_unfinished_requests() == 0


async def test_a_straggler_cancelled_by_the_quorum_is_aborted_inside_vllm(vllm_engine: VLLMEngine) -> None:
    """When the quorum is in, the slow real proposer is cancelled and its request aborted in vLLM.

    Zero unfinished requests are left.
    """
    layer = Layer(
        [
            Proposer(vllm_engine, name="slow", sampling=SamplingParams(max_tokens=1500, seed=None)),
            Proposer(FakeEngine(name="a", latency=0.1), name="a"),
            Proposer(FakeEngine(name="b", latency=0.1), name="b"),
        ],
        min_candidates=2,
    )
    result = await Topology([layer], Aggregator(FakeEngine(name="judge"))).run("Tell me a long story.")
    assert [(f.agent, f.reason) for f in result.failures] == [("slow", "cancelled")]
    assert vllm_engine.llm.get_num_unfinished_requests() == 0
