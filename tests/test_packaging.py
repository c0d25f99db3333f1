"""The built wheel ships the prompt templates and sample data, and finds them after a plain install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_templates_and_finds_them_when_installed(tmp_path: Path) -> None:
    """The wheel ships every template and the playground; installed, it renders the AFT templates."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path,
            ROOT,
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("aftlib-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = sorted(p.stem for p in (ROOT / "prompts").glob("*.j2"))
    assert {"aft_propose", "aft_aggregate", "moa_aggregate", "passthrough", "alpaca_eval_clf"} <= set(
        templates
    )
    for name in templates:  # every template ships, the judges' and the strategies' too
        assert f"aftlib/prompts/{name}.j2" in names
    assert {"aftlib/data/sample_prompts.jsonl", "aftlib/data/demo.yaml", "aftlib/py.typed"} <= names
    playground = {f"aftlib/serve/_playground/{f}" for f in ("index.html", "app.css", "app.js")}
    assert playground <= names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel], check=True
    )
    probe = (
        "import aftlib, aftlib._templates as t; "
        "print(aftlib.__file__); print(t.prompts_dir()); "
        "print(repr(t.PromptTemplate('aft_aggregate').render(system=None, references=['a'])[-31:]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(target))
    assert out[1].startswith(str(target))
    assert out[2] == repr("    Responses from models:\n1. a")
