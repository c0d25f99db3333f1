"""The AFT paper's table in miniature: the shipped arithmetic models, one sweep, the math judge.

One ``aftlib sweep`` over held-out test problems of :func:`aftlib.testing.arithmetic_problems`, on the
real vLLM CPU engine, with the shipped models (:func:`aftlib.testing.arithmetic_model`).
Each variant is a topology: one sample, majority vote of 5, self-aggregation by ``base`` (never trained to
aggregate), USC selection, AFT one sample, AFT with aggregation (n=5, one and two aggregation layers),
the AFT model aggregating ``base``'s drafts, RSA, and the aggregator trained by reinforcement (``rl``)
over ``aft``'s and ``base``'s drafts. The drafts are shared between the cells that draw
them (the sweep's cache: common random numbers), every cell is traced, and pass@5 (at least one of the 5
drafts right) is read from the traces as the ceiling. Writes ``results.md`` (the table, with standard
errors and generated tokens per problem), the sweep's CSV and plots, and ``miniature.json``.

    python bench/aft_miniature.py                       # 500 test problems, into bench_out/miniature
    python bench/aft_miniature.py --problems 100 --output bench_out/mini
    python bench/aft_miniature.py --aggregator natural=arithmetic-rl-natural   # one more aggregator row
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

from aftlib.evaluate import AnswerExtractor, Sweep, answers_match, markdown_table
from aftlib.testing import arithmetic_model, arithmetic_problems

DRAFT = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 64}
FINAL = {"temperature": 0.7, "top_p": 1.0, "max_tokens": 64}  # the AFT reference's final layer

VARIANTS: dict[str, dict[str, Any]] = {
    "base, one sample": {"layers": [["base_one"]], "final": "vote"},
    "base, majority vote of 5": {"layers": [["base_draft"]], "final": "vote"},
    "base + aggregation by base (n=5)": {"layers": [["base_draft"]], "final": "base_aggregate"},
    "base, USC selection by base (n=5)": {"layers": [["base_draft"]], "final": "usc"},
    "AFT, one sample": {"layers": [["aft_one"]], "final": "vote"},
    "AFT, majority vote of 5": {"layers": [["aft_draft"]], "final": "vote"},
    "AFT + aggregation (n=5, num_aggregation=1)": {"layers": [["aft_draft"]], "final": "aft_aggregate"},
    "AFT + aggregation (n=5, num_aggregation=2)": {
        "layers": [["aft_draft"], ["aft_aggregate_5"]],
        "final": "aft_aggregate",
    },
    "base drafts + AFT aggregation (n=5)": {"layers": [["base_draft"]], "final": "aft_aggregate"},
    "AFT, RSA (N=5, K=3, T=1) + vote": {"layers": [["aft_draft"], ["rsa_step"]], "final": "vote"},
    "RL, one sample": {"layers": [["rl_one"]], "final": "vote"},
    "AFT drafts + RL aggregation (n=5)": {"layers": [["aft_draft"]], "final": "rl_aggregate"},
    "base drafts + RL aggregation (n=5)": {"layers": [["base_draft"]], "final": "rl_aggregate"},
}
"""The rows of the table: each a topology over the base file's agents."""

PASS_AT_K = {"base, majority vote of 5": "base", "AFT, majority vote of 5": "AFT"}
"""The cells whose traced drafts give each model's pass@5 and draft accuracy."""


def topology_file(base: Path, aft: Path, rl: Path) -> dict[str, Any]:
    """The base topology file: the three engines and every agent the variants use."""
    engine = {
        "type": "vllm",
        "max_model_len": 1024,
        "kv_cache_memory_bytes": 1 << 30,
        "seed": 2025,
        "enforce_eager": True,
    }
    five = {**DRAFT, "n": 5}
    return {
        "engines": {
            "base": {**engine, "model": str(base)},
            "aft": {**engine, "model": str(aft)},
            "rl": {**engine, "model": str(rl)},
        },
        "agents": {
            "base_one": {"engine": "base", "template": "aft_propose", "sampling": DRAFT},
            "base_draft": {"engine": "base", "template": "aft_propose", "sampling": five},
            "base_aggregate": {
                "type": "aggregator",
                "engine": "base",
                "template": "aft_aggregate",
                "sampling": FINAL,
            },
            "usc": {"type": "select", "engine": "base", "sampling": {"temperature": 0, "max_tokens": 64}},
            "aft_one": {"engine": "aft", "template": "aft_propose", "sampling": DRAFT},
            "aft_draft": {"engine": "aft", "template": "aft_propose", "sampling": five},
            "aft_aggregate_5": {
                "type": "aggregator",
                "engine": "aft",
                "template": "aft_aggregate",
                "sampling": five,
            },
            "aft_aggregate": {
                "type": "aggregator",
                "engine": "aft",
                "template": "aft_aggregate",
                "sampling": FINAL,
            },
            "rsa_step": {
                "type": "aggregator",
                "engine": "aft",
                "template": "aft_aggregate",
                "sampling": five,
                "references": {"subset": 3, "seed": 0},
            },
            "rl_one": {"engine": "rl", "template": "aft_propose", "sampling": DRAFT},
            "rl_aggregate": {
                "type": "aggregator",
                "engine": "rl",
                "template": "aft_aggregate",
                "sampling": FINAL,
            },
            "vote": {"type": "vote", "on_no_answer": "first"},
        },
        "layers": [["base_one"]],
        "final": "vote",
    }


def prepare(folder: Path, problems: int, seed: int, aggregators: dict[str, Path] | None = None) -> Path:
    """Write the problems, the gold answers, the base topology file and the sweep file.

    ``aggregators`` adds, for each other model (by a name), a row where it aggregates AFT's drafts.
    """
    folder.mkdir(parents=True, exist_ok=True)
    test = arithmetic_problems(problems, seed=seed, split="test")
    with (folder / "prompts.jsonl").open("w") as prompts, (folder / "gold.jsonl").open("w") as gold:
        for i, problem in enumerate(test):
            prompts.write(json.dumps({"id": i, "prompt": problem["question"]}) + "\n")
            gold.write(json.dumps({"id": i, **problem}) + "\n")
    models = (arithmetic_model("base"), arithmetic_model("aft"), arithmetic_model("rl"))
    base_file = topology_file(*models)
    variants = dict(VARIANTS)
    for name, path in (aggregators or {}).items():
        base_file["engines"][name] = {**base_file["engines"]["rl"], "model": str(path.resolve())}
        base_file["agents"][f"{name}_aggregate"] = {**base_file["agents"]["rl_aggregate"], "engine": name}
        variants[f"AFT drafts + {name} aggregation (n=5)"] = {
            "layers": [["aft_draft"]],
            "final": f"{name}_aggregate",
        }
    (folder / "miniature.yaml").write_text(yaml.safe_dump(base_file, sort_keys=False))
    sweep = {
        "base": "miniature.yaml",
        "variants": variants,
        "prompts": "prompts.jsonl",
        "judge": {"type": "math", "references": "gold.jsonl"},
        "concurrency": 64,
        "trace": True,
    }
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return folder / "sweep.yaml"


def draft_accuracy(answers: Path, gold: dict[int, str]) -> dict[str, Any]:
    """From one traced cell: the share of drafts that are right, and pass@5, each with its standard error."""
    extractor = AnswerExtractor()
    per_draft: list[float] = []
    any_right: list[float] = []
    tokens: list[int] = []
    for line in answers.read_text().splitlines():
        record = json.loads(line)
        if record.get("status") != "done":
            continue
        (trace,) = record["trace"]
        drafts = trace["layers"][0]
        right = [_right(extractor, gold[int(record["id"])], d["text"]) for d in drafts]
        per_draft.append(sum(right) / len(right))
        any_right.append(float(any(right)))
        tokens.append(sum(d["completion_tokens"] for d in drafts))
    return {
        "drafts_right": _mean_se(per_draft),
        "pass_at_5": _mean_se(any_right),
        "draft_tokens": sum(tokens) / max(len(tokens), 1),
        "n": len(any_right),
    }


def _right(extractor: AnswerExtractor, gold: str, text: str) -> bool:
    answer = extractor.extract(text).answer
    expected = extractor.extract(gold).answer
    return answer is not None and expected is not None and answers_match(expected, answer)[0]


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n < 2:
        return (values[0] if values else math.nan), math.nan
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


async def main(output: Path, problems: int, seed: int, aggregators: dict[str, Path]) -> None:
    started = time.perf_counter()
    sweep_file = prepare(output, problems, seed, aggregators)
    sweep = Sweep.load(sweep_file)
    report = await sweep.run(
        output / "results", on_cell=lambda cell, what: print(f"{cell.id}: {what}", flush=True)
    )
    gold = {json.loads(line)["id"]: json.loads(line)["answer"] for line in (output / "gold.jsonl").open()}
    ceilings = {}
    for result in report.results:
        model = PASS_AT_K.get(str(result.cell.values.get("variant")))
        if model is not None:
            answers = output / "results" / "cells" / result.cell.id / "answers.jsonl"
            ceilings[model] = draft_accuracy(answers, gold)
    table = markdown_table(report.results, sweep.columns)
    lines = [
        table,
        "",
        "| drafts of | drafts right | pass@5 (ceiling) | draft tokens per problem | problems |",
        "|---|---|---|---|---|",
    ]
    for model, c in ceilings.items():
        (dr, dr_se), (pk, pk_se) = c["drafts_right"], c["pass_at_5"]
        lines.append(
            f"| {model} | {dr:.3f} ± {dr_se:.3f} | {pk:.3f} ± {pk_se:.3f} "
            f"| {c['draft_tokens']:.1f} | {c['n']} |"
        )
    elapsed = time.perf_counter() - started
    lines += [
        "",
        f"{problems} test problems (seed {seed}); {elapsed:.0f} s on this machine, engine starts included.",
    ]
    text = "\n".join(lines) + "\n"
    (output / "results.md").write_text(text)
    summary = {
        "problems": problems,
        "seed": seed,
        "seconds": round(elapsed),
        "cells": [r.to_json() for r in report.results],
        "ceilings": ceilings,
        "files": {k: str(v) for k, v in report.files.items()},
    }
    (output / "miniature.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(text)
    for name, path in report.files.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("bench_out/miniature"), help="Where to write.")
    parser.add_argument("--problems", type=int, default=500, help="Test problems (default 500).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the test problems.")
    parser.add_argument(
        "--aggregator",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="Another model folder to aggregate AFT's drafts, as one more row (repeatable).",
    )
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    extra: dict[str, Path] = {}
    for item in args.aggregator:
        name, _, folder = item.partition("=")
        if not name.isidentifier() or not folder:
            parser.error(f"--aggregator takes NAME=MODEL_FOLDER, got {item!r}")
        extra[name] = Path(folder)
    anyio.run(main, args.output, args.problems, args.seed, extra)
