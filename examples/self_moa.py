"""Self-MoA and Self-MoA-Seq on one vLLM engine: k drafts from one model, then one model aggregates them.

``presets.self_moa`` samples ``k`` drafts in one request and aggregates all of them at once with the
Together MoA prompt. ``presets.self_moa_seq`` samples the same way, then aggregates ``window`` drafts at a
time: the first request reads drafts 1..window, each later one the synthesis so far and the next
``window - 1`` drafts, so the aggregation prompt never holds more than ``window`` texts. Both topologies
share one engine, started once. For each, the script prints the drafts (shortened), every aggregation
step, the answer and the usage.

By default the model is the tiny random-weight Llama of ``aftlib.testing``, built on first use and run
on CPU: its text is meaningless, but every step is real. Pass ``--model`` to run a real model.

Run it with::

    python examples/self_moa.py
    python examples/self_moa.py -k 6 --window 3
    python examples/self_moa.py --model Qwen/Qwen2.5-7B-Instruct --max-tokens 512
"""

from __future__ import annotations

import argparse
import os

import anyio

from aftlib import AnswerDone, CandidateDone, Result, Topology, presets
from aftlib.engines import VLLMEngine
from aftlib.testing import tiny_model_path

QUESTION = "Give three tips for writing clear documentation."


def short(text: str, width: int = 60) -> str:
    """One line of at most ``width`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 3] + "..."


async def show(title: str, topology: Topology) -> None:
    """Run ``topology`` on the question and print its drafts, aggregation steps, answer and usage."""
    print(f"== {title}")
    steps: list[str] = []  # the aggregator's candidates: Self-MoA-Seq makes one per window
    result: Result | None = None
    async with topology.stream(QUESTION) as events:  # the block owns the run and its requests
        async for event in events:
            if isinstance(event, CandidateDone) and event.candidate.layer == len(topology.layers):
                steps.append(event.candidate.text)
            elif isinstance(event, AnswerDone):
                result = event.result
    assert result is not None
    for draft in result.layers[0].candidates:
        print(f"  draft {draft.index + 1} ({draft.completion_tokens:3d} tokens): {short(draft.text)}")
    for number, text in enumerate(steps[:-1], start=1):
        print(f"  synthesis {number}:          {short(text)}")
    print(f"  answer:               {short(result.text, 200)}")
    usage = result.usage
    print(
        f"  usage: {usage.requests} requests, {usage.prompt_tokens} prompt tokens, "
        f"{usage.completion_tokens} completion tokens, {result.elapsed:.1f} s"
    )


async def run(engine: VLLMEngine, k: int, window: int, max_tokens: int) -> None:
    self_moa = presets.self_moa(engine, k, max_tokens=max_tokens)
    self_moa_seq = presets.self_moa_seq(engine, k, window, max_tokens=max_tokens)
    async with engine:  # one engine, started once, serves both topologies
        await show(f"Self-MoA: {k} drafts, aggregated at once", self_moa)
        await show(f"Self-MoA-Seq: {k} drafts, aggregated {window} at a time", self_moa_seq)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        metavar="PATH",
        help="a model folder, or a hub name already in the local cache (default: the tiny test model)",
    )
    parser.add_argument("-k", type=int, default=5, help="drafts per query (default 5)")
    parser.add_argument("--window", type=int, default=3, help="texts per Self-MoA-Seq request (default 3)")
    parser.add_argument("--max-tokens", type=int, default=32, help="the most tokens per sample (default 32)")
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=8192,
        help="the context length for --model; it must hold k drafts and the answer (default 8192)",
    )
    args = parser.parse_args()
    # vLLM logs every step of its start-up; keep the output readable unless asked otherwise.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    if args.model is None:
        path = tiny_model_path()  # built into the cache on first use
        # On CPU, size the KV cache: otherwise the CPU backend tries to reserve most of the memory.
        engine = VLLMEngine(str(path), max_model_len=2048, kv_cache_memory_bytes=1 << 30, enforce_eager=True)
    else:
        engine = VLLMEngine(args.model, max_model_len=args.max_model_len)
    print(f"starting vLLM on {engine.model} (a minute or so on a small CPU machine)", flush=True)
    anyio.run(run, engine, args.k, args.window, args.max_tokens)


# vLLM starts its engine in a new process, which imports this file again: run only as a script.
if __name__ == "__main__":
    main()
