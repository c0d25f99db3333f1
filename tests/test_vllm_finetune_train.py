"""The whole path on the real vLLM CPU engine: build AFT data, train the tiny model, serve it in AFT."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from aftlib import Aggregator, Layer, Proposer, SamplingParams, Topology, presets
from aftlib.engines import VLLMEngine
from aftlib.finetune import (
    TrainConfig,
    TrainResult,
    build_off_policy,
    read_preferences,
    train,
    write_dataset,
)

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

TARGET = "Seven times six is 42."
"""The best-rated response of every preference record: the model learns to write it, whatever the drafts."""

NEAR_GREEDY = 0.01
"""vLLM samples n > 1 only above temperature 0; the trained margins (> 1 logit) make this greedy in effect."""

QUESTIONS = [
    "What is seven times six?",
    "Name a river.",
    "How much do ten apples cost?",
    "Who writes the final answer?",
    "What color is the fox?",
    "When is the river low?",
    "What does an editor do?",
    "Check the arithmetic.",
]
OTHERS = [
    "The quick brown fox jumps.",
    "Count again, slowly.",
    "The river runs past the mill.",
    "A good reader compares the answers.",
]


@pytest.fixture(scope="module")
async def aft_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UltraFeedback-style records turned into aggregation and direct examples by the data builders."""
    folder = tmp_path_factory.mktemp("aft-data")
    with (folder / "uf.jsonl").open("w", encoding="utf-8") as file:
        for i, question in enumerate(QUESTIONS):
            completions = [{"model": "best", "response": TARGET, "overall_score": 9.0}] + [
                {"model": f"m{j}", "response": OTHERS[(i + j) % len(OTHERS)], "overall_score": float(j)}
                for j in range(3)
            ]
            file.write(json.dumps({"instruction": question, "completions": completions}) + "\n")
    data = folder / "agg.jsonl"
    card = await write_dataset(
        data, build_off_policy(read_preferences(folder / "uf.jsonl"), k=2, seed=0, direct_ratio=1.0)
    )
    assert card.examples == {"aggregation": 8, "direct": 8}
    return data


async def train_lora(tiny_model: Path, data: Path, output_dir: Path, *, merge: bool) -> TrainResult:
    """32 LoRA steps on the tiny model, in a worker thread: the event loop of the engines stays free."""
    config = TrainConfig.from_mapping(
        {
            "model": str(tiny_model),
            "data": str(data),
            "output_dir": str(output_dir),
            "max_steps": 32,
            "learning_rate": 3e-3,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "logging_steps": 4,
            "seed": 0,
            "lora": {"r": 8, "alpha": 64, "dropout": 0.0},
            "merge": merge,
        }
    )
    result = await anyio.to_thread.run_sync(functools.partial(train, config))
    assert result.last_loss is not None
    assert result.first_loss is not None
    assert result.last_loss < result.first_loss - 1.5, result.losses
    return result


async def test_merged_checkpoint_serves_the_aft_topology(
    tiny_model: Path, aft_data: Path, tmp_path: Path
) -> None:
    """A merged LoRA checkpoint loads in a new VLLMEngine; every (near-greedy) AFT layer writes the target."""
    result = await train_lora(tiny_model, aft_data, tmp_path / "merged", merge=True)
    assert result.checkpoint == "merged"
    engine = VLLMEngine(
        str(result.output_dir), max_model_len=2048, kv_cache_memory_bytes=1 << 30, enforce_eager=True, seed=0
    )
    topology = presets.aft(
        engine, n=2, num_aggregation=2, temperature=NEAR_GREEDY, final_temperature=0.0, max_tokens=32, seed=0
    )
    async with topology:
        run = await topology.run("Tell me a story about the old mill.")
    assert [layer.texts for layer in run.layers] == [[TARGET, TARGET], [TARGET, TARGET]]
    assert run.text == TARGET
    assert run.answer.finish_reason == "stop"


@contextmanager
def serving_adapter(engine: VLLMEngine, name: str, folder: Path) -> Iterator[None]:
    """Serve one more adapter on the shared engine during a test (vLLM loads adapters per request)."""
    engine.lora_adapters[name] = str(folder)
    try:
        yield
    finally:
        del engine.lora_adapters[name]


def aft_topology(engine: VLLMEngine, **agent: Any) -> Topology:
    """AFT by hand (the preset has no LoRA option): 2 drafts, 2 aggregations, 1 final answer."""
    drafts = SamplingParams(temperature=NEAR_GREEDY, max_tokens=32, n=2, seed=0)
    final = SamplingParams(temperature=0.0, max_tokens=32)
    return Topology(
        [
            Layer(Proposer(engine, sampling=drafts, **agent)),
            Layer(Aggregator(engine, sampling=drafts, **agent)),
        ],
        Aggregator(engine, sampling=final, name="final", **agent),
    )


async def test_adapter_checkpoint_serves_on_the_base_model(
    vllm_engine: VLLMEngine, tiny_model: Path, aft_data: Path, tmp_path: Path
) -> None:
    """An adapter (merge: false) serves on the base model's engine; the base alone does not answer so."""
    result = await train_lora(tiny_model, aft_data, tmp_path / "adapter", merge=False)
    assert result.checkpoint == "adapter"
    with serving_adapter(vllm_engine, "aft-trained", result.output_dir):
        tuned = await aft_topology(vllm_engine, lora="aft-trained").run("Tell me a story about the old mill.")
    base = await aft_topology(vllm_engine).run("Tell me a story about the old mill.")
    assert [layer.texts for layer in tuned.layers] == [[TARGET, TARGET], [TARGET, TARGET]]
    assert tuned.text == TARGET
    assert base.text != TARGET
