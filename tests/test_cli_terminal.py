"""The demo on a terminal: a progress bar, aftlib's own lines, and no engine warnings unless asked (-v)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run ``aftlib demo`` with standard error on a pseudo-terminal; the screen's text, colours removed."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "aftlib", "demo", "--limit", "2", "--output", "out.jsonl", "--restart", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=tmp_path,
    )
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the terminal closed with the process
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        process.wait(timeout=300)
    finally:
        os.close(master)
    return process.returncode, _ANSI.sub("", b"".join(chunks).decode(errors="replace"))


def test_the_demo_on_a_terminal_shows_a_bar_and_no_engine_warnings(tiny_model: Path, tmp_path: Path) -> None:
    """Without -v: a rich bar of records (2/2), the summary, and not one vLLM WARNING line."""
    status, screen = on_a_terminal(tmp_path)
    assert status == 0, screen
    assert "━━━━" in screen  # the bar
    assert re.search(r"records .*2/2", screen)
    assert "engine start: " in screen
    assert "generation: " in screen
    assert re.search(r"drafts right \d+/10 \(\d+ %\), answers right \d+/2 \(\d+ %\)", screen)
    assert "toy model" in screen
    assert "WARNING" not in screen
    assert "Traceback" not in screen


def test_with_verbose_the_engine_warnings_appear(tiny_model: Path, tmp_path: Path) -> None:
    """With -v, vLLM's warnings reach the terminal (above the bar)."""
    status, screen = on_a_terminal(tmp_path, "-v")
    assert status == 0, screen
    warnings = [line for line in screen.splitlines() if " WARNING " in line]
    assert warnings, screen
    assert any(re.search(r"\[(vllm|cpu)\.py:\d+\]", line) for line in warnings)
    assert re.search(r"records .*2/2", screen)
