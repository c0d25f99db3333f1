"""The example scripts run as a user would run them, on CPU with the tiny model."""

from __future__ import annotations

import json
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


def test_ray_dataset_example_answers_through_a_vllm_server() -> None:
    """examples/ray_dataset.py: two Ray actors answer the 8 sample prompts through a tiny vLLM server."""
    done = run_example("ray_dataset.py")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "records: 8, done: 8, failed: 0" in done.stdout
    assert done.stdout.count("    2 requests, ") == 8  # two drafts in one request, then the answer


def test_ray_dataset_example_dry_run_writes_json_lines(tmp_path: Path) -> None:
    """examples/ray_dataset.py --dry-run --output DIR: a fake engine's 8 answers in JSON-line files."""
    folder = tmp_path / "answers"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "ray_dataset.py"), "--dry-run", "--output", str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "records: 8, done: 8, failed: 0" in done.stdout
    lines = [line for path in folder.glob("*.json") for line in path.read_text("utf-8").splitlines()]
    assert sorted(json.loads(line)["id"] for line in lines) == [f"sample-{i}" for i in range(1, 9)]


def test_confidence_drafting_example_dry_run() -> None:
    """examples/confidence_drafting.py --dry-run: three methods answer; adaptive sampling saves tokens."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "confidence_drafting.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    methods = ("vote", "adaptive")
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if line.startswith(methods))
    assert lines["vote@8"].endswith(" 0 saved")
    assert not lines["adaptive (waves of 2 until 2 agree)"].endswith(" 0 saved")


def test_agent_tools_example_dry_run() -> None:
    """examples/agent_tools.py --dry-run: the served topology calls submit, then answers the tool's result."""
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "agent_tools.py"),
            "--dry-run",
            "Ana has 12 apples and buys 30 more?",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "finish_reason: tool_calls" in lines
    assert "call: submit({'answer': 42})" in lines
    assert lines[-1] == "after the tool: 'Submitted: recorded 42'"
