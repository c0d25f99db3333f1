"""Three schedules of the same AFT workload on one real vLLM engine (the `cpu` extra, the tiny model).

AFT topology n=5, num_aggregation=2, max_tokens=64, over the first 256 prompts of an AlpacaEval prompt
file. No per-request seed: vLLM's CPU build crashes when a seeded request's prefill is split into chunks,
which happens under this load; the tiny model rarely stops before 64 tokens, so the schedules generate
nearly the same number of tokens (reported) without it.

- aftlib: `Runner` with every record in flight (pipelined: a record's next layer starts as soon as its
  own previous layer is done);
- minimal: a hand-written pipeline straight on vLLM's `AsyncLLM`, every record concurrent, the same
  requests (token ids rendered with the chat template, n samples per request, final-only outputs);
- batch-sync: like the AFT reference script: batches of 16 records, each layer waits for the batch.

The schedules alternate (rotating which goes first) for ``--repeats`` rounds after one warm-up round;
medians are reported. These machines are shared and noisy: compare the ratios, not the seconds.

    .venv/bin/python bench/bench_real_engine.py --prompts PATH/alpaca_eval_prompts.jsonl [--records 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from aftlib import Runner, presets
from aftlib.engines import VLLMEngine
from aftlib.testing import tiny_model_path

N, NUM_AGGREGATION, MAX_TOKENS = 5, 2, 64
INSTRUCTION = (
    "You are a helpful aggregator.\nYou have been provided with a set of responses from various open-source "
    "models to the latest user query. Your task is to synthesize these responses into a single, high-quality "
    "response. It is crucial to critically evaluate the information provided in these responses, recognizing "
    "that some of it may be biased or incorrect. Your response should not simply replicate the given answers "
    "but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure your response "
    "is well-structured, coherent, and adheres to the highest standards of accuracy and reliability."
    "\n    \n    Responses from models:"
)


class Direct:
    """The minimal hand-written client of AsyncLLM that the 'minimal' and 'batch-sync' schedules share."""

    def __init__(self, engine: VLLMEngine) -> None:
        import vllm

        self.llm = engine.llm
        self.tokenizer = engine.tokenizer
        self.vllm = vllm
        self.tokens = 0

    async def sample(self, messages: list[dict[str, str]], n: int, top_p: float) -> list[str]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        params = self.vllm.SamplingParams(
            n=n,
            temperature=0.7,
            top_p=top_p,
            max_tokens=MAX_TOKENS,
            stop_token_ids=[self.tokenizer.eos_token_id],
            output_kind=self.vllm.sampling_params.RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for output in self.llm.generate({"prompt_token_ids": ids}, params, uuid.uuid4().hex):
            final = output
        assert final is not None
        assert len(final.outputs) == n
        self.tokens += sum(len(o.token_ids) for o in final.outputs)
        return [o.text for o in sorted(final.outputs, key=lambda o: o.index)]

    async def layer(
        self, conversation: list[dict[str, str]], previous: list[str] | None, final: bool
    ) -> list[str]:
        if previous is None:
            system = "\n"
        else:
            system = INSTRUCTION + "\n" + "\n".join(f"{i + 1}. {p}" for i, p in enumerate(previous))
        messages = [{"role": "system", "content": system}, *conversation]
        return await self.sample(messages, 1 if final else N, 1.0 if final else 0.95)

    async def record(self, conversation: list[dict[str, str]]) -> str:
        texts = await self.layer(conversation, None, False)
        for _ in range(NUM_AGGREGATION - 1):
            texts = await self.layer(conversation, texts, False)
        return (await self.layer(conversation, texts, True))[0]


async def run_minimal(direct: Direct, conversations: list[list[dict[str, str]]]) -> int:
    direct.tokens = 0
    async with anyio.create_task_group() as tg:
        for conversation in conversations:
            tg.start_soon(direct.record, conversation)
    return direct.tokens


async def run_batch_sync(
    direct: Direct,
    conversations: list[list[dict[str, str]]],
    batch: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """The reference's schedule; ``on_batch(records)`` is called as each batch's records are answered."""
    direct.tokens = 0
    for first in range(0, len(conversations), batch):
        chunk = conversations[first : first + batch]
        texts: list[list[str] | None] = [None] * len(chunk)
        for step in range(NUM_AGGREGATION + 1):
            out: list[list[str]] = [[] for _ in chunk]

            async def one(i: int, step: int = step, out: list[list[str]] = out) -> None:
                out[i] = await direct.layer(chunk[i], texts[i], step == NUM_AGGREGATION)

            async with anyio.create_task_group() as tg:  # the batch barrier
                for i in range(len(chunk)):
                    tg.start_soon(one, i)
            texts = list(out)
        if on_batch is not None:
            on_batch(len(chunk))
    return direct.tokens


async def run_aftlib(engine: VLLMEngine, source: Path, folder: Path, records: int) -> int:
    topology = presets.aft(engine, n=N, num_aggregation=NUM_AGGREGATION, max_tokens=MAX_TOKENS)
    out = folder / f"out-{uuid.uuid4().hex}.jsonl"
    summary = await Runner(topology, source, out, concurrency=records).run()
    assert summary.done == records, summary
    return summary.usage.completion_tokens


async def main(prompts: Path, records: int, repeats: int) -> None:
    lines = prompts.read_text().splitlines()[:records]
    conversations = [json.loads(line)["query"] for line in lines]
    engine = VLLMEngine(
        str(tiny_model_path()), max_model_len=2048, kv_cache_memory_bytes=2 << 30, enforce_eager=True, seed=0
    )
    async with engine:
        direct = Direct(engine)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            source = folder / "in.jsonl"
            source.write_text("\n".join(lines) + "\n")
            schedules: dict[str, Callable[[], Awaitable[int]]] = {
                "aftlib": lambda: run_aftlib(engine, source, folder, len(lines)),
                "minimal": lambda: run_minimal(direct, conversations),
                "batch_sync": lambda: run_batch_sync(direct, conversations),
            }
            names = list(schedules)
            times: dict[str, list[float]] = {name: [] for name in names}
            tokens: dict[str, list[int]] = {name: [] for name in names}
            for round_ in range(repeats + 1):
                order = names[round_ % 3 :] + names[: round_ % 3]
                for name in order:
                    start = time.perf_counter()
                    generated = await schedules[name]()
                    elapsed = time.perf_counter() - start
                    if round_:
                        times[name].append(elapsed)
                        tokens[name].append(generated)
                    print(f"round {round_} {name}: {elapsed:.1f}s, {generated} tokens", flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    result: dict[str, Any] = {
        "records": len(lines),
        "repeats": repeats,
        "median_s": {k: round(v, 2) for k, v in medians.items()},
        "all_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "completion_tokens": tokens,
        "aftlib_over_minimal": round(medians["aftlib"] / medians["minimal"], 3),
        "batch_sync_over_minimal": round(medians["batch_sync"] / medians["minimal"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    anyio.run(main, args.prompts, args.records, args.repeats, backend="asyncio")
