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

from aftlib import ChatRequest
from aftlib.engines import Engine, FakeEngine
from aftlib.evaluate import Sweep, SweepReport

pytestmark = pytest.mark.anyio

DATA = Path(__file__).parent / "data" / "rsa_arithmetic_12.jsonl"
P_RIGHT = 0.6
"""The share of drafts that hold the gold answer."""
OFFSETS = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)
"""A wrong draft's answer is the gold answer plus one of these: wrong answers scatter, the right one repeats."""

# The RSA topology: drafts, two aggregation steps (the same agent, each step drawing its own subsets),
# a vote. ``&population`` makes the drafts and the steps share one sampling mapping, so the axis
# ``agents.draft.sampling.n`` sets the population of every step at once.
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
layers: [[draft], [step], [step]]
final: vote
"""

SWEEP = """\
base: rsa.yaml
axes:
  agents.draft.sampling.n: [1, 3, 7]
  agents.step.references.subset: [1, 3]
prompts: prompts.jsonl
judge: {type: math, references: gold.jsonl}
"""

POPULATIONS = (1, 3, 7)
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
    """The sweep's engine hook: the scripted engine for the file's ``fake`` entry (a file holds no handler)."""
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


def _accuracy(report: SweepReport) -> dict[tuple[int, int], float]:
    out = {}
    for row in report.results:
        if row.status == "done":
            assert row.value is not None
            values = row.cell.values
            out[(values["agents.draft.sampling.n"], values["agents.step.references.subset"])] = row.value
    return out


async def test_accuracy_rises_with_the_population_for_every_k(tmp_path: Path) -> None:
    """Population 7 beats the smallest population of each k, and the single draft, under a final vote."""
    report, _ = await _run(tmp_path)
    accuracy = _accuracy(report)
    assert set(accuracy) == {(n, k) for n in POPULATIONS for k in KS if k <= n}
    single = accuracy[(1, 1)]
    assert single < 1.0  # some single drafts are wrong: there is something to gain
    for k in KS:
        smallest = min(n for n in POPULATIONS if n >= k)
        assert accuracy[(max(POPULATIONS), k)] > accuracy[(smallest, k)], (k, accuracy)
        assert accuracy[(max(POPULATIONS), k)] > single, (k, accuracy)
    assert all(row.n == len(GOLD) for row in report.results if row.status == "done")
    assert all(row.metric == "accuracy" for row in report.results if row.status == "done")


async def test_a_subset_larger_than_the_population_fails_its_cell_alone(tmp_path: Path) -> None:
    """Population 1 with k 3: that cell fails with the key path and the reason in its row; the others run."""
    report, _ = await _run(tmp_path)
    statuses = {(r.cell.values["agents.draft.sampling.n"], r.cell.values["agents.step.references.subset"]): r
                for r in report.results}
    failed = statuses[(1, 3)]
    assert failed.status == "failed"
    assert "layers[1].references.subset" in (failed.error or "")
    assert "reads subsets of 3 references" in (failed.error or "")
    assert [r.status for r in report.results].count("done") == len(report.results) - 1
    with (tmp_path / "out" / "results.csv").open(encoding="utf-8") as handle:
        rows = {(r["agents.draft.sampling.n"], r["agents.step.references.subset"]): r for r in csv.DictReader(handle)}
    assert rows[("1", "3")]["status"] == "failed"
    assert "layers[1].references.subset" in rows[("1", "3")]["error"]


async def test_results_table_plots_and_each_cells_answers_are_written(tmp_path: Path) -> None:
    """results.csv (a row per cell), results.md and the quality-vs-tokens plots exist; answers are votes."""
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
    done = [r for r in report.results if r.status == "done"]
    for row in done:
        answers = [json.loads(line) for line in (out / "cells" / row.cell.id / "answers.jsonl").open()]
        assert len(answers) == len(GOLD)
        assert all(a["status"] == "done" for a in answers)
    # More population, more tokens: the plot's x axis is real.
    tokens = {(r.cell.values["agents.draft.sampling.n"], r.cell.values["agents.step.references.subset"]):
              r.tokens_per_record for r in done}
    assert tokens[(7, 1)] > tokens[(3, 1)] > tokens[(1, 1)]


async def test_each_aggregation_reads_k_candidates_and_every_step_sends_one_request_per_member(
    tmp_path: Path,
) -> None:
    """Every aggregation prompt holds k candidates; a cell's run sends 1 + 2 x population engine requests.

    The cache shares requests between cells, so the per-record count is checked on the recorded
    answers' usage: each record of a cell with population N stood for 1 + 2N requests.
    """
    report, engine = await _run(tmp_path)
    for request in engine.requests:
        prompt = request.messages[-1].content
        if "Candidate solution 1:" in prompt:
            assert request.sampling.n == 1  # each member reads its own subset: its own request
            assert prompt.count("Candidate solution ") in KS
    seen = {prompt.count("Candidate solution ") for prompt in (r.messages[-1].content for r in engine.requests)}
    assert {1, 3} <= seen
    out = tmp_path / "out"
    for row in report.results:
        if row.status != "done":
            continue
        population = row.cell.values["agents.draft.sampling.n"]
        for line in (out / "cells" / row.cell.id / "answers.jsonl").open():
            answer = json.loads(line)
            usage = answer["usage"]
            assert usage["requests"] + usage.get("cached_requests", 0) <= 1 + 2 * population
