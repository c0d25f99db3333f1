"""The example scripts run as a user would run them, on CPU with the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.vllm


def run_example(name: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)], input=stdin, capture_output=True, text=True, timeout=600
    )


def test_aft_self_aggregation_example() -> None:
    """examples/aft_self_aggregation.py streams an answer and reports 3 + 3 + 1 candidates."""
    done = run_example("aft_self_aggregation.py")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "answer:" in done.stdout
    assert "[3, 3] + 1 final answer" in done.stdout


def test_streaming_chat_example_answers_each_turn() -> None:
    """examples/streaming_chat.py keeps a two-turn conversation from stdin and answers both turns."""
    done = run_example("streaming_chat.py", "Hello\nAnd then?\n")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("assistant>") == 2


def test_aft_finetune_example_trains_and_serves() -> None:
    """examples/aft_finetune.py builds data, trains LoRA; the served model answers in the trained style."""
    done = run_example("aft_finetune.py")
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [float(line.split("loss")[1]) for line in done.stdout.splitlines() if line.startswith("  step ")]
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 1.0
    assert "(merged)" in done.stdout
    assert "answer: In short:" in done.stdout


def test_strategies_mix_example_dry_run() -> None:
    """examples/strategies_mix.py --dry-run: MoA drafts, an RSA step and a vote; 6 requests per query."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "strategies_mix.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "votes:" in done.stdout
    assert "answer:" in done.stdout
    assert "requests: 6" in done.stdout
