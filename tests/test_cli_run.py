"""``aftlib run`` and ``aftlib demo`` as a new user meets them, on fake engines (no model is started).

Paths checked before any engine starts, outputs that belong to another run, empty inputs, bad lines
printed as ``FILE:LINE: what is wrong``, the summary's timings, the help texts and the verbosity.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from aftlib._io import exclusive_lock
from aftlib.cli import main
from aftlib.cli._common import configure_output

ROOT = Path(__file__).parents[1]
DRY_RUN = ROOT / "examples" / "configs" / "dry_run.yaml"

UNREACHABLE = (
    "engines:\n  api: {type: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}\n"
    "agents:\n  a: {engine: api}\n  j: {engine: api, role: aggregator}\n"
    "layers: [[a]]\nfinal: j\n"
)
"""A topology whose engine cannot start: a command that starts it exits 1 with 'cannot reach'."""


def prompts(path: Path, count: int, start: int = 0) -> Path:
    rows = range(start, start + count)
    path.write_text("".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in rows))
    return path


def unreachable(tmp_path: Path) -> Path:
    config = tmp_path / "remote.yaml"
    config.write_text(UNREACHABLE)
    return config


def run(*args: str | Path) -> int:
    return main(["run", *map(str, args)])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("aftlib:")]


# --- output paths, before any engine starts --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "aft"])
def test_an_output_in_a_missing_folder_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """--output into a missing folder: exit 2 before the engine starts, one line, no folder made."""
    data = prompts(tmp_path / "in.jsonl", 2)
    out = tmp_path / "missing" / "out.jsonl"
    status = run("--config", unreachable(tmp_path), "--input", data, "--output", out, "--format", fmt)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err == f"aftlib: error: {out}: the output's folder {out.parent} does not exist\n"
    assert not out.parent.exists()


@pytest.mark.parametrize("fmt", ["jsonl", "aft"])
def test_an_output_that_is_a_directory_is_refused_before_generating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    """--output DIR: exit 2 with one line before anything runs; nothing is written into or beside it."""
    data = prompts(tmp_path / "in.jsonl", 2)
    out = tmp_path / "answers"
    out.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    status = run("--config", DRY_RUN, "--input", data, "--output", out, "--format", fmt)
    err = capsys.readouterr().err
    assert status == 2, err
    assert err == f"aftlib: error: {out}: the output is a directory, not a file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(out.iterdir()) == []


def test_an_input_that_is_a_directory_is_named_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--input DIR: exit 2, 'is a directory, not a file', before any engine starts."""
    folder = tmp_path / "prompts"
    folder.mkdir()
    status = run("--config", unreachable(tmp_path), "--input", folder, "--output", tmp_path / "o.jsonl")
    err = capsys.readouterr().err
    assert status == 2, err
    (line,) = error_lines(err)
    assert line.startswith(f"aftlib: error: {folder}: ")
    assert line.endswith("is a directory, not a file")


def test_an_output_held_by_another_process_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While another holder has the output's lock, a run exits 2 naming the holder's process id."""
    data = prompts(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    with exclusive_lock(out):
        status = run("--config", unreachable(tmp_path), "--input", data, "--output", out)
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"is in use by another aftlib process (pid {os.getpid()})" in err
    assert not out.exists()


# --- outputs made by another run -------------------------------------------------------------------


def test_resuming_onto_another_input_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output made from one input, rerun with another: exit 2 naming both inputs; nothing is added."""
    first, second = prompts(tmp_path / "a.jsonl", 3), prompts(tmp_path / "b.jsonl", 5, start=100)
    out = tmp_path / "out.jsonl"
    assert run("--config", DRY_RUN, "--input", first, "--output", out) == 0
    made = out.read_text()
    capsys.readouterr()
    assert run("--config", DRY_RUN, "--input", second, "--output", out) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(
        f"aftlib: error: {out}: holds the answers of another run: it was made from input {first}"
    )
    assert f"this run gives input {second}" in line
    assert "--restart" in line
    assert out.read_text() == made


def test_resuming_with_another_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same input with a different topology (another sampling) is refused too, naming both configs."""
    data = prompts(tmp_path / "in.jsonl", 3)
    other = tmp_path / "other.yaml"
    other.write_text(DRY_RUN.read_text().replace("n: 5, temperature: 0.7", "n: 3, temperature: 0.7"))
    out = tmp_path / "out.jsonl"
    assert run("--config", DRY_RUN, "--input", data, "--output", out) == 0
    capsys.readouterr()
    assert run("--config", other, "--input", data, "--output", out) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"config {DRY_RUN}" in line
    assert f"config {other}" in line


def test_restart_starts_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--restart removes the earlier run's output and side files: only the new input's records remain."""
    first, second = prompts(tmp_path / "a.jsonl", 3), prompts(tmp_path / "b.jsonl", 5, start=100)
    out = tmp_path / "out.jsonl"
    assert run("--config", DRY_RUN, "--input", first, "--output", out) == 0
    assert run("--config", DRY_RUN, "--input", second, "--output", out, "--restart") == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == list(range(100, 105))
    origin = json.loads((tmp_path / "out.jsonl.run.json").read_text())
    assert origin["input"] == str(second)
    assert origin["config"] == str(DRY_RUN)
    assert [layer["agents"][0]["sampling"]["n"] for layer in origin["topology"]["layers"]] == [5, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.jsonl",
        "b.jsonl",
        "out.jsonl",
        "out.jsonl.run.json",
        "out.jsonl.summary.json",
    ]


def test_the_same_command_still_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rerunning the same command on the same input resumes (every record already done), exit 0."""
    data = prompts(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    assert run("--config", DRY_RUN, "--input", data, "--output", out) == 0
    capsys.readouterr()
    assert run("--config", DRY_RUN, "--input", data, "--output", out) == 0
    assert "3 read, 0 done, 3 already done" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 3


def test_other_formats_keep_a_journal(tmp_path: Path) -> None:
    """--format aft writes the answers at the end from OUT.journal.jsonl, which a rerun resumes from."""
    data = prompts(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.json"
    assert run("--config", DRY_RUN, "--input", data, "--output", out, "--format", "aft") == 0
    assert len(json.loads(out.read_text())) == 2
    journal = tmp_path / "out.json.journal.jsonl"
    assert [json.loads(line)["status"] for line in journal.read_text().splitlines()] == ["done", "done"]
    assert not (tmp_path / "out.json.progress.jsonl").exists()


# --- empty inputs and bad lines --------------------------------------------------------------------


def test_an_empty_input_says_0_records_without_starting_engines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty input: exit 0 and '0 records'; the engine (unreachable here) is never started."""
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    status = run("--config", unreachable(tmp_path), "--input", data, "--output", tmp_path / "o.jsonl")
    err = capsys.readouterr().err
    assert status == 0, err
    assert error_lines(err) == [f"aftlib: 0 records in {data}; nothing to run"]


def test_limit_0_says_0_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--limit 0: exit 0, '0 records (--limit 0)', no engine started."""
    data = prompts(tmp_path / "in.jsonl", 3)
    status = run("--config", unreachable(tmp_path), "--input", data, "--limit", "0")
    err = capsys.readouterr().err
    assert status == 0, err
    assert error_lines(err) == [f"aftlib: 0 records in {data} (--limit 0); nothing to run"]


def test_bad_lines_are_printed_as_file_line_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad input line is printed as FILE:LINE: what is wrong (as docs/run.md says); the rest runs."""
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "hi"}\nnot json\n{"prompt": ""}\n{"prompt": "there"}\n')
    status = run("--config", DRY_RUN, "--input", data, "--output", tmp_path / "o.jsonl")
    err = capsys.readouterr().err
    assert status == 1
    lines = err.splitlines()
    assert f"{data}:2: not valid JSON: Expecting value (column 1)" in lines
    assert f"{data}:3: 'prompt' must be a non-empty string" in lines
    assert "where=" not in err
    assert "records: 4 read, 2 done, 0 already done, 0 failed, 2 bad lines" in err


# --- what the user sees ----------------------------------------------------------------------------


def test_the_summary_reports_engine_start_and_generation_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary has 'engine start: Xs' and 'generation: Ys', no 'wall time'; stderr ends with a newline."""
    data = prompts(tmp_path / "in.jsonl", 2)
    assert run("--config", DRY_RUN, "--input", data, "--output", tmp_path / "o.jsonl") == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert any(line.startswith("engine start: ") and line.endswith("s") for line in lines)
    assert any(line.startswith("generation: ") and line.endswith("s") for line in lines)
    assert "wall time" not in err
    assert lines[0].startswith("records 2/2 | ")  # the last progress line, whole
    assert err.endswith("\n")


def test_run_help_has_a_description_and_demo_help_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    """`run --help` describes the command; `demo --help` is its own text and has no --config."""
    assert main(["run", "--help"]) == 0
    run_help = capsys.readouterr().out
    assert "Run a topology over a dataset" in run_help
    assert "--config FILE" in run_help
    assert main(["demo", "--help"]) == 0
    demo_help = capsys.readouterr().out
    assert "shipped arithmetic AFT model" in demo_help
    assert "--config FILE" not in demo_help
    assert demo_help != run_help


def test_demo_does_not_accept_config(capsys: pytest.CaptureFixture[str]) -> None:
    """`aftlib demo --config X` is a usage error (exit 2), not a silent run of X."""
    assert main(["demo", "--config", "x.yaml"]) == 2
    assert "No such option '--config'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "level"),
    [([], "ERROR"), (["-v"], "WARNING"), (["-vv"], "INFO"), (["-v", "-v", "-v"], "DEBUG")],
)
def test_verbosity_sets_the_engine_log_level(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], level: str
) -> None:
    """The vLLM log level: errors only by default, warnings with -v, info with -vv (read at import)."""
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    configure_output(len(argv) and sum(a.count("v") for a in argv))
    assert os.environ["VLLM_LOGGING_LEVEL"] == level


def test_a_level_set_in_the_environment_is_kept_without_v(monkeypatch: pytest.MonkeyPatch) -> None:
    """VLLM_LOGGING_LEVEL=INFO in the environment stays INFO without -v; -v overrides it."""
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")
    configure_output(0)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO"
    configure_output(1)
    assert os.environ["VLLM_LOGGING_LEVEL"] == "WARNING"


def test_v_is_accepted_before_and_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`aftlib -v run` and `aftlib run -v` both work (a global option); -v shows aftlib's info lines."""
    data = prompts(tmp_path / "in.jsonl", 1)
    assert main(["-v", "run", "--config", str(DRY_RUN), "--input", str(data)]) == 0
    assert "run started" in capsys.readouterr().err
    assert main(["run", "-v", "--config", str(DRY_RUN), "--input", str(data)]) == 0
    assert "run started" in capsys.readouterr().err
    assert main(["run", "--config", str(DRY_RUN), "--input", str(data)]) == 0
    assert "run started" not in capsys.readouterr().err


@pytest.mark.parametrize("made", [False, True])
def test_a_missing_model_folder_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], made: bool
) -> None:
    """model_name a folder that is missing, or empty: exit 2 with one line 'no model at PATH', fast."""
    from aftlib.engines import _vllm

    if "config.json" not in Path(_vllm.__file__).read_text():
        pytest.skip("VLLMEngine does not check the model folder yet")
    missing = tmp_path / "no-such-model"
    if made:
        missing.mkdir()
    config = tmp_path / "aft.yaml"
    config.write_text(
        f"model_name: {missing}\ngeneration_params: {{temperature: 0.7, top_p: 0.9, max_tokens: 8, n: 2,"
        " final_layer_temperature: 0.7, final_layer_top_p: 1.0}\nnum_aggregation: 1\n"
    )
    data = prompts(tmp_path / "in.jsonl", 1)
    status = run("--config", config, "--input", data, "--output", tmp_path / "o.jsonl")
    err = capsys.readouterr().err
    assert status == 2, err
    (line,) = error_lines(err)
    assert f"no model at {missing} (" in line
    assert line.startswith("aftlib: error: ")
    if made:
        assert line.endswith("(no config.json)")
    assert "Traceback" not in err
