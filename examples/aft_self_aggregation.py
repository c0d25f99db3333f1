"""AFT propose-and-aggregate on vLLM, streaming the final answer token by token.

One model drafts ``n`` answers, aggregates its own drafts into ``n`` new ones, then writes one final
answer over those (``presets.aft``). By default the model is the tiny random-weight Llama of
``aftlib.testing``, built on first use and run on CPU: its text is meaningless, but every step is real.
Pass ``--model`` to run a real model instead, for example the AFT model on a GPU machine.

Run it with::

    python examples/aft_self_aggregation.py
    python examples/aft_self_aggregation.py --model linzw/Llama-AFT-On-Policy --max-tokens 1024
"""

from __future__ import annotations

import argparse
import os

import anyio

from aftlib import AnswerDone, Result, TokenDelta, presets
from aftlib.engines import VLLMEngine
from aftlib.testing import tiny_model_path

CONVERSATION = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "Now name one larger than 100, and say why it is prime."},
]


async def run(engine: VLLMEngine, max_tokens: int) -> None:
    async with engine:
        topology = presets.aft(engine, n=3, num_aggregation=2, max_tokens=max_tokens)
        result: Result | None = None
        print("answer: ", end="", flush=True)
        # The block owns the run: leaving it early (an error, Ctrl-C) cancels it and aborts its requests.
        async with topology.stream(CONVERSATION) as events:
            async for event in events:
                if isinstance(event, TokenDelta) and event.is_answer:
                    print(event.text, end="", flush=True)
                elif isinstance(event, AnswerDone):
                    result = event.result
        print()

    assert result is not None
    counts = [len(layer.candidates) for layer in result.layers]
    print(f"candidates per layer: {counts} + 1 final answer ({topology.generations_per_query} samples)")
    usage = result.usage
    print(
        f"usage: {usage.requests} requests, {usage.prompt_tokens} prompt tokens, "
        f"{usage.completion_tokens} completion tokens, {result.elapsed:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="a model folder, or a hub name already in the local cache (default: the tiny test model)",
    )
    parser.add_argument("--max-tokens", type=int, default=32, help="the most tokens per sample (default 32)")
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=8192,
        help="the context length for --model; it must hold 3 drafts and the answer (default 8192)",
    )
    args = parser.parse_args()
    # vLLM logs every step of its start-up; keep the streamed answer readable unless asked otherwise.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    if args.model is None:
        path = tiny_model_path()  # built into the cache on first use
        # On CPU, size the KV cache: otherwise the CPU backend tries to reserve most of the memory.
        engine = VLLMEngine(str(path), max_model_len=2048, kv_cache_memory_bytes=1 << 30, enforce_eager=True)
    else:
        engine = VLLMEngine(args.model, max_model_len=args.max_model_len)
    print(f"starting vLLM on {engine.model} (a minute or so on a small CPU machine)", flush=True)
    anyio.run(run, engine, args.max_tokens)


# vLLM starts its engine in a new process, which imports this file again: run only as a script.
if __name__ == "__main__":
    main()
