"""A real vLLM OpenAI-compatible server on a loopback port, for tests and examples."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .._errors import EngineError

__all__ = ("vllm_server",)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def vllm_server(
    model: str | os.PathLike[str],
    *,
    served_model_name: str,
    max_model_len: int = 2048,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 300.0,
) -> Iterator[str]:
    """Run ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 and yield its base URL.

    The server gets a free port, ``--enforce-eager`` and a 1 GiB KV cache (enough for small models on
    CPU); its output goes to a log file named in any error. It is stopped (its whole process group) on
    exit.

    Args:
        model: The model folder.
        served_model_name: The name clients ask for.
        max_model_len: The context length.
        extra_args: More command-line arguments for the server.
        startup_timeout: Seconds to wait for ``/v1/models`` to answer.

    Yields:
        The base URL, ``http://127.0.0.1:PORT/v1``.

    Raises:
        EngineError: The server exited or did not answer in time.
    """
    port = _free_port()
    log_path = Path(tempfile.mkstemp(prefix=f"aftlib-vllm-server-{port}-", suffix=".log")[1])
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", served_model_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", str(max_model_len),
        "--kv-cache-memory-bytes", str(1 << 30), *extra_args,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if server.poll() is not None:
                    raise EngineError(
                        f"the vLLM server exited with status {server.returncode}; see {log_path}"
                    )
                try:
                    with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise EngineError(
                        f"the vLLM server did not answer in {startup_timeout:g} s; see {log_path}"
                    )
                time.sleep(1)
            yield url
            log_path.unlink(missing_ok=True)  # kept only when something went wrong
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
