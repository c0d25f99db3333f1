"""Mixture-of-Agents over three different engines: two in-process vLLM models and an OpenAI-compatible server.

``presets.moa([e1, e2, remote], e1, layers=3)`` has three proposers answer the question, answer it again
over each other's drafts (the Together MoA aggregation prompt, drafts in proposer order), and then ``e1``
writes the final answer over the second layer: 3 + 3 + 1 requests. The proposers are

- ``tiny``: the tiny random-weight Llama of ``aftlib.testing`` (built into the cache on first use),
- ``tiny-wide``: a second, wider tiny Llama with other random weights, built next to it,
- ``server``: the tiny model behind vLLM's OpenAI-compatible server, which this script starts on a free
  loopback port and stops at the end, or any server you name with ``--base-url`` and ``--served-model``.

Everything runs on CPU; the text is meaningless, since the weights are random, but every request is
real. Each in-process engine gets a 1 GiB KV cache, and so does the server it starts.

Run it with::

    python examples/moa_mixed.py
    python examples/moa_mixed.py --base-url http://127.0.0.1:8000/v1 --served-model my-model
"""

from __future__ import annotations

import argparse
import os

import anyio

from aftlib import AftError, presets
from aftlib.engines import Engine, OpenAIEngine, VLLMEngine
from aftlib.testing import build_tiny_model, tiny_model_path, vllm_server

QUESTION = "Name three colours and one thing of each colour."
SERVED_NAME = "tiny-served"


async def run(engines: list[Engine]) -> None:
    tiny, wide, remote = engines
    topology = presets.moa([tiny, wide, remote], tiny, layers=3, max_tokens=24)
    # Starting the OpenAI engine asks the server for its models, so a wrong URL or model fails first,
    # before the in-process models load (entering an engine again only counts the entry).
    async with remote, topology:
        result = await topology.run(QUESTION)

    engine_of = {f"proposer{i + 1}": e.name for i, e in enumerate(engines)}
    for layer in result.layers:
        print(f"layer {layer.index + 1} ({layer.elapsed:.1f} s)")
        for candidate in layer.candidates:
            text = " ".join(candidate.text.split())[:60]
            print(f"  {candidate.agent} ({engine_of[candidate.agent]:>9}): {text!r}")
    print(f"answer ({tiny.name}): {result.text!r}")
    usage = result.usage
    print(
        f"usage: {usage.requests} requests, {usage.prompt_tokens} prompt tokens, "
        f"{usage.completion_tokens} completion tokens, {result.elapsed:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint to use instead of starting one")
    parser.add_argument("--served-model", help="the model name that --base-url serves")
    args = parser.parse_args()
    if (args.base_url is None) != (args.served_model is None):
        parser.error("--base-url and --served-model go together")
    # vLLM logs every step of its start-up; keep the output readable unless asked otherwise.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    path = tiny_model_path()  # built into the cache on first use
    wide_path = build_tiny_model(path.parent / "tiny-wide", seed=7, hidden_size=192)  # built once too
    common = {"max_model_len": 2048, "enforce_eager": True}  # on CPU each gets a 1 GiB KV cache
    # A seed per engine (the server gets 2): random-weight models predict nearly uniform distributions,
    # so engines sharing a seed would sample nearly the same tokens from the same prompt.
    tiny = VLLMEngine(str(path), name="tiny", seed=0, **common)
    wide = VLLMEngine(str(wide_path), name="tiny-wide", seed=1, **common)

    try:
        if args.base_url is not None:
            anyio.run(run, [tiny, wide, OpenAIEngine(args.served_model, args.base_url, name="server")])
            return
        print("starting a vLLM server, then two in-process engines (a few minutes on a small CPU machine)")
        with vllm_server(path, served_model_name=SERVED_NAME, extra_args=("--seed", "2")) as url:
            anyio.run(run, [tiny, wide, OpenAIEngine(SERVED_NAME, url, name="server")])
    except AftError as exc:  # a server that cannot be reached, a model it does not serve, ...
        raise SystemExit(f"{type(exc).__name__}: {exc}") from None


# vLLM starts its engines in new processes, which import this file again: run only as a script.
if __name__ == "__main__":
    main()
