"""On-policy AFT data on the real vLLM engine (CPU build) with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from attrs import define, field

from aftlib import ChatRequest, Completion, Message, PromptTemplate, SamplingParams
from aftlib.engines import Engine, VLLMEngine
from aftlib.finetune import Example, Skip, build_on_policy, read_preferences, write_dataset

from .conftest import reference_aggregation_system

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

UF = Path(__file__).parent / "data" / "ultrafeedback_5.jsonl"


@define(eq=False)
class Recording(Engine):
    """Passes requests to an engine and keeps them."""

    inner: Engine
    requests: list[ChatRequest] = field(factory=list)

    async def generate(self, request: ChatRequest) -> Completion:
        self.requests.append(request)
        return await self.inner.generate(request)


async def test_on_policy_drafts_are_sampled_by_vllm(vllm_engine: VLLMEngine, tmp_path: Path) -> None:
    """Each record's k drafts are vLLM's samples for the ICL prompt; they become the aggregation prompt."""
    engine = Recording(vllm_engine, name="tiny")
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=12)
    out = tmp_path / "onpolicy.jsonl"
    items = build_on_policy(
        engine,
        read_preferences(UF),
        k=3,
        seed=0,
        sampling=sampling,
        concurrency=1,
        cache=tmp_path / "onpolicy.drafts.jsonl",
    )
    card = await write_dataset(out, items, sources={"k": 3}, tokenizer=vllm_engine.tokenizer)
    raw = [json.loads(line) for line in UF.read_text().splitlines()]
    assert len(engine.requests) == 4  # line 4 has no score for its best response: skipped before drafting
    assert card.skipped.get("missing score") == 1
    examples = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(examples) + card.total_skipped == 5
    icl = PromptTemplate("aft_icl_propose")
    by_instruction = {r.messages[-1].content: r for r in engine.requests}
    for row in examples:
        instruction = raw[row["source"]["line"] - 1]["instruction"]
        request = by_instruction[instruction]
        assert list(request.messages) == icl.messages([Message("user", instruction)], [])
        assert (request.sampling.n, request.sampling.max_tokens) == (3, 12)
        again = await vllm_engine.generate(request)  # the same seeded request, asked again
        drafts = [s.text for s in again.samples if s.text.strip()]
        assert len(drafts) == 3
        assert row["messages"][0] == {"role": "system", "content": reference_aggregation_system(drafts)}
        assert row["messages"][1] == {"role": "user", "content": instruction}
        responses = raw[row["source"]["line"] - 1]["completions"]
        assert row["messages"][2]["content"] == max(responses, key=lambda c: c["overall_score"])["response"]
        assert all(d not in {c["response"] for c in responses} for d in drafts)
    assert card.length_unit.startswith("tokens (")
    assert card.lengths["aggregation"]["prompt"]["min"] > 0

    rerun = Recording(vllm_engine, name="tiny")
    async with build_on_policy(
        rerun,
        read_preferences(UF),
        k=3,
        seed=0,
        sampling=sampling,
        cache=tmp_path / "onpolicy.drafts.jsonl",
    ) as items:
        resumed = [i async for i in items]
    assert rerun.requests == []  # every draft came from the draft cache
    assert [i.to_json() for i in resumed if isinstance(i, Example)] == examples
    assert sum(isinstance(i, Skip) for i in resumed) == card.total_skipped
