"""The CLI stopped by SIGTERM or Ctrl-C: a clean exit, nothing half-written, a resumable output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CONFIG = """\
engines:
  slow: {type: fake, latency: 0.2}
agents:
  draft: {engine: slow, sampling: {n: 2}}
  final: {role: aggregator, engine: slow}
layers:
  - [draft]
final: final
"""


def start(tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aftlib",
            "run",
            "--config",
            str(tmp_path / "slow.yaml"),
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--concurrency",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_the_run_cleanly_and_a_rerun_finishes_it(
    tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    """SIGTERM / SIGINT mid-run: exit 143 / 130, whole lines only, an interrupted summary.

    A rerun answers the rest, every record exactly once.
    """
    (tmp_path / "slow.yaml").write_text(CONFIG)
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(40))
    )
    out = tmp_path / "out.jsonl"
    process = start(tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 3):
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert f"interrupted by {signum.name}" in stderr
    assert "rerun to resume" in stderr
    assert "Traceback" not in stderr
    text = out.read_text()
    assert text.endswith("\n")
    first = [json.loads(line) for line in text.splitlines()]
    assert all(line["status"] == "done" for line in first)
    assert 3 <= len(first) < 40
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["interrupted"] is True
    assert summary["records"]["done"] == len(first)

    rerun = start(tmp_path)
    _, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == list(range(40))
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["interrupted"] is False
    assert (summary["records"]["resumed"], summary["records"]["done"]) == (len(first), 40 - len(first))


STARTING = "aftlib: interrupted by SIGINT; the engines had not started, nothing was run"


def start_cli(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    """The CLI in its own session and process group, as a terminal runs it (Ctrl-C goes to the group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "aftlib", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for_lines(path: Path, count: int, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} lines in {path}: {process.poll()=}")


def check_clean(stderr: str) -> None:
    for noise in ("Traceback", "leaked", "WARNING", "ERROR", "Error", "Exception"):
        assert noise not in stderr, stderr


def test_ctrl_c_to_the_process_group_is_one_line_and_130(tmp_path: Path) -> None:
    """SIGINT to the whole process group mid-run: exit 130, the summary, then one interrupted line."""
    (tmp_path / "slow.yaml").write_text(CONFIG)
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(40))
    )
    out = tmp_path / "out.jsonl"
    args = (
        "run",
        "--config",
        "slow.yaml",
        "--input",
        "in.jsonl",
        "--output",
        "out.jsonl",
        "--concurrency",
        "2",
    )
    process = start_cli(*args, cwd=tmp_path)
    wait_for_lines(out, 2, process)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    check_clean(stderr)
    lines = stderr.splitlines()
    assert lines[-1] == "aftlib: interrupted by SIGINT; rerun to resume from out.jsonl"
    assert [line for line in lines if line.startswith("aftlib:")] == lines[-1:]
    assert lines[0].startswith("records ")  # the last progress line, then the summary
    assert lines[1].startswith("run ")
    assert lines[1].endswith(" (interrupted)")
    assert not (tmp_path / "out.jsonl.lock").exists()


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    """Two runs on one output: the second exits 2 at once naming the first's pid; no record is doubled."""
    (tmp_path / "slow.yaml").write_text(CONFIG)
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(12))
    )
    out = tmp_path / "out.jsonl"
    args = (
        "run",
        "--config",
        "slow.yaml",
        "--input",
        "in.jsonl",
        "--output",
        "out.jsonl",
        "--concurrency",
        "2",
    )
    first = start_cli(*args, cwd=tmp_path)
    wait_for_lines(out, 1, first)
    second = start_cli(*args, cwd=tmp_path)
    _, stderr = second.communicate(timeout=60)
    assert second.returncode == 2, stderr
    (line,) = stderr.splitlines()
    assert line.startswith("aftlib: error: ")
    assert f"out.jsonl is in use by another aftlib process (pid {first.pid})" in line
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == list(range(12))


def test_ctrl_c_while_an_engine_starts_is_one_line(tmp_path: Path) -> None:
    """Ctrl-C while an engine starts (a server that never answers): exit 130 and exactly one line."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    (tmp_path / "remote.yaml").write_text(
        f"engines:\n  api: {{type: openai, model: m, base_url: 'http://127.0.0.1:{port}/v1'}}\n"
        "agents:\n  a: {engine: api}\n  j: {engine: api, role: aggregator}\nlayers: [[a]]\nfinal: j\n"
    )
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    args = ("run", "--config", "remote.yaml", "--input", "in.jsonl", "--output", "out.jsonl")
    with server:
        process = start_cli(*args, cwd=tmp_path)
        server.settimeout(60)
        connection, _ = server.accept()  # the engine is starting: it asks for the models, never answered
        with connection:
            os.killpg(process.pid, signal.SIGINT)
            _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.splitlines() == [STARTING]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "remote.yaml"]  # nothing written


@pytest.mark.vllm
def test_ctrl_c_while_the_engine_starts_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the group) while vLLM starts: exit 130 and exactly one line, nothing else."""
    process = start_cli("demo", "--output", "out.jsonl", cwd=tmp_path)
    time.sleep(6)  # vLLM is importing or starting its engine
    assert process.poll() is None
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.splitlines() == [STARTING], stderr


@pytest.mark.vllm
def test_ctrl_c_during_a_demo_run_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    """Ctrl-C mid-run on vLLM: exit 130, the summary and one interrupted line; no traceback, no vLLM lines."""
    data = Path(__file__).parent / "data" / "alpaca_eval_20.jsonl"
    process = start_cli("demo", "--input", data, "--output", "out.jsonl", "--concurrency", "2", cwd=tmp_path)
    wait_for_lines(tmp_path / "out.jsonl", 2, process, timeout=300)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    check_clean(stderr)
    lines = stderr.splitlines()
    assert lines[-1] == "aftlib: interrupted by SIGINT; rerun to resume from out.jsonl"
    assert [line for line in lines if line.startswith("aftlib:")] == lines[-1:]
    assert any(line.startswith("engine start: ") for line in lines)
