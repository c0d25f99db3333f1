"""What draft reuse saves on a sweep, and how fast the eval runner judges.

A FakeEngine sweep of the AFT topology, ``n`` in 1..4 x ``num_aggregation`` in 1..3 (12 cells) over
``--records`` prompts, run twice: with the shared request cache (the default of ``aftlib sweep``) and
without reuse (each cell its own cache). For each: completion tokens generated, engine requests and wall
time. Then the eval runner's throughput: judgments per second of the math judge and of the AlpacaEval
judge on a FakeEngine that scripts its log probabilities.

Run it with::

    .venv/bin/python bench/bench_sweep_cache.py --records 200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import yaml

from aftlib import ChatRequest, TokenLogprob
from aftlib.engines import FakeEngine
from aftlib.evaluate import AlpacaEvalJudge, EvalItem, Evaluation, MathJudge, Sweep


def _write(folder: Path, records: int) -> Path:
    base = {
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
    (folder / "aft.yaml").write_text(yaml.safe_dump(base))
    with (folder / "prompts.jsonl").open("w") as handle:
        for i in range(records):
            handle.write(
                json.dumps({"id": i, "prompt": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"}) + "\n"
            )
    sweep = {
        "base": "aft.yaml",
        "axes": {"generation_params.n": [1, 2, 3, 4], "num_aggregation": [1, 2, 3]},
        "prompts": "prompts.jsonl",
        "judge": {"type": "math"},
        "concurrency": 64,
    }
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    return folder / "sweep.yaml"


def _answer(request: ChatRequest, index: int) -> str:
    digest = hashlib.sha256(repr(request.messages).encode()).hexdigest()[:8]
    return f"draft {index} of request {digest}, so #### {index}"


async def _sweep(records: int, reuse: bool, latency: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        fake = FakeEngine(handler=_answer, name="fake", latency=latency)
        sweep = Sweep.load(_write(Path(tmp), records), engine_hook=lambda key, build: fake, reuse=reuse)
        start = time.perf_counter()
        report = await sweep.run(Path(tmp) / "out")
        elapsed = time.perf_counter() - start
        generated = report.generated_tokens
        standalone = sum((r.generated_tokens + r.reused_tokens) for r in report.results)
        return {
            "mode": "shared cache (reuse)" if reuse else "no reuse",
            "cells": len(report.results),
            "generated": generated,
            "reused": report.reused_tokens,
            "standalone": standalone,
            "requests": len(fake.requests),
            "seconds": elapsed,
        }


async def _judge_rate(items: int) -> list[tuple[str, int, float]]:
    out = []
    math_items = [EvalItem(str(i), (f"q{i}",), (f"so #### {i}",), (f"work\n#### {i}",)) for i in range(items)]

    def logprobs(request: ChatRequest, index: int, text: str) -> list[TokenLogprob]:
        return [TokenLogprob("m", -0.4, [("m", -0.4), ("M", -1.1)])]

    judge_engine = FakeEngine(handler=lambda request, index: "m", logprobs=logprobs, name="judge")
    pairs = [
        EvalItem(str(i), (f"instruction {i}",), (f"answer {i}",), (f"baseline {i}",)) for i in range(items)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, judge, chosen in (
            ("math", MathJudge(), math_items),
            ("alpaca_eval (FakeEngine)", AlpacaEvalJudge(judge_engine), pairs),
        ):
            evaluation = Evaluation(judge, chosen, Path(tmp) / f"{name.split()[0]}.jsonl", concurrency=64)
            start = time.perf_counter()
            await evaluation.run()
            out.append((name, len(chosen), len(chosen) / (time.perf_counter() - start)))
    return out


async def main(records: int, judgments: int, latency: float) -> None:
    """Run both sweeps and the judge throughput, and print Markdown tables."""
    rows = [await _sweep(records, True, latency), await _sweep(records, False, latency)]
    cells = rows[0]["cells"]
    print(
        f"FakeEngine sweep ({latency * 1000:g} ms per request): n in 1..4 x num_aggregation in 1..3 "
        f"({cells} cells), {records} prompts\n"
    )
    print("| mode | tokens generated | tokens reused | engine requests | wall time |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['generated']:,} | {row['reused']:,} | {row['requests']:,} | "
            f"{row['seconds']:.1f} s |"
        )
    saved = 1 - rows[0]["generated"] / rows[1]["generated"]
    fewer = rows[1]["requests"] / rows[0]["requests"]
    print(f"\nreuse generates {saved:.0%} fewer tokens ({fewer:.1f}x fewer requests)")
    print("\n| judge | judgments | judgments / s |")
    print("|---|---|---|")
    for name, count, rate in await _judge_rate(judgments):
        print(f"| {name} | {count:,} | {rate:,.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200, help="Prompts per cell.")
    parser.add_argument("--judgments", type=int, default=2000, help="Items per judge throughput run.")
    parser.add_argument("--latency", type=float, default=0.01, help="Seconds per engine request.")
    args = parser.parse_args()
    anyio.run(main, args.records, args.judgments, args.latency)
