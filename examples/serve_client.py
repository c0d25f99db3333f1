"""Ask a topology served by ``aftlib serve`` through the openai SDK: a plain answer, then a streamed one.

The streamed request also asks for the draft events (``stream_options.aftlib_events``): chunks with an
``aftlib`` field and no choices, which standard clients ignore. This script prints the answer as it
streams and one line per layer when the layer is done.

Start a server first; the dry-run topology needs no model or GPU::

    aftlib serve --config examples/configs/dry_run.yaml --port 8000
    python examples/serve_client.py --model dry_run "What is 6 x 7?"

With API keys (``aftlib serve --api-key-env AFTLIB_API_KEYS``), pass one with ``--api-key`` or the
``OPENAI_API_KEY`` environment variable.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from openai import OpenAI


def events(chunk: Any) -> dict[str, Any] | None:
    """The ``aftlib`` extension event of a chunk, or None for a standard chunk."""
    return (chunk.model_extra or {}).get("aftlib")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", nargs="?", default="Name three uses of a paperclip.")
    parser.add_argument("--base-url", default="http://localhost:8000/v1")
    parser.add_argument("--model", help="a model of GET /v1/models (default: the first listed)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    args = parser.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = args.model or client.models.list().data[0].id
    messages = [{"role": "user", "content": args.prompt}]

    reply = client.chat.completions.create(model=model, messages=messages)
    usage = reply.usage
    print(f"[{model}] {reply.choices[0].message.content}")
    if usage is not None:  # every layer's tokens, then the breakdown by layer
        print(f"usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens")
        for layer in (usage.model_extra or {}).get("aftlib_layers", []):
            print(f"  layer {layer['layer']}: {layer['prompt_tokens']} + {layer['completion_tokens']}")

    print("\nstreamed:")
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True, "aftlib_events": True},
    )
    for chunk in stream:
        event = events(chunk)
        if event is not None:
            if event["type"] == "layer":
                tokens = event["usage"]["completion_tokens"]
                print(f"  (layer {event['layer']}: {event['candidates']} drafts, {tokens} tokens)")
        elif chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        elif chunk.usage is not None:
            print(f"\nusage: {chunk.usage.total_tokens} tokens in all")


if __name__ == "__main__":
    main()
