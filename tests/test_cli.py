"""The command line's handling of usage mistakes, and its progress counters (no engine is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aftlib import RunStats
from aftlib.cli import main


def test_missing_config_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config that does not exist: exit 2 with one clear line, no traceback."""
    status = main(["run", "--config", str(tmp_path / "nope.yaml"), "--input", str(tmp_path / "in.jsonl")])
    err = capsys.readouterr().err
    assert status == 2
    assert "aftlib: error:" in err
    assert "nope.yaml: cannot read the config" in err
    assert "Traceback" not in err


def test_bad_config_key_names_the_key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An ill-typed key in the YAML: exit 2, the message names the file and the key path."""
    config = tmp_path / "aft.yaml"
    config.write_text(
        "model_name: m\ngeneration_params: {temperature: 0.7, top_p: 0.9, max_tokens: 8, n: many,"
        " final_layer_temperature: 0.7, final_layer_top_p: 1.0}\nnum_aggregation: 2\n"
    )
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "aft.yaml: generation_params.n: expected int" in err


def test_missing_input_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An input file that does not exist: exit 2 before any engine starts."""
    config = tmp_path / "aft.yaml"
    config.write_text(
        "model_name: m\ngeneration_params: {temperature: 0.7, top_p: 0.9, max_tokens: 8, n: 2,"
        " final_layer_temperature: 0.7, final_layer_top_p: 1.0}\nnum_aggregation: 2\n"
    )
    assert main(["run", "--config", str(config), "--input", str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl: no such input file" in capsys.readouterr().err


def test_unknown_format_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """--format accepts only the known formats: a usage error, exit 2, naming the choices."""
    assert main(["run", "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for '--format': 'csv' is not one of 'jsonl', 'aft', 'alpaca_eval'" in err
    assert "Traceback" not in err


def test_progress_line_shows_done_rate_and_eta() -> None:
    """The progress line counts finished records of the total, token rate and the time left."""
    stats = RunStats(total=10, done=3, failed=1, resumed=2, completion_tokens=500)
    stats.started -= 10
    line = stats.line()
    assert line.startswith("records 6/10 (1 failed) | 50 tok/s")
    assert "ETA 10s" in line


def test_bad_lines_count_as_finished_in_the_progress() -> None:
    """Bad input lines are part of the total, so a run with bad lines still ends at total/total."""
    stats = RunStats(total=4, done=3, bad=1)
    assert stats.finished == 4
    assert stats.line().startswith("records 4/4 (1 bad)")
    assert stats.eta == 0


def test_an_engine_that_cannot_start_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreachable server at engine start: exit 1 with the engine's error, not an exception group."""
    config = tmp_path / "remote.yaml"
    config.write_text(
        "engines:\n  api: {type: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}\n"
        "agents:\n  a: {engine: api}\n  j: {engine: api, role: aggregator}\n"
        "layers: [[a]]\nfinal: j\n"
    )
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    status = main(
        ["run", "--config", str(config), "--input", str(data), "--output", str(tmp_path / "o.jsonl")]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "aftlib: failed: engine 'api' (http://127.0.0.1:9/v1): cannot reach the server" in err
    assert "Traceback" not in err
    assert "ExceptionGroup" not in err
