"""Answers as tool calls, measured: the same topologies answering in text and with a ``submit`` call.

On held-out test problems of :func:`aftlib.testing.arithmetic_problems`, with the real vLLM CPU engine,
the shipped ``aft`` model answers in text (``#### N``) and the shipped ``tools`` model (``aft`` taught to
end with ``<tool_call>`` of ``submit(answer)``) answers with calls, each through one draft, a vote over
five drafts and an aggregation of five drafts. A call is right when its ``answer`` is the gold one; a
text when its extracted answer is. Also: the ``tools`` model with ``tool_choice: required``, whose
decoding is constrained to text, then tagged calls valid for the tool, and the share of drafts dropped as
malformed. Writes ``results.md`` and ``tools.json``.

    python bench/tools.py                       # 500 test problems, into bench_out/tools
    python bench/tools.py --problems 100 --output bench_out/tools-small
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
import attrs

from aftlib import AftError, Aggregator, AnswerExtractor, Proposer, Result, SamplingParams, Topology, Vote
from aftlib.engines import VLLMEngine
from aftlib.evaluate import mean_and_standard_error
from aftlib.testing import arithmetic_model, arithmetic_problems
from aftlib.testing.rebuild import SUBMIT

DRAFT = SamplingParams(temperature=0.7, top_p=1.0, max_tokens=96, seed=0)
FINAL = SamplingParams(temperature=0.7, top_p=1.0, max_tokens=96, seed=1)
ENGINE = {
    "max_model_len": 1024,
    "kv_cache_memory_bytes": 1 << 30,
    "seed": 2025,
    "enforce_eager": True,
    "max_num_batched_tokens": 65536,  # vLLM on CPU fails seeded requests whose prefill is split
}


def shapes(engine: VLLMEngine) -> dict[str, Topology]:
    """One draft, a vote over five, an aggregation of five: each on ``engine``."""
    five = Proposer(engine, name="drafts", sampling=attrs.evolve(DRAFT, n=5))
    return {
        "one draft": Topology([], Proposer(engine, sampling=DRAFT)),
        "vote@5": Topology([five], Vote(on_no_answer="first")),
        "aggregation of 5": Topology([five], Aggregator(engine, sampling=FINAL)),
    }


def score(result: Result | None, gold: int, *, calls: bool) -> float:
    """1 when the answer is right: a call's ``answer`` (calls rows), the extracted text answer (text rows)."""
    if result is None:
        return 0.0
    if calls:
        answers = [c.arguments.get("answer") for c in result.tool_calls if c.name == "submit"]
        return float(answers[:1] == [gold])
    extracted = AnswerExtractor().extract(result.text).answer
    return float(extracted is not None and extracted == str(gold))


async def run_row(
    topology: Topology, problems: list[dict[str, str]], *, tools: Any, choice: str | None
) -> list[dict[str, Any]]:
    """Every problem through ``topology``, at most 64 at once; per problem its result's facts."""
    out: list[dict[str, Any]] = [{} for _ in problems]
    limit = anyio.CapacityLimiter(64)
    calls = tools is not None

    async def one(i: int) -> None:
        gold = int(problems[i]["answer"].rsplit("####", 1)[1])
        async with limit:
            try:
                result: Result | None = await topology.run(
                    problems[i]["question"], tools=tools, tool_choice=choice
                )
                error = None
            except AftError as exc:
                result, error = None, f"{type(exc).__name__}: {exc}"
        out[i] = {
            "correct": score(result, gold, calls=calls),
            "completion": 0 if result is None else result.usage.completion_tokens,
            "called": None if result is None else bool(result.tool_calls),
            "malformed": 0 if result is None else sum(len(layer.malformed) for layer in result.layers),
            "drafts": 0
            if result is None
            else sum(len(layer.candidates) + len(layer.malformed) for layer in result.layers),
            "error": error,
        }

    async with anyio.create_task_group() as tg:
        for i in range(len(problems)):
            tg.start_soon(one, i)
    return out


def summary(facts: list[dict[str, Any]], baseline: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Accuracy ± se, the paired difference from ``baseline``, tokens, call rate and malformed share."""
    accuracy, se = mean_and_standard_error([f["correct"] for f in facts])
    out: dict[str, Any] = {
        "accuracy": accuracy,
        "standard_error": se,
        "completion_per_problem": sum(f["completion"] for f in facts) / len(facts),
        "answered_with_a_call": sum(bool(f["called"]) for f in facts) / len(facts),
        "failed": sum(f["error"] is not None for f in facts),
        "malformed_drafts": sum(f["malformed"] for f in facts) / max(sum(f["drafts"] for f in facts), 1),
    }
    if baseline is not None:
        diff, diff_se = mean_and_standard_error(
            [a["correct"] - b["correct"] for a, b in zip(facts, baseline, strict=True)]
        )
        out.update(difference=diff, difference_se=diff_se)
    return out


async def main(output: Path, problems: int, seed: int) -> None:
    started = time.perf_counter()
    test = arithmetic_problems(problems, seed=seed, split="test")
    text_engine = VLLMEngine(str(arithmetic_model("aft")), name="aft", **ENGINE)
    call_engine = VLLMEngine(str(arithmetic_model("tools")), name="tools", **ENGINE)
    rows: dict[str, dict[str, Any]] = {}
    async with text_engine, call_engine:
        text, call = shapes(text_engine), shapes(call_engine)
        bases = {}
        for shape in text:
            bases[shape] = await run_row(text[shape], test, tools=None, choice=None)
            rows[f"aft, {shape}, text"] = summary(bases[shape], None)
            calls = await run_row(call[shape], test, tools=[SUBMIT], choice=None)
            rows[f"tools, {shape}, submit call (auto)"] = summary(calls, bases[shape])
            print(shape, rows[f"tools, {shape}, submit call (auto)"], flush=True)
        forced = await run_row(call["one draft"], test, tools=[SUBMIT], choice="required")
        rows["tools, one draft, submit call (required: constrained to text, then tagged calls)"] = summary(
            forced, bases["one draft"]
        )
    elapsed = time.perf_counter() - started
    lines = [
        "| row | accuracy ± se | vs the text row (paired) ± se | completion / problem | answered with a call "
        "| malformed drafts | failed runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        paired = "" if "difference" not in row else f"{row['difference']:+.3f} ± {row['difference_se']:.3f}"
        lines.append(
            f"| {name} | {row['accuracy']:.3f} ± {row['standard_error']:.3f} | {paired} "
            f"| {row['completion_per_problem']:.0f} | {row['answered_with_a_call']:.0%} "
            f"| {row['malformed_drafts']:.1%} | {row['failed']} |"
        )
    lines.append(f"\n{problems} test problems (seed {seed}); {elapsed:.0f} s here, engine starts included.")
    text_out = "\n".join(lines)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.md").write_text(text_out + "\n")
    (output / "tools.json").write_text(
        json.dumps({"problems": problems, "seed": seed, "seconds": round(elapsed), "rows": rows}, indent=2)
        + "\n"
    )
    print(text_out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("bench_out/tools"), help="Where to write.")
    parser.add_argument("--problems", type=int, default=500, help="Test problems (default 500).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the test problems.")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    anyio.run(main, args.output, args.problems, args.seed)
