"""Sweeps on FakeEngine: the grid, shared drafts generated once, resume, results, plots and bad input."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from aftlib import ChatRequest, ConfigError
from aftlib.engines import Engine, FakeEngine
from aftlib.evaluate import (
    EvalItem,
    EvalSummary,
    Judge,
    Judgment,
    Sweep,
    mean_and_standard_error,
    pareto_front,
    parse_key_path,
)

pytestmark = pytest.mark.anyio


class LengthJudge(Judge):
    """A test judge: an answer's score is its number of words (the sweep's mechanics, not a real judge)."""

    name: ClassVar[str] = "length"

    async def judge(self, item: EvalItem) -> Judgment:
        return Judgment(item.id, self.name, float(len(item.answers[-1].split())))

    def summarize(self, judgments: Sequence[Judgment]) -> EvalSummary:
        mean, error = mean_and_standard_error([j.score for j in judgments if j.score is not None])
        return EvalSummary(self.name, len(judgments), {"words": mean, "standard_error": error})


def _handler(request: ChatRequest, index: int) -> str:
    """Texts whose length depends on the prompt and the sample, so cells differ in quality."""
    words = 2 + (len(request.messages[-1].content) + len(request.messages[0].content) + index) % 5
    return " ".join(f"w{i}" for i in range(words))


def _write(folder: Path, axes: dict[str, Any], **extra: Any) -> Path:
    (folder / "aft.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name": "fake-model",
                "generation_params": {
                    "temperature": 0.7,
                    "top_p": 0.95,
                    "max_tokens": 64,
                    "n": 1,
                    "final_layer_temperature": 0.7,
                    "final_layer_top_p": 1.0,
                },
                "num_aggregation": 1,
            }
        )
    )
    with (folder / "prompts.jsonl").open("w") as handle:
        for i in range(4):
            handle.write(json.dumps({"id": i, "prompt": f"question number {i} " + "x " * i}) + "\n")
    sweep = {
        "base": "aft.yaml",
        "axes": axes,
        "prompts": "prompts.jsonl",
        "judge": {"type": "length"},
        **extra,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _hook(fake: FakeEngine) -> Callable[[str, Callable[[], Engine]], Engine]:
    return lambda key, build: fake


GRID = {"generation_params.n": [1, 2, 3], "num_aggregation": [1, 2]}


async def test_a_sweep_writes_one_row_per_cell_a_table_and_plots(tmp_path: Path) -> None:
    """6 cells (n x num_aggregation): results.csv has a row per cell with axis, metric and token columns."""
    fake = FakeEngine(handler=_handler, name="fake")
    sweep = Sweep.load(_write(tmp_path, GRID), judge=LengthJudge(), engine_hook=_hook(fake))
    report = await sweep.run(tmp_path / "out")
    assert [r.status for r in report.results] == ["done"] * 6
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["generation_params.n"], r["num_aggregation"]) for r in rows] == [
        (str(n), str(a)) for n in (1, 2, 3) for a in (1, 2)
    ]
    for column in ("cell", "metric", "value", "standard_error", "n", "tokens_per_record"):
        assert column in rows[0]
    for column in ("completion_tokens_per_record", "cost_per_record", "generated_tokens", "reused_tokens"):
        assert column in rows[0]
    assert {r["metric"] for r in rows} == {"words"}
    assert all(r["n"] == "4" and float(r["tokens_per_record"]) > 0 for r in rows)
    table = (tmp_path / "out" / "results.md").read_text()
    assert table.count("\n") == 2 + 6
    assert "words ± se" in table
    for name in ("quality_vs_tokens.png", "quality_vs_tokens.svg"):
        assert (tmp_path / "out" / name).stat().st_size > 1000
    assert not (tmp_path / "out" / "quality_vs_cost.png").exists()  # no price table, no cost plot
    for r in rows:
        assert (tmp_path / "out" / "cells" / r["cell"] / "judgments.jsonl").is_file()


async def test_cells_sharing_proposals_generate_them_once(tmp_path: Path) -> None:
    """Each (prompt, sampling, sample index) reaches the engine once over all cells; later cells reuse it."""
    fake = FakeEngine(handler=_handler, name="fake")
    sweep = Sweep.load(_write(tmp_path, GRID), judge=LengthJudge(), engine_hook=_hook(fake))
    report = await sweep.run(tmp_path / "out")
    sent: Counter[Any] = Counter()
    proposals: Counter[Any] = Counter()
    for request in fake.requests:
        s = request.sampling
        key = (tuple((m.role, m.content) for m in request.messages), s.temperature, s.top_p, s.seed)
        sent[key] += s.n
        if "Responses from models" not in request.messages[0].content:
            proposals[key] += s.n
    assert len(proposals) == 4  # one proposal prompt per record, shared by every cell
    assert set(proposals.values()) == {3}  # the largest n: samples 0, 1, 2, each generated once
    assert report.reused_tokens > 0
    assert report.generated_tokens == sum(r.generated_tokens for r in report.results)
    first, second = report.results[0], report.results[1]  # n=1 with 1 then 2 aggregations
    assert all(count <= 3 for count in sent.values())  # no request's sample generated twice
    assert first.reused_tokens == 0  # the first cell generates everything it needs
    assert 0 < second.reused_tokens < first.generated_tokens  # its proposals came from the cache
    assert second.tokens_per_record is not None
    assert first.tokens_per_record is not None
    assert second.tokens_per_record > first.tokens_per_record  # its standalone cost counts reused tokens


async def test_a_rerun_skips_finished_cells_and_resumes_a_half_done_one(tmp_path: Path) -> None:
    """A rerun skips done cells; a cell without its result resumes from its answers, with no new requests."""
    fake = FakeEngine(handler=_handler, name="fake")
    path = _write(tmp_path, GRID)
    first = await Sweep.load(path, judge=LengthJudge(), engine_hook=_hook(fake)).run(tmp_path / "out")
    sent = len(fake.requests)
    again = await Sweep.load(path, judge=LengthJudge(), engine_hook=_hook(fake)).run(tmp_path / "out")
    assert again.skipped == 6
    assert len(fake.requests) == sent
    assert [r.value for r in again.results] == [r.value for r in first.results]
    cell = first.results[3].cell.id
    (tmp_path / "out" / "cells" / cell / "result.json").unlink()
    answers = tmp_path / "out" / "cells" / cell / "answers.jsonl"
    lines = answers.read_text().splitlines(keepends=True)
    answers.write_text("".join(lines[:2]))  # half done: two records answered
    third = await Sweep.load(path, judge=LengthJudge(), engine_hook=_hook(fake)).run(tmp_path / "out")
    assert third.skipped == 5
    assert third.results[3].status == "done"
    assert third.results[3].records == 4
    assert third.results[3].value == first.results[3].value  # the same drafts, from the cache
    assert len(fake.requests) == sent  # everything it needed was cached


async def test_an_axis_naming_no_key_is_a_config_error_with_its_key_path(tmp_path: Path) -> None:
    """``generation_params.nn`` and ``engines.x.latency`` name no key of an AFT config: ConfigError."""
    with pytest.raises(ConfigError, match=r"generation_params\.nn") as info:
        Sweep.load(_write(tmp_path, {"generation_params.nn": [1, 2]}))
    assert info.value.path == "axes.generation_params.nn"
    assert "unknown key 'nn'" in info.value.message
    with pytest.raises(ConfigError, match="no key 'engines'") as info:
        Sweep.load(_write(tmp_path, {"engines.x.latency": [1]}))
    assert info.value.path == "axes.engines.x.latency"
    with pytest.raises(ConfigError, match="at least one value"):
        Sweep.load(_write(tmp_path, {"num_aggregation": []}))


async def test_a_cell_with_an_invalid_topology_fails_alone(tmp_path: Path) -> None:
    """num_aggregation 0 is not a topology: that cell fails with the reason in its row, the others run."""
    fake = FakeEngine(handler=_handler, name="fake")
    path = _write(tmp_path, {"num_aggregation": [1, 0, 2]})
    report = await Sweep.load(path, judge=LengthJudge(), engine_hook=_hook(fake)).run(tmp_path / "out")
    assert [r.status for r in report.results] == ["done", "failed", "done"]
    assert "num_aggregation" in (report.results[1].error or "")
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1]["status"] == "failed"
    assert "num_aggregation" in rows[1]["error"]


async def test_prices_give_a_cost_per_record_and_a_cost_plot(tmp_path: Path) -> None:
    """With a price table each cell has its standalone cost per record (reused tokens priced), and a plot."""
    fake = FakeEngine(handler=_handler, name="fake")
    (tmp_path / "prices.yaml").write_text("fake: {prompt: 1.0, completion: 2.0}\n")  # by engine name
    path = _write(tmp_path, {"num_aggregation": [1, 2]}, prices="prices.yaml")
    report = await Sweep.load(path, judge=LengthJudge(), engine_hook=_hook(fake)).run(tmp_path / "out")
    costs = [r.cost_per_record for r in report.results]
    assert all(c is not None and c > 0 for c in costs)
    assert costs[1] > costs[0]  # two aggregations cost more alone, though the drafts were reused
    assert (tmp_path / "out" / "quality_vs_cost.svg").is_file()


def test_the_pareto_front_on_a_known_set() -> None:
    """The front keeps the points no cheaper point beats in quality, cheapest first; ties keep the first."""
    points = [(10.0, 0.5), (20.0, 0.4), (30.0, 0.7), (5.0, 0.1), (30.0, 0.7), (40.0, 0.7), (25.0, 0.6)]
    assert pareto_front(points) == [3, 0, 6, 2]
    assert pareto_front([]) == []
    assert pareto_front([(1.0, float("nan")), (2.0, 1.0)]) == [1]


def test_key_paths() -> None:
    """Key paths split into keys and list indices; a malformed one is a ConfigError."""
    assert parse_key_path("generation_params.n") == ["generation_params", "n"]
    assert parse_key_path("layers[0].agents[1]") == ["layers", 0, "agents", 1]
    for bad in ("", "a..b", ".a", "a.", "a[x]"):
        with pytest.raises(ConfigError):
            parse_key_path(bad)


def test_the_sweep_command_on_a_topology_file_with_the_math_judge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``aftlib sweep FILE --output DIR`` over fake engines and GSM8K prompts: exit 0, files, the summary."""
    from aftlib.cli import main

    data = Path(__file__).parent / "data"
    for name in ("sweep_gsm8k_prompts.jsonl", "gsm8k_5.jsonl"):
        (tmp_path / name).write_bytes((data / name).read_bytes())
    topology = {
        "engines": {"model": {"type": "fake"}},
        "agents": {
            "draft": {"engine": "model", "sampling": {"n": 1, "max_tokens": 32}},
            "final": {"role": "aggregator", "engine": "model", "sampling": {"temperature": 0.7}},
        },
        "layers": [["draft"]],
        "final": "final",
    }
    (tmp_path / "moa.yaml").write_text(yaml.safe_dump(topology))
    sweep = {
        "base": "moa.yaml",
        "axes": {"agents.draft.sampling.n": [1, 2], "agents.final.sampling.temperature": [0.0, 0.5]},
        "prompts": "sweep_gsm8k_prompts.jsonl",
        "limit": 3,
        "judge": {"type": "math", "references": "gsm8k_5.jsonl"},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    status = main(["sweep", str(tmp_path / "sweep.yaml"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 0, err
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert {r["metric"] for r in rows} == {"accuracy"}
    assert all(r["n"] == "3" for r in rows)
    assert "accuracy ± se" in err
    assert "reused from the cache" in err
    assert "quality_vs_tokens.svg" in err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["reused_tokens"] > 0  # the n=1 drafts served the temperature-0.5 cells
    bad = dict(sweep, axes={"agents.draft.sampling.nn": [1]})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert main(["sweep", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "out2")]) == 2
    assert "axes.agents.draft.sampling.nn" in capsys.readouterr().err


def test_one_judge_file_builds_the_same_judge_under_eval_and_sweep(tmp_path: Path) -> None:
    """A math judge file with an extractor mapping is accepted by eval's and sweep's builder alike.

    Both give the same settings (so the same fingerprint); a bad key in it is the same error, naming the
    same key, under both.
    """
    from aftlib.evaluate import judge_from_config

    judge_file = tmp_path / "judge.yaml"
    judge_file.write_text(yaml.safe_dump({"extractor": {"strategies": ["last_number"]}}))
    path = _write(tmp_path, GRID, judge={"type": "math", "config": "judge.yaml", "references": "gold.jsonl"})
    judge, engine, settings = Sweep.load(path).build_judge()
    setup = judge_from_config("math", judge_file)
    assert judge.describe() == setup.judge.describe()
    assert engine is None
    assert setup.engine is None
    assert settings == setup.settings
    assert settings["judge"]["extractor"]["strategies"] == ["last_number"]

    judge_file.write_text(yaml.safe_dump({"extractor": {"strategy": ["last_number"]}}))
    with pytest.raises(ConfigError) as from_sweep:
        Sweep.load(path).build_judge()
    with pytest.raises(ConfigError) as from_eval:
        judge_from_config("math", judge_file)
    assert str(from_sweep.value) == str(from_eval.value)
    assert from_eval.value.path == "extractor.strategy"
