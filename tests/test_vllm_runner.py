"""`aftlib run` and the runner on the real vLLM engine (CPU build) with the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aftlib import Runner, presets
from aftlib.engines import VLLMEngine

DATA = Path(__file__).parent / "data"

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_mt_bench_file_gives_two_turns_per_answer(vllm_engine: VLLMEngine, tmp_path: Path) -> None:
    """The MT-Bench questions run turn by turn on vLLM; --format mt_bench writes both turns' answers."""
    out = tmp_path / "answers.jsonl"
    topology = presets.aft(vllm_engine, n=2, max_tokens=16, seed=0)
    summary = await Runner(
        topology, DATA / "mt_bench_2.jsonl", out, format="mt_bench", generator="tiny"
    ).run()
    assert summary.ok
    rows = read_jsonl(out)
    assert [r["question_id"] for r in rows] == [81, 82]
    for row in rows:
        (choice,) = row["choices"]  # type: ignore[misc]
        assert len(choice["turns"]) == 2
        assert all(isinstance(t, str) and t for t in choice["turns"])


async def test_malformed_line_three_is_named_and_the_rest_run(
    vllm_engine: VLLMEngine, tmp_path: Path
) -> None:
    """A broken line 3 is reported as line 3 in the errors file; the other records are answered."""
    lines = (DATA / "alpaca_eval_20.jsonl").read_text().splitlines()[:5]
    lines[2] = lines[2][:-5]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    summary = await Runner(presets.aft(vllm_engine, n=2, max_tokens=8), source, out).run()
    assert (summary.done, summary.bad, summary.ok) == (4, 1, False)
    assert sorted(r["id"] for r in read_jsonl(out)) == [1, 2, 4, 5]  # type: ignore[type-var]
    (error,) = read_jsonl(summary.errors)  # type: ignore[arg-type]
    assert error["line"] == 3


async def test_drafts_too_long_for_the_context_are_cut(vllm_engine: VLLMEngine) -> None:
    """n=4 drafts of up to 600 tokens cannot all fit a 2048 context: they are cut and the run completes."""
    topology = presets.aft(vllm_engine, n=4, num_aggregation=3, max_tokens=600, seed=5)
    result = await topology.run("Write a long essay.")
    cuts = [c.cuts for layer in result.layers[1:] for c in layer.candidates] + [result.answer.cuts]
    assert any(cuts), "expected the aggregation prompts to need cutting"
    window = vllm_engine.max_model_len
    for layer in result.layers:
        for candidate in layer.candidates:
            assert candidate.prompt_tokens + candidate.completion_tokens <= window


def cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aftlib", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,  # type: ignore[call-overload]
    )


REFERENCE_YAML = """\
model_name: {model}
generation_params:
    temperature: 0.7
    top_p: 0.95
    max_tokens: 96
    n: 5
    final_layer_temperature: 0.7
    final_layer_top_p: 1.0
vllm_seed: 2025
num_aggregation: 2
"""


def test_cli_killed_with_sigkill_resumes_every_record_once(tiny_model: Path, tmp_path: Path) -> None:
    """`aftlib run` with the reference YAML: SIGKILL mid-run, rerun, and all 16 records are there once."""
    config = tmp_path / "default.yaml"
    config.write_text(REFERENCE_YAML.format(model=tiny_model))
    out = tmp_path / "out.jsonl"
    args = ("--config", str(config), "--input", str(DATA / "alpaca_eval_20.jsonl"), "--output", str(out))
    args += ("--limit", "16", "--concurrency", "4")

    first = cli(*args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 3:
            break
        time.sleep(0.2)
    assert first.poll() is None, f"the first run ended early: {first.communicate()[1][-2000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    partial = out.read_text().count("\n")
    assert 3 <= partial < 16

    second = cli(*args)
    _, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-3000:]
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == list(range(1, 17))  # type: ignore[type-var]
    assert all(r["status"] == "done" and isinstance(r["response"], str) for r in rows)
    assert "already done" in stderr
