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
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.to_thread

from aftlib import AftError, presets
from aftlib.engines import Engine, OpenAIEngine, VLLMEngine
from aftlib.testing import build_tiny_model, tiny_model_path

QUESTION = "Name three colours and one thing of each colour."
SERVED_NAME = "tiny-served"
START_TIMEOUT = 300.0


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def vllm_server(model: str, served_name: str) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """Start vLLM's OpenAI-compatible server on a loopback port; yield (process, base URL, log file).

    The server runs in its own process group, which is terminated (then killed, if it lingers) on exit.
    Its log file is removed after a clean exit and kept after an error.
    """
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="vllm-server-", suffix=".log", delete=False)  # noqa: SIM115
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--kv-cache-memory-bytes",
        str(1 << 30),
        "--seed",
        "2",
    ]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield server, f"http://127.0.0.1:{port}/v1", log.name
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
    os.unlink(log.name)  # reached only without an error: otherwise the log stays for a look


def answers(url: str) -> bool:
    """Whether GET {url}/models answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def wait_until_ready(server: subprocess.Popen[bytes], url: str, log: str) -> None:
    """Poll the server's model list until it answers; fail if the server exits or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while not await anyio.to_thread.run_sync(answers, url):
        if server.poll() is not None:
            raise SystemExit(f"the vLLM server exited with status {server.returncode}: see {log}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the vLLM server did not answer within {START_TIMEOUT:.0f} s: see {log}")
        await anyio.sleep(1)


async def run(engines: list[Engine], ready: tuple[subprocess.Popen[bytes], str, str] | None) -> None:
    tiny, wide, remote = engines
    topology = presets.moa([tiny, wide, remote], tiny, layers=3, max_tokens=24)
    # Starting the OpenAI engine asks the server for its models: a wrong URL or model fails there.
    if ready is None:
        # A server you named: check it first, then load the in-process models (entering an engine
        # again only counts the entry, so the topology starts the other two).
        async with remote, topology:
            result = await topology.run(QUESTION)
    else:
        # Load the in-process models while the server starts; then wait until it answers.
        async with tiny, wide:
            await wait_until_ready(*ready)
            async with topology:
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
            remote = OpenAIEngine(args.served_model, args.base_url, name="server")
            anyio.run(run, [tiny, wide, remote], None)
            return
        print("starting a vLLM server and two in-process engines (a few minutes on a small CPU machine)")
        with vllm_server(str(path), SERVED_NAME) as (server, url, log):
            remote = OpenAIEngine(SERVED_NAME, url, name="server")
            anyio.run(run, [tiny, wide, remote], (server, url, log))
    except AftError as exc:  # a server that cannot be reached, a model it does not serve, ...
        raise SystemExit(f"{type(exc).__name__}: {exc}") from None


# vLLM starts its engines in new processes, which import this file again: run only as a script.
if __name__ == "__main__":
    main()
