"""Spending tokens by confidence, measured: vote@8 against confidence-weighted, filtered and online-stopped
votes, adaptive sampling and a token budget, and AFT aggregation over all drafts or fewer.

One ``aftlib sweep`` over held-out test problems of :func:`aftlib.testing.arithmetic_problems` on the
real vLLM CPU engine with the shipped ``aft`` and ``base`` models. Every drafting agent draws one seeded
request per draft (:class:`aftlib.Drafts`), so draft ``i`` of a problem is the same text in every cell
that draws it (the sweep's cache shares them: common random numbers), and a method that draws fewer
drafts reads a prefix of vote@8's. Writes ``results.md`` (the sweep's table with accuracy, standard
error, tokens and saved tokens per problem, and each cell's paired difference from its baseline: vote@8
of the same model, or for the aggregation rows aggregation of every draft the row could draw), the
sweep's CSV and plots, and ``confidence.json``.

    python bench/confidence.py                        # 500 test problems, into bench_out/confidence
    python bench/confidence.py --problems 100 --output bench_out/conf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import anyio
import yaml

from aftlib.evaluate import Sweep, markdown_table, mean_and_standard_error
from aftlib.testing import arithmetic_model, arithmetic_problems

DRAFT = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 64, "n": 8, "seed": 0, "logprobs": 20}
FINAL = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 64}
GROUP = {"metric": "lowest_group", "window": 4}  # DeepConf's metric; a window fit for 30-token answers

VARIANTS: dict[str, dict[str, Any]] = {
    "AFT, vote@8": {"layers": [["aft_all"]], "final": "vote"},
    "AFT, confidence-weighted vote@8 (lowest group)": {"layers": [["aft_all"]], "final": "vote_group"},
    "AFT, confidence-weighted vote@8 (mean logprob)": {"layers": [["aft_all"]], "final": "vote_logprob"},
    "AFT, filtered vote@8 (top 50 %, weighted)": {"layers": [["aft_all"]], "final": "vote_filtered"},
    "AFT, online stop (warm-up 3, keep 90 %)": {"layers": [["aft_stop_high"]], "final": "vote"},
    "AFT, online stop (warm-up 3, keep 10 %)": {"layers": [["aft_stop_low"]], "final": "vote"},
    "AFT, adaptive (waves of 2 until 2 agree)": {"layers": [["aft_adaptive"]], "final": "vote"},
    "AFT, adaptive (waves of 2, 3/4 agree)": {"layers": [["aft_adaptive_3"]], "final": "vote"},
    "AFT, budget of 128 tokens": {"layers": [["aft_all"]], "final": "vote", "budget": 128},
    "AFT + aggregation of 8": {"layers": [["aft_all"]], "final": "aggregate"},
    "AFT + aggregation of the top 50 %": {"layers": [["aft_all"]], "final": "aggregate_filtered"},
    "AFT + aggregation, adaptive drafts": {"layers": [["aft_adaptive"]], "final": "aggregate"},
    "AFT + aggregation of 5 (as trained)": {"layers": [["aft_five"]], "final": "aggregate"},
    "AFT + aggregation, adaptive drafts (at most 5)": {
        "layers": [["aft_adaptive_five"]],
        "final": "aggregate",
    },
    "base, vote@8": {"layers": [["base_all"]], "final": "vote"},
    "base, confidence-weighted vote@8 (mean logprob)": {"layers": [["base_all"]], "final": "vote_logprob"},
    "base, online stop (warm-up 3, keep 90 %)": {"layers": [["base_stop_high"]], "final": "vote"},
    "base, adaptive (waves of 2 until 2 agree)": {"layers": [["base_adaptive"]], "final": "vote"},
}
"""The rows: each a topology over the base file's agents."""


def baseline(row: str) -> str:
    """The row a row is paired with: all the drafts it could draw, aggregated or voted on."""
    if row == "AFT + aggregation, adaptive drafts (at most 5)":
        return "AFT + aggregation of 5 (as trained)"
    if row.startswith("AFT + aggregation"):
        return "AFT + aggregation of 8"
    return "AFT, vote@8" if row.startswith("AFT") else "base, vote@8"


def topology_file(models: dict[str, Path]) -> dict[str, Any]:
    """The base topology file: both engines and every agent the variants use."""
    engine = {
        "type": "vllm",
        "max_model_len": 1024,
        "kv_cache_memory_bytes": 1 << 30,
        "seed": 2025,
        "enforce_eager": True,
        "max_num_batched_tokens": 65536,  # vLLM on CPU fails seeded requests whose prefill is split
    }
    drafting = {
        "all": {},
        "stop_high": {"stop": {"warmup": 3, "keep": 0.9, "window": 4}},
        "stop_low": {"stop": {"warmup": 3, "keep": 0.1, "window": 4}},
        "adaptive": {"wave": 2, "consensus": {"agreement": 1.0, "min_drafts": 2}},
        "adaptive_3": {"wave": 2, "consensus": {"agreement": 0.75, "min_drafts": 3}},
    }
    agents: dict[str, Any] = {
        f"{model}_{name}": {"engine": model, "template": "aft_propose", "sampling": DRAFT, "drafting": spec}
        for model in models
        for name, spec in drafting.items()
    }
    five = {**DRAFT, "n": 5}  # the drafts the AFT model was trained to aggregate; the first 5 of the 8
    agents["aft_five"] = {**agents["aft_all"], "sampling": five}
    agents["aft_adaptive_five"] = {**agents["aft_adaptive"], "sampling": five}
    weighted = {"type": "vote", "on_no_answer": "first", "weight": "confidence"}
    aggregate = {"type": "aggregator", "engine": "aft", "template": "aft_aggregate", "sampling": FINAL}
    agents.update(
        vote={"type": "vote", "on_no_answer": "first"},
        vote_group={**weighted, "confidence": GROUP},
        vote_logprob={**weighted, "confidence": {"metric": "logprob"}},
        vote_filtered={**weighted, "confidence": GROUP, "filter": {"keep": 0.5, "confidence": GROUP}},
        aggregate=aggregate,
        aggregate_filtered={**aggregate, "filter": {"keep": 0.5, "confidence": GROUP}},
    )
    return {
        "engines": {name: {**engine, "model": str(path)} for name, path in models.items()},
        "agents": agents,
        "layers": [["aft_all"]],
        "final": "vote",
    }


def prepare(folder: Path, problems: int, seed: int) -> Path:
    """Write the problems, the gold answers, the base topology file and the sweep file."""
    folder.mkdir(parents=True, exist_ok=True)
    test = arithmetic_problems(problems, seed=seed, split="test")
    with (folder / "prompts.jsonl").open("w") as prompts, (folder / "gold.jsonl").open("w") as gold:
        for i, problem in enumerate(test):
            prompts.write(json.dumps({"id": i, "prompt": problem["question"]}) + "\n")
            gold.write(json.dumps({"id": i, **problem}) + "\n")
    models = {"aft": arithmetic_model("aft"), "base": arithmetic_model("base")}
    (folder / "confidence.yaml").write_text(yaml.safe_dump(topology_file(models), sort_keys=False))
    sweep = {
        "base": "confidence.yaml",
        "variants": VARIANTS,
        "prompts": "prompts.jsonl",
        "judge": {"type": "math", "references": "gold.jsonl"},
        "concurrency": 64,
    }
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return folder / "sweep.yaml"


def _scores(cell: Path) -> dict[str, float]:
    """A cell's score per problem id, from its judgments."""
    out = {}
    for line in (cell / "judgments.jsonl").read_text().splitlines():
        judgment = json.loads(line)
        if judgment.get("score") is not None:
            out[str(judgment["id"])] = float(judgment["score"])
    return out


def paired(cell: Path, baseline: Path) -> tuple[float, float, int]:
    """The mean per-problem difference of a cell's accuracy from its baseline's, its standard error and n."""
    mine, theirs = _scores(cell), _scores(baseline)
    diffs = [mine[k] - theirs[k] for k in mine.keys() & theirs.keys()]
    mean, error = mean_and_standard_error(diffs)
    return (math.nan if mean is None else mean), (math.nan if error is None else error), len(diffs)


async def main(output: Path, problems: int, seed: int) -> None:
    started = time.perf_counter()
    sweep_file = prepare(output, problems, seed)
    sweep = Sweep.load(sweep_file)
    report = await sweep.run(
        output / "results", on_cell=lambda cell, what: print(f"{cell.id}: {what}", flush=True)
    )
    cells = output / "results" / "cells"
    ids = {str(r.cell.values["variant"]): r.cell.id for r in report.results}
    rows = [
        "| row | accuracy ± se | vs its baseline (paired) ± se | tokens / problem | "
        "completion / problem | saved / problem | completion vs its baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    completion = {str(r.cell.values["variant"]): r.completion_tokens_per_record for r in report.results}
    pairs = {}
    for result in report.results:
        name = str(result.cell.values["variant"])
        base = baseline(name)
        diff, diff_se, _ = paired(cells / result.cell.id, cells / ids[base])
        pairs[name] = {"difference": diff, "standard_error": diff_se, "baseline": base}
        share = (result.completion_tokens_per_record or 0) / (completion[base] or math.nan)
        rows.append(
            f"| {name} | {result.value:.3f} ± {result.standard_error:.3f} | {diff:+.3f} ± {diff_se:.3f} "
            f"| {result.tokens_per_record:,.0f} | {result.completion_tokens_per_record:,.0f} "
            f"| {result.saved_tokens_per_record or 0:,.0f} | {share:.2f} |"
        )
    elapsed = time.perf_counter() - started
    text = "\n".join(
        [
            "\n".join(rows),
            "",
            markdown_table(report.results, sweep.columns),
            f"{problems} test problems (seed {seed}); {elapsed:.0f} s here, engine starts included.",
        ]
    )
    (output / "results.md").write_text(text + "\n")
    summary = {
        "problems": problems,
        "seed": seed,
        "seconds": round(elapsed),
        "cells": [r.to_json() for r in report.results],
        "paired": pairs,
        "files": {k: str(v) for k, v in report.files.items()},
    }
    (output / "confidence.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    for name, path in report.files.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("bench_out/confidence"), help="Where to write.")
    parser.add_argument("--problems", type=int, default=500, help="Test problems (default 500).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the test problems.")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    anyio.run(main, args.output, args.problems, args.seed)
