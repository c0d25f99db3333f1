"""GRPO on the real path: a few steps on the tiny model on CPU, prompts as served, served in AFT."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from aftlib import ChatRequest, Message
from aftlib.engines import VLLMEngine
from aftlib.finetune import TrainConfig, train
from aftlib.finetune import _train as train_module

from .test_vllm_finetune_train import aft_topology, serving_adapter

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]


def _rl_data(folder: Path) -> Path:
    """Eight problems with three drafts each and their gold answers."""
    path = folder / "rl.jsonl"
    with path.open("w", encoding="utf-8") as file:
        for i in range(8):
            record = {
                "id": i,
                "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}],
                "drafts": [f"{i} + {i} = {2 * i}. #### {2 * i}", f"I think #### {2 * i + 1}", "No idea."],
                "answer": str(2 * i),
                "majority_right": False,
            }
            file.write(json.dumps(record) + "\n")
    return path


async def test_grpo_scores_the_served_prompts_and_its_adapter_serves_in_aft(
    vllm_engine: VLLMEngine, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two GRPO steps (LoRA, groups of 2) on the tiny model on CPU.

    Every prompt TRL generated from is an aft_aggregate request over the record's drafts, tokenized to
    exactly the ids VLLMEngine sends for that request; the reward scored every completion of it against
    its gold answer; the adapter then serves in the AFT topology on the base model's engine.
    """
    scored: list[tuple[list[dict[str, str]], Any, str]] = []
    real_rewards = train_module.reward_functions

    def recording_rewards(*args: Any, **kwargs: Any) -> Any:
        functions, weights = real_rewards(*args, **kwargs)
        (correctness,) = functions

        def spy(prompts: list[Any], completions: list[Any], answer: list[str], **rest: Any) -> list[float]:
            scored.extend(zip(prompts, completions, answer, strict=True))
            return correctness(prompts=prompts, completions=completions, answer=answer, **rest)

        return [spy], weights

    monkeypatch.setattr(train_module, "reward_functions", recording_rewards)
    tokenized: list[list[int]] = []
    import trl

    real_tokenize = trl.GRPOTrainer._tokenize_prompts

    def recording_tokenize(self: Any, prompts: list[Any]) -> Any:
        out = real_tokenize(self, prompts)
        tokenized.extend(list(ids) for ids in out[0])
        return out

    monkeypatch.setattr(trl.GRPOTrainer, "_tokenize_prompts", recording_tokenize)
    config = TrainConfig.from_mapping(
        {
            "model": str(tiny_model),
            "data": str(_rl_data(tmp_path)),
            "output_dir": str(tmp_path / "grpo"),
            "method": "grpo",
            "max_steps": 2,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "seed": 0,
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "merge": False,
            "grpo": {"group_size": 2, "max_completion_length": 16, "drafts": [2, 3]},
        }
    )
    result = await anyio.to_thread.run_sync(functools.partial(train, config))
    assert (result.checkpoint, result.steps) == ("adapter", 2)
    assert all(point.reward is not None for point in result.losses)
    assert len(scored) == 8  # 2 steps x 4 completions
    assert len(tokenized) == 8
    for (prompt, completion, gold), ids in zip(scored, tokenized, strict=True):
        messages = [Message(m["role"], m["content"]) for m in prompt]
        assert messages[0].content.startswith("You are a helpful aggregator.")
        assert messages[-1].role == "user"
        assert gold in {str(2 * i) for i in range(8)}
        assert ids == vllm_engine.prompt_token_ids(ChatRequest(messages))
        assert isinstance(completion, list)
    with serving_adapter(vllm_engine, "grpo-trained", result.output_dir):
        run = await aft_topology(vllm_engine, lora="grpo-trained").run("What is 3 plus 3?")
    assert [len(layer.candidates) for layer in run.layers] == [2, 2]
    assert run.answer.finish_reason in ("stop", "length")
    assert run.answer.requests[0].lora == "grpo-trained"
