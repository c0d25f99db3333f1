"""A sweep over a Recursive Self-Aggregation grid (population x k) with the math judge, on FakeEngine.

The engine is scripted to be right with some probability per draft (a hash of the problem and the
sample decides, so every run is the same) and, as an aggregator, to give the majority answer of the
candidates it reads; a final vote picks each cell's answer. The test pins the plumbing: the grid, the
subsets read, the invalid cell (k larger than the population), the judge, the files, and accuracy
rising with the population, as self-consistency predicts. It says nothing about any model.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from aftlib import ChatRequest, config
from aftlib.engines import Engine, FakeEngine
from aftlib.evaluate import CellResult, Sweep, SweepReport

pytestmark = pytest.mark.anyio

DATA = Path(__file__).parent / "data" / "rsa_arithmetic_24.jsonl"
P_RIGHT = 0.6
"""The share of drafts that hold the gold answer."""
OFFSETS = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)
"""A wrong draft's answer is the gold answer plus one of these: wrong ones scatter, the right one repeats."""

# The RSA topology: a population of drafts, one aggregation step (each member reads its own subset of
# k drafts), then a vote. ``&population`` makes the drafts and the step share one sampling mapping, so
# the axis ``agents.draft.sampling.n`` sets the population of both.
BASE = """\
engines:
  model: {type: fake}
agents:
  draft:
    engine: model
    template: passthrough
    sampling: &population {n: 3, temperature: 0.7, max_tokens: 64, seed: 0}
  step:
    type: aggregator
    engine: model
    template: rsa_aggregate
    sampling: *population
    references: {subset: 1, seed: 0}
  vote: {type: vote}
layers: [[draft], [step]]
final: vote
"""

SWEEP = """\
base: rsa.yaml
axes:
  agents.draft.sampling.n: [1, 3, 9]
  agents.step.references.subset: [1, 3]
prompts: prompts.jsonl
judge: {type: math, references: gold.jsonl}
"""

POPULATIONS = (1, 3, 9)
KS = (1, 3)


def _gold() -> dict[str, int]:
    """Each problem's question and its gold answer (the number after GSM8K's ``####``)."""
    records = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["question"]: int(r["answer"].rsplit("#### ", 1)[1]) for r in records}


GOLD = _gold()


def _unit(*key: object) -> float:
    """A number in [0, 1) that only ``key`` decides."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _question(text: str) -> str:
    return next(q for q in GOLD if text.startswith(q))


def draft(question: str, sample: int) -> str:
    """Draft ``sample`` of a problem: the gold answer with probability P_RIGHT, else a scattered wrong one."""
    gold = GOLD[question]
    if _unit("right", question, sample) < P_RIGHT:
        value = gold
    else:
        value = gold + OFFSETS[int(_unit("wrong", question, sample) * len(OFFSETS))]
    return f"Working it out step by step, the result is {value}.\n#### {value}"


def aggregate(prompt: str) -> str:
    """An aggregation: the majority answer of the candidates read (a tie: the prompt's hash picks one)."""
    answers = re.findall(r"^#### (-?\d+)$", prompt, re.MULTILINE)
    counts = Counter(answers)
    top = max(counts.values())
    tied = [a for a in dict.fromkeys(answers) if counts[a] == top]
    value = tied[int(_unit("tie", prompt) * len(tied))]
    return f"Comparing the {len(answers)} candidates, the result is {value}.\n#### {value}"


def handler(request: ChatRequest, index: int) -> str:
    """Scripted as a seeded model: sample ``index`` of a request with seed ``s`` is sample ``s + index``.

    That is how vLLM seeds the samples of a request, and how the sweep's cache asks for the samples it
    lacks (the seed moved to the first missing one), so a sample's text does not depend on which cell
    asked for it first.
    """
    prompt = request.messages[-1].content
    if "Candidate solution 1:" in prompt:
        return aggregate(prompt)
    seed = request.sampling.seed or 0
    return draft(_question(prompt), seed + index)


def _hook(engine: FakeEngine) -> Callable[[str, Callable[[], Engine]], Engine]:
    """The sweep's engine hook: the scripted engine for the file's ``fake`` entry (a file has no handler)."""
    return lambda key, build: engine


def _write(folder: Path) -> Path:
    (folder / "rsa.yaml").write_text(BASE, encoding="utf-8")
    (folder / "gold.jsonl").write_bytes(DATA.read_bytes())
    with (folder / "prompts.jsonl").open("w", encoding="utf-8") as handle:
        for line in DATA.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            handle.write(json.dumps({"id": record["id"], "prompt": record["question"]}) + "\n")
    (folder / "sweep.yaml").write_text(SWEEP, encoding="utf-8")
    return folder / "sweep.yaml"


async def _run(folder: Path) -> tuple[SweepReport, FakeEngine]:
    engine = FakeEngine(handler=handler, name="model")
    sweep = Sweep.load(_write(folder), engine_hook=_hook(engine))
    return await sweep.run(folder / "out"), engine


def _cells(report: SweepReport) -> dict[tuple[int, int], CellResult]:
    """The report's cells by (population, k)."""
    return {
        (r.cell.values["agents.draft.sampling.n"], r.cell.values["agents.step.references.subset"]): r
        for r in report.results
    }


async def test_accuracy_rises_with_the_population_for_every_k(tmp_path: Path) -> None:
    """The largest population, under a final vote, beats a single draft (population 1), for each k."""
    report, _ = await _run(tmp_path)
    cells = _cells(report)
    accuracy = {key: r.value for key, r in cells.items() if r.status == "done"}
    assert set(accuracy) == {(n, k) for n in POPULATIONS for k in KS if k <= n}
    single = accuracy[(1, 1)]
    assert single is not None
    assert single < 1.0  # some single drafts are wrong: there is something to gain
    for k in KS:
        largest = accuracy[(max(POPULATIONS), k)]
        assert largest is not None
        assert largest > single, (k, accuracy)
    for key, row in cells.items():
        if row.status == "done":
            assert (row.metric, row.n, row.records) == ("accuracy", len(GOLD), len(GOLD)), key


async def test_a_subset_larger_than_the_population_fails_its_cell_alone(tmp_path: Path) -> None:
    """Population 1 with k 3: that cell fails with the key path and the reason in its row; the others run."""
    report, _ = await _run(tmp_path)
    failed = _cells(report)[(1, 3)]
    assert failed.status == "failed"
    assert "layers[1].references.subset" in (failed.error or "")
    assert "reads subsets of 3 references, but the layer before it gives 1 candidates" in (failed.error or "")
    assert [r.status for r in report.results].count("done") == len(report.results) - 1
    with (tmp_path / "out" / "results.csv").open(encoding="utf-8") as handle:
        rows = {
            (r["agents.draft.sampling.n"], r["agents.step.references.subset"]): r
            for r in csv.DictReader(handle)
        }
    assert rows[("1", "3")]["status"] == "failed"
    assert "layers[1].references.subset" in rows[("1", "3")]["error"]


async def test_the_results_table_and_plots_are_written(tmp_path: Path) -> None:
    """results.csv (a row per cell, in grid order), results.md and the quality-vs-tokens plots exist."""
    report, _ = await _run(tmp_path)
    out = tmp_path / "out"
    with (out / "results.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["agents.draft.sampling.n"], r["agents.step.references.subset"]) for r in rows] == [
        (str(n), str(k)) for n in POPULATIONS for k in KS
    ]
    assert "accuracy ± se" in (out / "results.md").read_text(encoding="utf-8")
    for name in ("quality_vs_tokens.png", "quality_vs_tokens.svg"):
        assert (out / name).stat().st_size > 1000
    tokens = {key: r.tokens_per_record or 0.0 for key, r in _cells(report).items() if r.status == "done"}
    assert (
        tokens[(9, 1)] > tokens[(3, 1)] > tokens[(1, 1)] > 0
    )  # a larger population costs more: a real x axis


async def test_each_cell_is_rsa_with_its_population_and_k(tmp_path: Path) -> None:
    """A cell's config is RSA at its (population, k): 1 + N requests per problem, each member reading k.

    The shared ``sampling`` mapping carries the population axis to the step as well as to the drafts.
    Each cell's config is built on a fresh scripted engine (no cache) and run on one problem.
    """
    sweep = Sweep.load(_write(tmp_path))
    question = next(iter(GOLD))
    for cell in sweep.cells:
        population, k = cell.values["agents.draft.sampling.n"], cell.values["agents.step.references.subset"]
        if k > population:
            continue
        engine = FakeEngine(handler=handler, name="model")
        topology = config.parse(dict(cell.data), engine_hook=_hook(engine))
        result = await topology.run(question)
        assert len(engine.requests) == 1 + population, cell.id
        assert [r.sampling.n for r in engine.requests] == [population] + [1] * population
        step = result.layers[1].candidates
        assert len(step) == population
        assert all(c.read is not None and len(c.read) == k for c in step)
        for candidate in step:
            assert candidate.requests[0].messages[-1].content.count("Candidate solution ") == k
        assert result.answer.agent == "vote"
        assert sum(result.answer.details["votes"].values()) == population
