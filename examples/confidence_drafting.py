"""Spend tokens where they pay: vote@8 against adaptive sampling and online stopping.

On a model that knows its task: the shipped arithmetic AFT model
(:func:`aftlib.testing.arithmetic_model`) answers held-out problems three ways on the real vLLM CPU
engine: a vote over 8 drafts; adaptive sampling (drafts in waves of two, stopped once two agree:
:class:`aftlib.Consensus`); and DeepConf's online stopping (a draft whose confidence over 4 tokens
falls below a threshold calibrated on 3 warm-up drafts is aborted: :class:`aftlib.OnlineStop`) with a
confidence-weighted vote. Each draft is one seeded request (:class:`aftlib.Drafts`), so the three read
the same drafts, as far as they draw them. It prints each method's accuracy, generated tokens and the
tokens it saved.

Run it with::

    python examples/confidence_drafting.py               # the shipped model on vLLM (about a minute)
    python examples/confidence_drafting.py --dry-run     # a scripted fake engine: no model, instant
"""

from __future__ import annotations

import argparse
import os

import anyio

from aftlib import (
    AnswerExtractor,
    Confidence,
    Consensus,
    Drafts,
    OnlineStop,
    Proposer,
    SamplingParams,
    Topology,
    Vote,
)
from aftlib.engines import Engine, FakeEngine
from aftlib.testing import arithmetic_problems

PROBLEMS = 24
DRAFTS = SamplingParams(temperature=0.7, top_p=0.95, max_tokens=64, n=8, seed=0, logprobs=20)


def topologies(engine: Engine) -> dict[str, Topology]:
    """The three methods, on one engine."""
    proposer = Proposer(engine, sampling=DRAFTS, name="draft")
    return {
        "vote@8": Topology([Drafts(proposer)], Vote(on_no_answer="first")),
        "adaptive (waves of 2 until 2 agree)": Topology(
            [Drafts(proposer, wave=2, consensus=Consensus(agreement=1.0, min_drafts=2))],
            Vote(on_no_answer="first"),
        ),
        "online stop + weighted vote": Topology(
            [Drafts(proposer, stop=OnlineStop(warmup=3, keep=0.9, window=4))],
            Vote(on_no_answer="first", weight="confidence", confidence=Confidence("logprob")),
        ),
    }


def scripted() -> FakeEngine:
    """A dry run's engine: draft ``i`` of a problem is right unless ``i`` is 3 or 7."""

    def answer(request: object, index: int) -> str:
        seed = getattr(getattr(request, "sampling", None), "seed", 0) or 0
        return "I add them up. #### 7" if seed % 4 != 3 else "I guess. #### 9"

    return FakeEngine(handler=answer, name="scripted")


async def main(dry_run: bool) -> None:
    if dry_run:
        engine: Engine = scripted()
        problems = [{"question": f"Problem {i}: 3 + 4?", "answer": "#### 7"} for i in range(4)]
    else:
        from aftlib.engines import VLLMEngine
        from aftlib.testing import arithmetic_model

        engine = VLLMEngine(
            str(arithmetic_model("aft")),
            max_model_len=1024,
            kv_cache_memory_bytes=1 << 30,
            enforce_eager=True,
            max_num_batched_tokens=65536,  # vLLM on CPU needs seeded prompts prefilled in one step
        )
        problems = arithmetic_problems(PROBLEMS, seed=3, split="test")
    extractor = AnswerExtractor()
    async with engine:
        for name, topology in topologies(engine).items():
            right = generated = saved = 0
            for problem in problems:
                result = await topology.run(problem["question"])
                gold = extractor.extract(problem["answer"]).answer
                right += extractor.extract(result.text).answer == gold
                generated += result.usage.completion_tokens + result.usage.reused_tokens
                saved += result.usage.saved_tokens
            count = len(problems)
            print(
                f"{name}: accuracy {right / count:.2f}, {generated / count:.0f} generated tokens per "
                f"problem, {saved / count:.0f} saved"
            )
    if dry_run:
        print("note: a dry run: a scripted fake engine answered, no model ran.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="Use a scripted fake engine instead.")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    anyio.run(main, args.dry_run)
