r"""Aggregation fine-tuning end to end: build AFT data, train with LoRA, serve the model in AFT.

1. Preference data (UltraFeedback layout: an instruction and rated completions) becomes aggregation
   examples: k completions are the drafts in the aggregation prompt, the best-rated one is the target
   (``aftlib data off-policy``); each record also gives a direct example, so the model learns to draft too.
2. TRL's SFT trainer fine-tunes the model with LoRA, with the loss on the answer turn only, and merges
   the adapter into the weights (``aftlib train``).
3. The checkpoint is served by ``VLLMEngine`` in the AFT topology: it drafts, aggregates its own drafts
   and answers.

By default everything runs on CPU with the tiny random-weight Llama of ``aftlib.testing`` and a few
built-in records, in about a minute: its best-rated answers all start with "In short:", and after
training so do its own. Pass ``--model`` and ``--input`` to fine-tune a real model on real data (a GPU
machine with ``aftlib[vllm,train]``).

Run it with::

    python examples/aft_finetune.py
    python examples/aft_finetune.py --model meta-llama/Llama-3.1-8B-Instruct --input ultrafeedback.jsonl \
        --workdir runs/aft --steps 2000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import anyio

from aftlib import presets
from aftlib.engines import VLLMEngine
from aftlib.finetune import TrainConfig, build_off_policy, read_preferences, train, write_dataset
from aftlib.testing import tiny_model_path

RECORDS = [
    (
        "Explain why the sky is blue.",
        "In short: air scatters blue light more than red light.",
        ["The sky reflects the sea.", "Blue light is scattered by air.", "It is blue because of space."],
    ),
    (
        "How much do ten apples cost if three cost six dollars?",
        "In short: one apple costs two dollars, so ten cost twenty.",
        ["Ten apples cost twenty dollars.", "Thirty dollars.", "Each apple costs two dollars."],
    ),
    (
        "What does a good editor do?",
        "In short: compares the drafts and keeps what is sound in each.",
        ["An editor fixes commas.", "A good editor compares drafts.", "Editors write the news."],
    ),
    (
        "Why check your arithmetic?",
        "In short: a slip in one step spoils the answer, so count again.",
        ["Because teachers ask.", "To find slips in a step.", "Arithmetic is always right."],
    ),
    (
        "Summarize the method in one sentence.",
        "In short: gather several answers, compare them, combine the best parts.",
        ["Gather answers and combine them.", "Pick the longest answer.", "Ask one model once."],
    ),
]
"""(instruction, the best-rated response, three weaker responses): the built-in preference data."""

QUESTION = "Why is the river low in summer?"


def write_preferences(path: Path) -> None:
    """The built-in records in the UltraFeedback layout."""
    with path.open("w", encoding="utf-8") as file:
        for instruction, best, others in RECORDS:
            completions = [{"model": "strong", "response": best, "overall_score": 9.0}] + [
                {"model": f"weak-{i}", "response": text, "overall_score": float(3 + i)}
                for i, text in enumerate(others)
            ]
            file.write(json.dumps({"instruction": instruction, "completions": completions}) + "\n")


async def build_data(preferences: Path, data: Path, k: int) -> None:
    card = await write_dataset(
        data, build_off_policy(read_preferences(preferences), k=k, seed=0, direct_ratio=1.0)
    )
    print(
        f"data: {card.examples} examples from {card.records_used} records, skipped {card.skipped} -> {data}"
    )


async def serve(
    checkpoint: Path, engine_args: dict[str, object], max_tokens: int, temperature: float
) -> None:
    engine = VLLMEngine(str(checkpoint), **engine_args)
    topology = presets.aft(
        engine, n=3, num_aggregation=2, max_tokens=max_tokens, temperature=temperature, final_temperature=0.0
    )
    async with topology:
        result = await topology.run(QUESTION)
    print(f"question: {QUESTION}")
    for i, layer in enumerate(result.layers):
        print(f"layer {i} drafts: {layer.texts}")
    print(f"answer: {result.text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the base model (default: the tiny test model, on CPU)")
    parser.add_argument(
        "--input", type=Path, help="preference data, UltraFeedback layout (default: built in)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="where the data and the checkpoint go (default: temporary)"
    )
    parser.add_argument("--steps", type=int, default=32, help="training steps (default 32)")
    parser.add_argument("--k", type=int, default=3, help="drafts per aggregation example (default 3)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    with tempfile.TemporaryDirectory(prefix="aft-finetune-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        preferences = args.input
        if preferences is None:
            preferences = workdir / "preferences.jsonl"
            write_preferences(preferences)
        data = workdir / "aft-data.jsonl"
        anyio.run(build_data, preferences, data, args.k)

        tiny = args.model is None
        config = TrainConfig(
            model=str(tiny_model_path()) if tiny else args.model,
            data=str(data),
            output_dir=str(workdir / "aft-model"),
            max_steps=args.steps,
            # A random tiny model needs a large step to learn anything in 32 steps; a real one does not.
            learning_rate=3e-3 if tiny else 1e-4,
            batch_size=4 if tiny else 1,
            gradient_accumulation_steps=1 if tiny else 8,
            logging_steps=4 if tiny else 10,
            seed=0,
            lora={"r": 8, "alpha": 64, "dropout": 0.0} if tiny else {"r": 16, "alpha": 32},
        )
        print(f"training {config.model} with LoRA for {config.max_steps} steps", flush=True)
        result = train(config, on_log=lambda p: print(f"  step {p.step}/{p.max_steps}  loss {p.loss:.3f}"))
        print(f"checkpoint: {result.output_dir} ({result.checkpoint}), {result.elapsed:.0f} s")

        # On CPU, size the KV cache: otherwise the CPU backend tries to reserve most of the memory.
        engine_args: dict[str, object] = (
            {"max_model_len": 2048, "kv_cache_memory_bytes": 1 << 30, "enforce_eager": True, "seed": 0}
            if tiny
            else {"max_model_len": 8192, "seed": 0}
        )
        print(
            "serving it in the AFT topology (vLLM starts in a minute on a small CPU machine)",
            flush=True,
        )
        # The tiny model's distribution stays flat after 32 steps: sample its drafts near its top choice.
        anyio.run(serve, result.output_dir, engine_args, 32 if tiny else 1024, 0.2 if tiny else 0.7)


# vLLM starts its engine in a new process, which imports this file again: run only as a script.
if __name__ == "__main__":
    main()
