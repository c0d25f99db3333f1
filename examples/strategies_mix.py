"""Aggregation strategies mixed in one topology file: MoA drafts from two models, an RSA step, a vote.

``examples/configs/strategies_mix.yaml`` has two engines draft (two samples each), one Recursive
Self-Aggregation step refine them (four samples, each reading its own seeded random subset of two
drafts) and a vote keep the majority answer: 2 + 4 requests per prompt, and none for the vote. This
script reads the file, points its two engines at two tiny random-weight Llamas of ``aftlib.testing``
(built on CPU on first use: the tiny model and a wider one with other weights), shortens the answers,
and runs three prompts.

**The numbers are meaningless**: the weights are random, so the drafts are gibberish, most hold no
answer, and the vote counts whatever numbers turn up. What is real: two vLLM engines serve one
topology read from a file, every request is sent, the subsets each refined sample read are recorded,
and the vote's counts come out on the answer.

Run it with::

    python examples/strategies_mix.py              # two tiny models on vLLM (about a minute on CPU)
    python examples/strategies_mix.py --dry-run    # scripted fake engines instead: no model, instant
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import yaml

from aftlib import AftError, ChatRequest, Result, config
from aftlib.engines import Engine, FakeEngine

CONFIG = Path(__file__).resolve().parent / "configs" / "strategies_mix.yaml"
PROMPTS = [
    "Ana has 17 marbles and finds 25 more. How many marbles does she have? End with '#### ' and the number.",
    "A shelf holds 8 books on each of 6 rows. How many books? End with '#### ' and the number.",
    "Ben had 90 stickers and gave away 37. How many are left? End with '#### ' and the number.",
]
MAX_TOKENS = 16
NOTE = (
    "note: the models have random weights, so these answers and votes are meaningless; the topology file, "
    "the engines, the subsets and the vote are real."
)
DRY_NOTE = "note: a dry run: scripted fake engines answered, no model ran; the numbers are made up."


def tiny_engines(data: dict[str, Any]) -> None:
    """Point the file's two engines at two tiny models, small enough for a CPU."""
    from aftlib.testing import build_tiny_model, tiny_model_path

    tiny = tiny_model_path()  # built into the cache on first use
    wide = build_tiny_model(tiny.parent / "tiny-wide", seed=7, hidden_size=192)  # built once too
    for entry, path in zip(data["engines"].values(), (tiny, wide), strict=True):
        entry.update(model=str(path), max_model_len=2048, enforce_eager=True)


def scripted(name: str) -> FakeEngine:
    """A dry run's engine: it drafts one of a few numbers, or gives the majority of the candidates read."""

    def answer(request: ChatRequest, index: int) -> str:
        prompt = request.messages[-1].content
        answers = re.findall(r"#### (\d+)\s*$", prompt, re.MULTILINE)
        if "Candidate solution 1:" in prompt and answers:
            value = Counter(answers).most_common(1)[0][0]
            return f"Most candidates say {value}.\n#### {value}"
        digest = hashlib.sha256(f"{name} {request.messages!r} {index}".encode()).digest()
        value = str(40 + digest[0] % 4)
        return f"A guess: {value}.\n#### {value}"

    return FakeEngine(name=name, handler=answer)


def fake_engines(data: dict[str, Any]) -> Callable[[str, Callable[[], Engine]], Engine]:
    """Turn the file's engines into fake ones, and give a hook that makes them scripted."""
    data["engines"] = {name: {"type": "fake"} for name in data["engines"]}
    return lambda key, build: scripted(build().name)


def show(prompt: str, result: Result) -> None:
    print(f"prompt: {prompt}")
    drafts, refined = result.layers
    for candidate in drafts.candidates:
        print(f"  draft   {candidate.agent}[{candidate.index}]: {' '.join(candidate.text.split())[:60]!r}")
    for candidate in refined.candidates:
        read = [i + 1 for i in candidate.read or ()]
        print(f"  refined {candidate.index} (read drafts {read}): {' '.join(candidate.text.split())[:50]!r}")
    details = result.answer.details
    fallback = " (no candidate had an answer: the first is given)" if details.get("fallback") else ""
    print(
        f"  votes: {details['votes']}, no answer: {details['no_answer']}, "
        f"agreement: {details['agreement']:.2f}{fallback}"
    )
    print(f"  answer: {details['answer']!r} from {' '.join(result.text.split())[:60]!r}")
    print(f"  requests: {result.usage.requests}")


async def run(data: dict[str, Any], hook: Callable[[str, Callable[[], Engine]], Engine] | None) -> None:
    topology = config.parse(data, source=str(CONFIG), base=CONFIG.parent, engine_hook=hook)
    results: dict[int, Result] = {}

    async def one(i: int) -> None:
        results[i] = await topology.run(PROMPTS[i])

    async with topology, anyio.create_task_group() as tg:  # the topology starts both engines once
        for i in range(len(PROMPTS)):
            tg.start_soon(one, i)  # concurrent prompts: the engines batch them
    for i, prompt in enumerate(PROMPTS):
        show(prompt, results[i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="scripted fake engines instead of vLLM")
    args = parser.parse_args()
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for agent in data["agents"].values():
        if "sampling" in agent:
            agent["sampling"]["max_tokens"] = MAX_TOKENS  # short answers: a quick run
    hook = None
    if args.dry_run:
        hook = fake_engines(data)
    else:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # vLLM logs every step of its start-up
        print("building two tiny models (once), then starting two vLLM engines (about a minute on CPU)")
        tiny_engines(data)
    try:
        anyio.run(run, data, hook)
    except AftError as exc:
        raise SystemExit(f"{type(exc).__name__}: {exc}") from None
    print(DRY_NOTE if args.dry_run else NOTE)


# vLLM starts its engines in new processes, which import this file again: run only as a script.
if __name__ == "__main__":
    main()
