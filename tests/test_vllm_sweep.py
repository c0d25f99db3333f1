"""A sweep on the real CPU vLLM engine: 6 cells of the AFT topology, the math judge, shared drafts once."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from attrs import define, field

from aftlib import ChatRequest, Completion
from aftlib.engines import Engine, EngineStream, VLLMEngine, WrapperEngine
from aftlib.evaluate import Sweep

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

DATA = Path(__file__).parent / "data"


@define(eq=False)
class Recorder(WrapperEngine):
    """Records every request that reaches the real engine (under the sweep's cache)."""

    sent: list[ChatRequest] = field(factory=list, init=False)

    async def generate(self, request: ChatRequest) -> Completion:
        self.sent.append(request)
        return await self.inner.generate(request)

    def stream(self, request: ChatRequest) -> EngineStream:
        self.sent.append(request)
        return self.inner.stream(request)


async def test_a_sweep_of_six_cells_on_the_cpu_engine(vllm_engine: VLLMEngine, tmp_path: Path) -> None:
    """Six cells of the tiny model: results.csv, the table and plots exist, each proposal is sent once."""
    for name in ("sweep_gsm8k_prompts.jsonl", "gsm8k_5.jsonl"):
        (tmp_path / name).write_bytes((DATA / name).read_bytes())
    base = {
        "model_name": vllm_engine.model,
        "generation_params": {
            "temperature": 0.7,
            "top_p": 0.95,
            "max_tokens": 12,
            "n": 1,
            "final_layer_temperature": 0.7,
            "final_layer_top_p": 1.0,
        },
        "num_aggregation": 1,
    }
    (tmp_path / "aft.yaml").write_text(yaml.safe_dump(base))
    sweep_file = {
        "base": "aft.yaml",
        "axes": {"generation_params.n": [1, 2, 3], "num_aggregation": [1, 2]},
        "prompts": "sweep_gsm8k_prompts.jsonl",
        "limit": 3,
        "judge": {"type": "math", "references": "gsm8k_5.jsonl"},
        "concurrency": 4,
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep_file))
    recorder = Recorder(vllm_engine)
    hook: Callable[[str, Callable[[], Engine]], Engine] = lambda key, build: recorder  # noqa: E731
    report = await Sweep.load(tmp_path / "sweep.yaml", engine_hook=hook).run(tmp_path / "out")

    assert [r.status for r in report.results] == ["done"] * 6, [r.error for r in report.results]
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert {r["metric"] for r in rows} == {"accuracy"}
    assert all(r["n"] == "3" for r in rows)
    assert (tmp_path / "out" / "results.md").read_text().count("\n") == 8
    for name in ("quality_vs_tokens.png", "quality_vs_tokens.svg"):
        assert (tmp_path / "out" / name).stat().st_size > 1000

    proposals: Counter[Any] = Counter()
    for request in recorder.sent:
        if "Responses from models" not in request.messages[0].content:
            proposals[tuple((m.role, m.content) for m in request.messages)] += request.sampling.n
    assert len(proposals) == 3  # one proposal prompt per record, shared by all six cells
    assert set(proposals.values()) == {3}  # samples 0..2 of each, each generated once
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["reused_tokens"] > 0
    assert summary["engine_requests"] == len(recorder.sent)
    assert summary["generated_tokens"] == sum(r.generated_tokens for r in report.results)
