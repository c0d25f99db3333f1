"""``aftlib data`` outputs: checked before anything runs, and one process at a time per dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aftlib._io import exclusive_lock
from aftlib.cli import main

UF = Path(__file__).parent / "data" / "ultrafeedback_5.jsonl"


def test_a_dataset_held_by_another_process_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While another holder has the dataset's lock, `aftlib data` exits 2 naming its process id."""
    out = tmp_path / "agg.jsonl"
    with exclusive_lock(out):
        status = main(["data", "off-policy", "--input", str(UF), "--output", str(out), "--k", "2"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"is in use by another aftlib process (pid {os.getpid()})" in err
    assert not out.exists()


def test_a_dataset_in_a_missing_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--output into a folder that does not exist: exit 2, one line, no folder made."""
    out = tmp_path / "missing" / "agg.jsonl"
    status = main(["data", "off-policy", "--input", str(UF), "--output", str(out), "--k", "2"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err == f"aftlib: error: {out}: the output's folder {out.parent} does not exist\n"
    assert not out.parent.exists()


def test_on_policy_needs_exactly_one_drafter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """on-policy without --config or --model, or with both: a usage error, exit 2."""
    args = ["data", "on-policy", "--input", str(UF), "--output", str(tmp_path / "o.jsonl")]
    assert main(args) == 2
    assert "one of the options --config or --model is required" in capsys.readouterr().err
    assert main([*args, "--config", "c.yaml", "--model", "m"]) == 2
    assert "--config and --model cannot be used together" in capsys.readouterr().err


def test_the_lock_is_released_after_a_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished build leaves no lock file, and a second build of the same dataset runs."""
    out = tmp_path / "agg.jsonl"
    args = ["data", "off-policy", "--input", str(UF), "--output", str(out), "--k", "2"]
    assert main(args) == 0, capsys.readouterr().err
    assert not (tmp_path / "agg.jsonl.lock").exists()
    assert main(args) == 0
