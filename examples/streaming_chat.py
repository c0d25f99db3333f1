r"""A multi-turn chat on vLLM that streams each propose-and-aggregate answer token by token.

Each line read from standard input is a user turn; the conversation so far (every user turn and every
answer) goes to the topology with it, so later turns see the earlier ones. An empty line or the end of
the input ends the chat. Only the final answer is printed as it streams (``TokenDelta.is_answer``); the
drafts and aggregations before it run unseen. ``--preset aft`` (the default) runs ``presets.aft`` with
3 drafts; ``--preset self_moa`` runs ``presets.self_moa`` with 4 drafts.

By default the model is the tiny random-weight Llama of ``aftlib.testing``, built on first use and run
on CPU: its text is meaningless, but every step is real. Pass ``--model`` to chat with a real model.

Run it with::

    python examples/streaming_chat.py
    printf 'Hello\nAnd then?\n' | python examples/streaming_chat.py --preset self_moa
    python examples/streaming_chat.py --model linzw/Llama-AFT-On-Policy --max-tokens 1024
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
import anyio.to_thread

from aftlib import AnswerDone, Result, TokenDelta, Topology, presets
from aftlib.engines import VLLMEngine
from aftlib.testing import tiny_model_path


def build_topology(preset: str, engine: VLLMEngine, max_tokens: int) -> Topology:
    if preset == "self_moa":
        return presets.self_moa(engine, 4, max_tokens=max_tokens)
    return presets.aft(engine, n=3, num_aggregation=2, max_tokens=max_tokens)


async def read_turn(interactive: bool) -> str:
    """The next user turn; an empty string at an empty line or the end of the input."""
    if interactive:
        print("you> ", end="", flush=True)
    line = await anyio.to_thread.run_sync(sys.stdin.readline)  # keep the event loop free while waiting
    return line.strip()


async def chat(engine: VLLMEngine, preset: str, max_tokens: int) -> None:
    interactive = sys.stdin.isatty()
    conversation: list[dict[str, str]] = []
    async with engine:
        topology = build_topology(preset, engine, max_tokens)
        if interactive:
            print("ready: type a message, or an empty line to quit", flush=True)
        while turn := await read_turn(interactive):
            conversation.append({"role": "user", "content": turn})
            result: Result | None = None
            print("assistant> ", end="", flush=True)
            # The block owns the run: leaving it early (an error, Ctrl-C) cancels it and aborts its requests.
            async with topology.stream(conversation) as events:
                async for event in events:
                    if isinstance(event, TokenDelta) and event.is_answer:
                        print(event.text, end="", flush=True)
                    elif isinstance(event, AnswerDone):
                        result = event.result
            assert result is not None
            print()
            print(
                f"  [{result.usage.requests} requests, {result.usage.completion_tokens} tokens generated, "
                f"{result.elapsed:.1f} s]",
                flush=True,
            )
            # The answer joins the conversation, so the next turn is asked in its context.
            conversation.append({"role": "assistant", "content": result.text})
    print(f"bye ({len(conversation) // 2} turns)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", choices=["aft", "self_moa"], default="aft", help="the topology (default aft)"
    )
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
        help="the context length for --model; it must hold the drafts and the conversation (default 8192)",
    )
    args = parser.parse_args()
    # vLLM logs every step of its start-up; keep the chat readable unless asked otherwise.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    if args.model is None:
        path = tiny_model_path()  # built into the cache on first use
        # On CPU, size the KV cache: otherwise the CPU backend tries to reserve most of the memory.
        engine = VLLMEngine(str(path), max_model_len=2048, kv_cache_memory_bytes=1 << 30, enforce_eager=True)
    else:
        engine = VLLMEngine(args.model, max_model_len=args.max_model_len)
    print(f"starting vLLM on {engine.model} (a minute or so on a small CPU machine)", file=sys.stderr)
    anyio.run(chat, engine, args.preset, args.max_tokens)


# vLLM starts its engine in a new process, which imports this file again: run only as a script.
if __name__ == "__main__":
    main()
