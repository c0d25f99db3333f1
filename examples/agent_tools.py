"""A topology as a model that calls tools: served by ``aftlib serve``, asked through the openai SDK.

The topology drafts five answers and aggregates them (self-MoA) with the shipped ``arithmetic-tools``
model, which answers a problem with its working, then a call of the ``submit`` tool. The script serves
the topology on a loopback port, asks one problem with ``submit`` offered, runs the tool (it records the
answer) and sends the result back, as an agent framework would. The toy model was never trained on
what follows a tool's result, so its last text is noise; the call before it is the point. ``--dry-run``
runs the same round trip on a scripted FakeEngine, in a second, with no model.

    python examples/agent_tools.py
    python examples/agent_tools.py --dry-run "Ana has 12 apples and buys 30 more. How many now?"
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from openai import OpenAI

from aftlib import Aggregator, ChatRequest, Proposer, SamplingParams, Topology
from aftlib.engines import Engine, VLLMEngine
from aftlib.serve import create_app
from aftlib.testing import FakeEngine, arithmetic_model
from aftlib.testing.rebuild import SUBMIT

QUESTION = "Mia has 29 eggs. Mia buys 35 more and then wins 37 more. How many eggs does Mia have now?"


def scripted(request: ChatRequest, index: int) -> str:
    """A fake model: it works the sum of the question's numbers, then calls ``submit`` with it."""
    if request.messages[-1].role == "tool":
        return f"Submitted: {request.messages[-1].content}"
    numbers = [int(w) for w in request.messages[-1].content.replace("?", " ").split() if w.isdigit()]
    total = sum(numbers)
    call = json.dumps({"name": "submit", "arguments": {"answer": total}})
    return f"{' + '.join(map(str, numbers))} = {total}. <tool_call>{call}</tool_call>"


def topology(engine: Engine) -> Topology:
    """Five seeded drafts, then the aggregator reads them (the AFT recipe's self-MoA)."""
    drafts = Proposer(engine, name="drafts", sampling=SamplingParams(n=5, max_tokens=96, seed=0))
    return Topology([drafts], Aggregator(engine, sampling=SamplingParams(max_tokens=96, seed=1)))


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--dry-run", action="store_true", help="a scripted FakeEngine instead of the model")
    args = parser.parse_args()
    engine: Engine = (
        FakeEngine(handler=scripted)
        if args.dry_run
        else VLLMEngine(str(arithmetic_model("tools")), max_model_len=1024, enforce_eager=True, seed=0)
    )
    with served(create_app({"self-moa": topology(engine)})) as url:
        client = OpenAI(base_url=url, api_key="none")
        messages: list[Any] = [{"role": "user", "content": args.question}]
        reply = client.chat.completions.create(model="self-moa", messages=messages, tools=[SUBMIT])
        message = reply.choices[0].message
        print(f"finish_reason: {reply.choices[0].finish_reason}")
        print(f"text: {message.content!r}")
        for call in message.tool_calls or []:
            arguments = json.loads(call.function.arguments)
            print(f"call: {call.function.name}({arguments})")
            messages += [
                message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": f"recorded {arguments['answer']}"},
            ]
        if message.tool_calls:  # the tool's result goes back; the topology answers again
            final = client.chat.completions.create(
                model="self-moa", messages=messages, tools=[SUBMIT], tool_choice="none", max_tokens=32
            )
            print(f"after the tool: {final.choices[0].message.content!r}")


if __name__ == "__main__":
    main()
