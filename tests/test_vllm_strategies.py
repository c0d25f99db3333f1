"""A composed topology from a file on the real CPU engine: MoA drafts, an RSA step, a vote."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from aftlib import Aggregator, Vote, config
from aftlib.engines import Engine, VLLMEngine

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]


async def test_moa_drafts_an_rsa_step_and_a_vote_from_a_file(
    vllm_engine: VLLMEngine, tiny_model: Path, openai_server: str, tmp_path: Path
) -> None:
    """Two engines draft (in process and a server), 3 aggregators read 2 drafts each, a vote answers."""
    text = f"""
engines:
  local: {{type: vllm, model: {tiny_model}, max_model_len: 2048}}
  remote: {{type: openai, model: tiny-served, base_url: "{openai_server}"}}
agents:
  draft_local: {{engine: local, template: passthrough, sampling: {{n: 2, max_tokens: 24, seed: 1}}}}
  draft_remote: {{engine: remote, template: passthrough, sampling: {{n: 2, max_tokens: 24, seed: 2}}}}
  rsa:
    type: aggregator
    engine: local
    template: rsa_aggregate
    sampling: {{n: 3, max_tokens: 24, seed: 3}}
    references: {{subset: 2, seed: 0}}
  pick: {{type: vote, extractor: {{strategies: [last_number]}}, on_no_answer: first}}
layers: [[draft_local, draft_remote], [rsa]]
final: pick
"""
    path = tmp_path / "mix.yaml"
    path.write_text(text, encoding="utf-8")
    assert yaml.safe_load(text)["final"] == "pick"

    def share_the_session_engine(key: str, build: Callable[[], Engine]) -> Engine:
        engine = build()
        return vllm_engine if isinstance(engine, VLLMEngine) else engine  # no second engine to start

    topology = config.load(path, engine_hook=share_the_session_engine)
    assert isinstance(topology.layers[1].agents[0], Aggregator)
    assert isinstance(topology.final, Vote)
    async with topology:
        result = await topology.run("What is 3 + 4? Answer with a number.")
    drafts, rsa = result.layers
    assert [(c.agent, c.index) for c in drafts.candidates] == [
        ("draft_local", 0),
        ("draft_local", 1),
        ("draft_remote", 0),
        ("draft_remote", 1),
    ]
    assert [len(c.read or ()) for c in rsa.candidates] == [2, 2, 2]
    for candidate in rsa.candidates:
        prompt = candidate.requests[0].messages[-1].content
        assert prompt.startswith("What is 3 + 4?")
        for i in candidate.read or ():
            assert drafts.candidates[i].text in prompt
    assert result.text in [c.text for c in rsa.candidates]
    details = result.answer.details
    assert sum(details["votes"].values()) + details["no_answer"] == 3
    assert result.usage.requests == 2 + 3  # two draft requests (n=2 each), three subset aggregations
    assert vllm_engine.llm.get_num_unfinished_requests() == 0
