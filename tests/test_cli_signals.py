"""The CLI stopped by SIGTERM or Ctrl-C: a clean exit, nothing half-written, a resumable output."""

from __future__ import annotations

import json
import os
import signal
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
