"""One prompt rendering: vLLM inference, the trainer's loss mask and the data card agree token for token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aftlib import ChatRequest, Message
from aftlib._io import prompt_token_ids
from aftlib.engines import VLLMEngine
from aftlib.finetune import Example, Source, write_dataset
from aftlib.finetune._train import _encode

from .conftest import reference_aggregation_system

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

# A multi-turn aggregation request: the drafts in the system message, then a conversation of two user turns.
MESSAGES = [
    Message("system", reference_aggregation_system(["Seven is prime.", "Eleven, or maybe nine."])),
    Message("user", "Name a prime number."),
    Message("assistant", "Seven."),
    Message("user", "And a larger one?"),
]
TARGET = Message("assistant", "Eleven is a larger prime.")


def _tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


async def test_inference_training_and_the_card_see_the_same_prompt_tokens(
    vllm_engine: VLLMEngine, tiny_model: Path, tmp_path: Path
) -> None:
    """The ids vLLM sends == the trainer's masked prompt ids == prompt_token_ids; the card counts as many."""
    tokenizer = _tokenizer(tiny_model)
    inference = vllm_engine.prompt_token_ids(ChatRequest(MESSAGES))

    input_ids, labels = _encode(tokenizer, [dict(m) for m in [*MESSAGES, TARGET]])
    masked = [token for token, label in zip(input_ids, labels, strict=True) if label == -100]
    assert labels[: len(masked)] == [-100] * len(masked)  # the prompt comes first, then the answer
    training = input_ids[: len(masked)]

    shared = prompt_token_ids(tokenizer, MESSAGES)
    assert inference == training == shared
    assert shared.count(tokenizer.bos_token_id) == 1  # BOS written once, by the template

    example = Example([*MESSAGES, TARGET], "aggregation", Source("in.jsonl", 1))
    card = await write_dataset(tmp_path / "data.jsonl", [example], tokenizer=tokenizer)
    prompt = card.lengths["aggregation"]["prompt"]
    assert (prompt["min"], prompt["max"]) == (len(shared), len(shared))
