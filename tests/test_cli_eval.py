"""The eval runner and ``aftlib eval``: resume, torn lines, error lines, refused reruns, usage errors.

The runner is checked with a counting judge (stopped, killed, failing); the command end to end with
the math judge on GSM8K-layout records.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from aftlib import ConfigError, EngineError
from aftlib._io import exclusive_lock
from aftlib._types import Usage
from aftlib.cli import main
from aftlib.evaluate import EvalItem, EvalSummary, Evaluation, Judge, Judgment, MathJudge, eval_path

from .conftest import run_fresh

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parents[1]


class CountingJudge(Judge):
    """Scores each item 1.0 after ``delay`` seconds, counting its calls; ``fail`` ids raise EngineError."""

    name: ClassVar[str] = "counting"

    def __init__(self, delay: float = 0.0, fail: Sequence[str] = (), setting: int = 0) -> None:
        self.delay = delay
        self.fail = set(fail)
        self.setting = setting
        self.calls: list[str] = []

    def describe(self) -> dict[str, Any]:
        return {"judge": self.name, "setting": self.setting}

    async def judge(self, item: EvalItem) -> Judgment:
        self.calls.append(item.id)
        await anyio.sleep(self.delay)
        if item.id in self.fail:
            raise EngineError("the judge engine failed")
        return Judgment(
            item.id, self.name, 1.0, {"seen": item.answers[0]}, Usage(prompt_tokens=3, completion_tokens=2)
        )

    def summarize(self, judgments: Sequence[Judgment]) -> EvalSummary:
        scores = [j.score for j in judgments if j.score is not None]
        return EvalSummary(self.name, len(judgments), {"mean": sum(scores) / len(scores) if scores else None})


def items(count: int = 5) -> list[EvalItem]:
    return [EvalItem(f"r{i}", (f"q{i}",), (f"a{i}",), ("ref",)) for i in range(count)]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the runner -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_resume_after_a_stop_judges_nothing_twice(tmp_path: Path) -> None:
    """Judge 2 of 5, stop, rerun: the rerun judges only the other 3; every id has one judgment."""
    out = tmp_path / "judgments.jsonl"
    first = CountingJudge(delay=0.01)
    scope = anyio.CancelScope()

    def stop_after_two(stats: Any) -> None:
        if stats.done == 2:
            scope.cancel()

    with scope:
        await Evaluation(first, items(), out, concurrency=1, on_progress=stop_after_two).run()
    assert first.calls[:2] == ["r0", "r1"]
    assert [line["id"] for line in lines(out)] == ["r0", "r1"]
    stopped = json.loads((tmp_path / "judgments.jsonl.summary.json").read_text())
    assert stopped["run"]["interrupted"] is True
    assert stopped["n"] == 2
    assert any("not judged yet" in note for note in stopped["notes"])

    second = CountingJudge()
    report = await Evaluation(second, items(), out, concurrency=4).run()
    assert sorted(second.calls) == ["r2", "r3", "r4"]
    assert sorted(line["id"] for line in lines(out)) == [f"r{i}" for i in range(5)]
    assert (report.judged, report.resumed, report.failed) == (3, 2, 0)
    assert report.summary.n == 5
    assert report.usage.completion_tokens == 10  # the earlier run's judgments are summarized too
    summary = json.loads((tmp_path / "judgments.jsonl.summary.json").read_text())
    assert summary["judge"] == "counting"
    assert summary["n"] == 5
    assert summary["mean"] == 1.0
    assert summary["tokens"] == {"prompt_tokens": 15, "completion_tokens": 10}
    assert summary["run"]["interrupted"] is False


KILLED = textwrap.dedent(
    """
    import sys, anyio
    sys.path.insert(0, {root!r})
    from tests.test_cli_eval import CountingJudge, items
    from aftlib.evaluate import Evaluation
    anyio.run(Evaluation(CountingJudge(delay=float(sys.argv[2])), items(), sys.argv[1], concurrency=1).run)
    """
)


def test_resume_after_kill_9(tmp_path: Path) -> None:
    """A process killed with SIGKILL mid-run leaves whole lines; the rerun judges only the rest."""
    out = tmp_path / "judgments.jsonl"
    script = tmp_path / "judge.py"
    script.write_text(KILLED.format(root=str(Path(__file__).parents[1])))
    process = subprocess.Popen([sys.executable, str(script), str(out), "0.4"], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.is_file() and len(out.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    judged = [line["id"] for line in lines(out)]
    assert 2 <= len(judged) < 5
    second = CountingJudge()
    run_fresh(Evaluation(second, items(), out).run)
    assert sorted(second.calls) == sorted({f"r{i}" for i in range(5)} - set(judged))
    assert sorted(line["id"] for line in lines(out)) == [f"r{i}" for i in range(5)]


@pytest.mark.anyio
async def test_a_torn_last_line_is_repaired(tmp_path: Path) -> None:
    """A half-written last line (a crash mid-write) is dropped and its item judged again."""
    out = tmp_path / "judgments.jsonl"
    await Evaluation(CountingJudge(), items(2), out).run()
    with out.open("a") as handle:
        handle.write('{"id": "r2", "status": "do')
    judge = CountingJudge()
    await Evaluation(judge, items(3), out).run()
    assert judge.calls == ["r2"]
    assert [line["id"] for line in lines(out)] == ["r0", "r1", "r2"]


@pytest.mark.anyio
async def test_a_failed_judge_call_is_an_error_line_and_is_retried(tmp_path: Path) -> None:
    """An engine error writes an error line for that item, the others go on; a rerun retries it."""
    out = tmp_path / "judgments.jsonl"
    report = await Evaluation(CountingJudge(fail=["r1"]), items(3), out).run()
    assert (report.judged, report.failed, report.ok) == (2, 1, False)
    errors = [line for line in lines(out) if line["status"] == "error"]
    assert [(e["id"], e["error"]) for e in errors] == [("r1", "EngineError: the judge engine failed")]
    assert report.summary.n == 2
    assert any("1 judge call(s) failed" in note for note in report.notes)
    again = CountingJudge()
    retried = await Evaluation(again, items(3), out).run()
    assert again.calls == ["r1"]
    assert retried.ok
    assert sorted(line["id"] for line in lines(out)) == ["r0", "r1", "r2"]


@pytest.mark.anyio
async def test_other_judge_settings_are_refused_unless_restarted(tmp_path: Path) -> None:
    """A rerun with other judge settings is refused, naming --restart; with restart it starts over."""
    out = tmp_path / "judgments.jsonl"
    await Evaluation(CountingJudge(setting=1), items(2), out).run()
    origin = json.loads(eval_path(out).read_text())
    assert origin["settings"] == {"judge": "counting", "setting": 1}
    with pytest.raises(ConfigError, match="judge settings differ") as caught:
        await Evaluation(CountingJudge(setting=2), items(2), out).run()
    assert "--restart" in str(caught.value)
    with pytest.raises(ConfigError, match="inputs differ"):
        await Evaluation(CountingJudge(setting=1), items(2), out, inputs={"answers": "other"}).run()
    fresh = CountingJudge(setting=2)
    await Evaluation(fresh, items(2), out, restart=True).run()
    assert fresh.calls == ["r0", "r1"]
    assert json.loads(eval_path(out).read_text())["settings"]["setting"] == 2


@pytest.mark.anyio
async def test_the_output_is_locked_while_it_runs(tmp_path: Path) -> None:
    """A second evaluation of a held output is refused with the holder's process id."""
    out = tmp_path / "judgments.jsonl"
    with exclusive_lock(out), pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        await Evaluation(CountingJudge(), items(1), out).run()


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    """Two items with one id cannot be resumed apart: refused up front."""
    twice = [*items(1), *items(1)]
    with pytest.raises(ConfigError, match="two items have the id 'r0'"):
        Evaluation(CountingJudge(), twice, tmp_path / "out.jsonl")


# --- aftlib eval --------------------------------------------------------------------------------------


def evaluate(*args: str | Path) -> int:
    return main(["eval", *map(str, args)])


def test_eval_math_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``aftlib eval --judge math`` on GSM8K-layout records: judgments, summary file, table; rerun resumes."""
    out = tmp_path / "judgments.jsonl"
    args = ("--judge", "math", "--answers", DATA / "eval_math_answers.jsonl")
    args += ("--references", DATA / "gsm8k_5.jsonl", "--output", out)
    assert evaluate(*args) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed
    assert "0.5000" in printed
    judged = lines(out)
    assert [(j["id"], j["score"]) for j in judged] == [("1", 1.0), ("2", 1.0), ("3", 0.0), ("4", None)]
    summary = json.loads((tmp_path / "judgments.jsonl.summary.json").read_text())
    assert summary["judge"] == "math"
    assert summary["n"] == 4
    assert summary["accuracy"] == 0.5
    assert summary["standard_error"] == pytest.approx((0.25 / 3) ** 0.5)
    assert summary["extraction_failures"] == 1
    assert (summary["matched"], summary["missing"], summary["extra"]) == (4, 1, 0)
    assert any("error record" in note for note in summary["notes"])
    assert evaluate(*args) == 0
    assert "0 judged, 4 already judged" in capsys.readouterr().out
    assert len(lines(out)) == 4


def test_eval_math_other_extractor_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rerun whose config changes the extractor is refused (exit 2); --restart judges again."""
    out = tmp_path / "judgments.jsonl"
    args = ("--judge", "math", "--answers", DATA / "eval_math_answers.jsonl", "--output", out)
    args += ("--references", DATA / "gsm8k_5.jsonl")
    assert evaluate(*args) == 0
    strict = tmp_path / "strict.yaml"
    strict.write_text("extractor: strict-match\n")
    capsys.readouterr()
    assert evaluate(*args, "--config", strict) == 2
    err = capsys.readouterr().err
    assert "holds the judgments of another evaluation" in err
    assert "--restart" in err
    assert evaluate(*args, "--config", strict, "--restart") == 0
    assert json.loads((tmp_path / "judgments.jsonl.summary.json").read_text())["accuracy"] == 0.5


def test_eval_math_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad regex in the config names its file and key path; an unknown key names the closest."""
    config = tmp_path / "eval.yaml"
    config.write_text("extractor: {strategies: [regex], pattern: '('}\n")
    args = (
        "--judge",
        "math",
        "--answers",
        DATA / "eval_math_answers.jsonl",
        "--output",
        tmp_path / "o.jsonl",
    )
    assert evaluate(*args, "--config", config) == 2
    assert f"{config}: extractor.pattern: not a valid regular expression" in capsys.readouterr().err
    config.write_text("extractr: strict-match\n")
    assert evaluate(*args, "--config", config) == 2
    assert "did you mean 'extractor'" in capsys.readouterr().err


def test_eval_math_failed_items_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reference with no readable gold answer is an error line for that item, and the run exits 1."""
    answers = tmp_path / "answers.jsonl"
    rows = [
        {"id": 1, "prompt": "q", "answer": "#### 2", "status": "done", "response": "2"},
        {"id": 2, "prompt": "q", "answer": "  ", "status": "done", "response": "2"},
    ]
    answers.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out.jsonl"
    assert evaluate("--judge", "math", "--answers", answers, "--output", out) == 1
    assert [line["status"] for line in lines(out)] == ["done", "error"]
    assert "1 failed" in capsys.readouterr().out


def test_eval_limit(tmp_path: Path) -> None:
    """--limit K judges the first K matched answers only."""
    out = tmp_path / "out.jsonl"
    args = ("--judge", "math", "--answers", DATA / "eval_math_answers.jsonl", "--output", out, "--limit", "2")
    assert evaluate(*args, "--references", DATA / "gsm8k_5.jsonl") == 0
    assert [line["id"] for line in lines(out)] == ["1", "2"]


def test_alpaca_eval_without_baseline_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The AlpacaEval judge without --baseline: exit 2 naming --baseline, nothing written."""
    out = tmp_path / "out.jsonl"
    assert (
        evaluate("--judge", "alpaca_eval", "--answers", DATA / "eval_alpaca_answers.json", "--output", out)
        == 2
    )
    assert "--baseline" in capsys.readouterr().err
    assert not out.exists()


def test_a_judge_engine_without_logprobs_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An AlpacaEval judge engine that cannot give logprobs: one line naming the engine, exit 2."""
    from aftlib.engines import FakeEngine

    monkeypatch.setattr(FakeEngine, "supports_logprobs", property(lambda self: False))
    config = tmp_path / "judge.yaml"
    config.write_text("engine: {type: fake}\n")
    out = tmp_path / "out.jsonl"
    status = evaluate(
        "--judge", "alpaca_eval", "--answers", DATA / "eval_alpaca_answers.json", "--output", out,
        "--baseline", DATA / "eval_alpaca_baseline.json", "--config", config,
    )  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "needs log probabilities" in err[0]
    assert "'judge'" in err[0]
    assert not out.exists()


def test_an_engine_judge_without_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """MT-Bench without --config: exit 2 saying the judge needs an engine."""
    out = tmp_path / "out.jsonl"
    assert evaluate("--judge", "mt_bench", "--answers", DATA / "eval_mt_answers.jsonl", "--output", out) == 2
    assert "needs a judge engine" in capsys.readouterr().err


def test_a_bad_engine_entry_names_its_key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An engine entry of an unknown type is a ConfigError at ``engine.type`` in the config file."""
    config = tmp_path / "judge.yaml"
    config.write_text("engine: {type: opnai, model: m}\n")
    out = tmp_path / "out.jsonl"
    args = ("--judge", "mt_bench", "--answers", DATA / "eval_mt_answers.jsonl", "--output", out)
    assert evaluate(*args, "--config", config) == 2
    err = capsys.readouterr().err
    assert f"{config}: engine.type" in err
    assert "did you mean 'openai'" in err


def test_eval_help_names_the_judges() -> None:
    """``aftlib eval --help`` lists the three judges and the options the checks rely on."""
    from click.testing import CliRunner

    from aftlib.cli import app

    result = CliRunner().invoke(app, ["eval", "--help"])
    assert result.exit_code == 0
    for word in ("alpaca_eval", "mt_bench", "math", "--answers", "--baseline", "--references", "--restart"):
        assert word in result.output


def test_a_missing_answers_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing --answers file: exit 2, one line naming it."""
    missing = tmp_path / "missing.jsonl"
    assert evaluate("--judge", "math", "--answers", missing, "--output", tmp_path / "o.jsonl") == 2
    assert f"{missing}: no such answers file" in capsys.readouterr().err


def test_math_judge_is_a_plain_judge() -> None:
    """The math judge is named ``math`` and needs no engine."""
    assert MathJudge.name == "math"
    assert MathJudge().engines == ()


def test_eval_alpaca_eval_wiring_on_a_fake_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--judge alpaca_eval`` with a fake judge engine: the matched items are judged, the counts reported."""
    config = tmp_path / "judge.yaml"
    config.write_text("engine: {type: fake}\nseed: 0\n")
    out = tmp_path / "out.jsonl"
    status = evaluate(
        "--judge", "alpaca_eval", "--answers", DATA / "eval_alpaca_answers.json", "--output", out,
        "--baseline", DATA / "eval_alpaca_baseline.json", "--config", config,
    )  # fmt: skip
    assert status == 0
    assert [line["judge"] for line in lines(out)] == ["alpaca_eval", "alpaca_eval"]
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["judge"] == "alpaca_eval"
    assert "win_rate" in summary
    assert "standard_error" in summary
    assert (summary["matched"], summary["missing"], summary["extra"]) == (2, 1, 1)
    assert summary["tokens"]["prompt_tokens"] > 0
    assert "win_rate" in capsys.readouterr().out


def test_eval_mt_bench_wiring_on_a_fake_engine(tmp_path: Path) -> None:
    """``--judge mt_bench`` with a fake judge engine: questions and references joined, both turns judged."""
    config = tmp_path / "judge.yaml"
    config.write_text("engine: {type: fake}\n")
    out = tmp_path / "out.jsonl"
    status = evaluate(
        "--judge", "mt_bench", "--answers", DATA / "eval_mt_answers.jsonl", "--output", out,
        "--questions", DATA / "eval_mt_questions.jsonl", "--references", DATA / "eval_mt_references.jsonl",
        "--config", config,
    )  # fmt: skip
    assert status == 0
    assert [line["id"] for line in lines(out)] == ["81", "101"]
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["judge"] == "mt_bench"
    for key in ("turn_1", "turn_2", "average"):
        assert key in summary
    assert (summary["matched"], summary["missing"], summary["extra"]) == (2, 1, 1)


def test_an_unknown_judge_setting_names_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config key the judge does not take is a ConfigError naming the file and the key."""
    config = tmp_path / "judge.yaml"
    config.write_text("engine: {type: fake}\nsede: 1\n")
    out = tmp_path / "out.jsonl"
    status = evaluate(
        "--judge", "alpaca_eval", "--answers", DATA / "eval_alpaca_answers.json", "--output", out,
        "--baseline", DATA / "eval_alpaca_baseline.json", "--config", config,
    )  # fmt: skip
    assert status == 2
    assert f"{config}: sede: unknown key 'sede'; did you mean 'seed'" in capsys.readouterr().err
    assert not out.exists()


def test_eval_stopped_by_sigterm_resumes(tmp_path: Path) -> None:
    """SIGTERM mid-run: exit 143, an interrupted summary; the rerun judges only the rest, none twice."""
    baseline = json.loads((DATA / "eval_alpaca_baseline.json").read_text())
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps([{**row, "output": "mine", "generator": "me"} for row in baseline]))
    config = tmp_path / "judge.yaml"
    config.write_text("engine: {type: fake, latency: 0.5}\n")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "aftlib", "eval", "--judge", "alpaca_eval", "--answers", str(answers)]
    command += ["--baseline", str(DATA / "eval_alpaca_baseline.json"), "--config", str(config)]
    command += ["--output", str(out), "--concurrency", "1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.is_file() and out.read_text().count("\n") >= 1):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "interrupted by SIGTERM" in err
    first = [line["id"] for line in lines(out)]
    assert 1 <= len(first) < 3
    summary = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert summary["run"]["interrupted"] is True
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    ids = [line["id"] for line in lines(out)]
    assert sorted(ids) == sorted(row["instruction"] for row in baseline)
    assert f"{3 - len(first)} judged, {len(first)} already judged" in again.stdout


def test_judge_settings_of_an_attrs_judge_without_describe() -> None:
    """An attrs judge with no ``describe()`` is fingerprinted by its fields; its engine by name only."""
    from attrs import define

    from aftlib.engines import FakeEngine
    from aftlib.evaluate import judge_settings

    @define
    class Seeded(Judge):
        name: ClassVar[str] = "seeded"
        engine: FakeEngine
        seed: int = 0
        names: tuple[str, ...] = ()

        @property
        def engines(self) -> tuple[FakeEngine, ...]:
            return (self.engine,)

        async def judge(self, item: EvalItem) -> Judgment:
            return Judgment(item.id, self.name, 1.0)

        def summarize(self, judgments: Sequence[Judgment]) -> EvalSummary:
            return EvalSummary(self.name, len(judgments), {})

    one = judge_settings(Seeded(FakeEngine(name="j"), seed=1))
    assert one == {"judge": "seeded", "seed": 1, "names": [], "engines": ["j"]}
    assert one == judge_settings(Seeded(FakeEngine(name="j"), seed=1))
    assert one != judge_settings(Seeded(FakeEngine(name="j"), seed=2))
    long = judge_settings(Seeded(FakeEngine(name="j"), names=tuple(map(str, range(100)))))
    assert long["names"]["items"] == 100
