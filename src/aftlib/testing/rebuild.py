"""Rebuild the shipped arithmetic models from scratch, with aftlib's own data builders and trainer.

Usage::

    python -m aftlib.testing.rebuild base --output arithmetic-base
    python -m aftlib.testing.rebuild aft --base arithmetic-base --output arithmetic-aft
    python -m aftlib.testing.rebuild rl --aft arithmetic-aft --output arithmetic-rl
    python -m aftlib.testing.rebuild tools --aft arithmetic-aft --output arithmetic-tools

``base`` builds a random 4 x 128 Llama with a tokenizer trained on the task's words (one token per
digit), writes 100,000 train-split problems as direct examples (the AFT proposal request, then the worked
answer) and trains every weight with :func:`aftlib.finetune.train`. ``aft`` drafts 5 answers per
problem with ``base`` on the real vLLM engine (:func:`aftlib.finetune.build_on_policy` with the
proposal template), takes the gold worked answer as the target, mixes in direct examples, and trains
``base`` on them. ``rl`` drafts 8 answers per problem with ``aft`` (a traced ``aftlib run``), builds RL
records with the gold answers and AggLM's balanced easy/hard mix (:func:`aftlib.finetune.build_rl_data`)
and trains ``aft`` further with GRPO (``aftlib train`` with ``method: grpo``), every weight trained.
``tools`` drafts 5 answers per problem with ``base``, writes them and the gold answers the way a model
that calls tools answers (the worked answer, then ``<tool_call>`` with ``submit``'s arguments instead of
``#### N``), and trains ``aft`` on aggregation and direct examples whose requests offer the ``submit``
tool as an engine shows it to this model (:data:`SUBMIT`). Each
writes its checkpoint with a model card (``README.md``) and the manifest that
:func:`aftlib.testing.arithmetic_model` checks. The settings below are the ones the shipped models were
built with; the work folder keeps the data, its cards and the draft cache, so a rerun resumes the drafts.
"""

from __future__ import annotations

import json
import pathlib
import platform
import re
import sys
import time
from typing import Any

import click

from ._arithmetic import arithmetic_problems, tokenizer_corpus
from ._models import MANIFEST, write_manifest
from ._tiny import build_tiny_model

__all__ = (
    "AFT_RECIPE",
    "BASE_RECIPE",
    "RL_RECIPE",
    "SUBMIT",
    "TOOLS_RECIPE",
    "main",
    "rebuild_aft",
    "rebuild_base",
    "rebuild_rl",
    "rebuild_tools",
)

BASE_RECIPE: dict[str, Any] = {
    "seed": 42,
    "init_seed": 0,
    "model": {"vocab_size": 1024, "hidden_size": 128, "num_layers": 4, "max_position_embeddings": 1024},
    "problems": {"count": 100_000, "seed": 1, "split": "train", "steps": 2, "digits": 2},
    "train": {
        "max_steps": 1150,
        "learning_rate": 1e-3,
        "batch_size": 64,
        "gradient_accumulation_steps": 1,
        "max_length": 256,
        "logging_steps": 50,
        "extra": {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 100},
    },
}
"""How ``base`` is built: the random model, the training problems and the training settings."""

AFT_RECIPE: dict[str, Any] = {
    "seed": 0,
    "problems": {"count": 4_000, "seed": 2, "split": "train", "steps": 2, "digits": 2},
    "drafts": {"k": 5, "temperature": 0.7, "top_p": 1.0, "max_tokens": 64, "direct_ratio": 0.5},
    "train": {
        "max_steps": 500,
        "learning_rate": 5e-4,
        "batch_size": 32,
        "gradient_accumulation_steps": 1,
        "max_length": 1024,
        "logging_steps": 50,
        "extra": {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 50},
    },
}
"""How ``aft`` is built from ``base``: the problems drafted on, the drafts and the training settings."""

RL_RECIPE: dict[str, Any] = {
    "seed": 0,
    "problems": {"count": 3_000, "seed": 3, "split": "train", "steps": 2, "digits": 2},
    "drafts": {"k": 8, "temperature": 0.7, "top_p": 0.95, "max_tokens": 64, "seed": 0},
    "easy_share": 0.5,
    "train": {
        "method": "grpo",
        "max_steps": 200,
        "learning_rate": 3e-5,
        "batch_size": 64,
        "gradient_accumulation_steps": 1,
        "max_length": 1024,
        "logging_steps": 10,
        "grpo": {"group_size": 8, "beta": 0.0, "drafts": [3, 6], "max_completion_length": 64},
        "extra": {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 10},
    },
}
"""How ``rl`` is built from ``aft``: the problems, ``aft``'s drafts, the easy/hard mix and GRPO's settings."""

TOOLS_RECIPE: dict[str, Any] = {
    "seed": 0,
    "problems": {"count": 3_000, "seed": 4, "split": "train", "steps": 2, "digits": 2},
    "drafts": {"k": 5, "temperature": 0.7, "top_p": 1.0, "max_tokens": 64, "seed": 0, "direct_ratio": 0.5},
    "train": {
        "max_steps": 300,
        "learning_rate": 3e-4,
        "batch_size": 32,
        "gradient_accumulation_steps": 1,
        "max_length": 1024,
        "logging_steps": 50,
        "extra": {"lr_scheduler_type": "constant_with_warmup", "warmup_steps": 30},
    },
}
"""How ``tools`` is built from ``aft``: the problems, ``base``'s drafts and the training settings."""

SUBMIT: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "submit",
        "description": "Submit the final answer.",
        "parameters": {
            "type": "object",
            "properties": {"answer": {"type": "integer"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}
"""The tool the ``tools`` model answers with: ``submit(answer)``, in OpenAI's shape."""

# Training starts from float32 copies of the bf16 weights; the checkpoint is saved in bf16 again.
_FLOAT32 = {"model_init_kwargs": {"dtype": "float32"}}


def _log(message: str) -> None:
    print(f"rebuild: {message}", file=sys.stderr, flush=True)


def _train(model: pathlib.Path, data: pathlib.Path, output: pathlib.Path, recipe: dict[str, Any]) -> Any:
    from ..finetune import TrainConfig, train

    settings = dict(recipe["train"])
    settings["extra"] = {**settings["extra"], **_FLOAT32}
    config = TrainConfig.from_mapping(
        {
            "model": str(model),
            "data": str(data),
            "output_dir": str(output),
            "seed": recipe["seed"],
            **settings,
        }
    )
    started = time.perf_counter()

    def on_log(point: Any) -> None:
        elapsed = time.perf_counter() - started
        reward = "" if point.reward is None else f" reward {point.reward:.3f}"
        _log(f"step {point.step}/{point.max_steps} loss {point.loss:.4f}{reward} ({elapsed:.0f}s)")

    return train(config, on_log=on_log)


def _card(output: pathlib.Path, name: str, text: str, facts: dict[str, Any]) -> None:
    facts = {**facts, "torch threads": _threads(), "machine": platform.machine()}
    (output / "aftlib-recipe.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    (output / "README.md").write_text(text, encoding="utf-8")
    write_manifest(output)
    _log(f"{name} written to {output} ({MANIFEST} lists its files)")


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def rebuild_base(output: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """Build the ``base`` model into ``output`` (see the module docstring); returns ``output``."""
    from ..finetune import direct_example

    recipe = BASE_RECIPE
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    init = build_tiny_model(
        workdir / "base-init",
        seed=recipe["init_seed"],
        corpus=tokenizer_corpus(),
        individual_digits=True,
        **recipe["model"],
    )
    data = workdir / "base.train.jsonl"
    problems = arithmetic_problems(**recipe["problems"])
    with data.open("w", encoding="utf-8") as handle:
        for problem in problems:
            messages = direct_example(problem["question"], problem["answer"])
            handle.write(json.dumps({"messages": [dict(m) for m in messages], "kind": "direct"}) + "\n")
    _log(f"{len(problems)} training problems in {data}")
    result = _train(init, data, output, recipe)
    facts = {
        "recipe": recipe,
        "steps": result.steps,
        "train_loss": result.train_loss,
        "last_loss": result.last_loss,
        "seconds": round(time.perf_counter() - started),
    }
    _card(output, "base", card_text("base", facts), facts)
    return output


async def _aft_data(base: pathlib.Path, problems_file: pathlib.Path, data: pathlib.Path) -> Any:
    from .._types import SamplingParams
    from ..engines import VLLMEngine
    from ..finetune import build_on_policy, read_preferences, write_dataset

    drafts = AFT_RECIPE["drafts"]
    sampling = SamplingParams(
        temperature=drafts["temperature"], top_p=drafts["top_p"], max_tokens=drafts["max_tokens"]
    )
    async with VLLMEngine(
        str(base),
        max_model_len=1024,
        seed=AFT_RECIPE["seed"],
        enforce_eager=True,
        # no prompt split over two steps: vLLM on CPU fails seeded requests whose prefill is split
        max_num_batched_tokens=65536,
    ) as engine:
        items = build_on_policy(
            engine,
            read_preferences(problems_file),
            k=drafts["k"],
            seed=AFT_RECIPE["seed"],
            sampling=sampling,
            icl_template="aft_propose",
            direct_ratio=drafts["direct_ratio"],
            cache=workdir_cache(data),
        )
        sources = {"command": "python -m aftlib.testing.rebuild aft", "k": drafts["k"], "base": str(base)}
        return await write_dataset(data, items, sources=sources)


def workdir_cache(data: pathlib.Path) -> pathlib.Path:
    """The draft cache beside a dataset (``aftlib data`` keeps it at the same place)."""
    from ..finetune._drafts import drafts_path

    return drafts_path(data)


def rebuild_aft(base: pathlib.Path, output: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """Build the ``aft`` model from ``base`` into ``output`` (see the module docstring); returns it."""
    import anyio

    recipe = AFT_RECIPE
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    problems_file = workdir / "aft.problems.jsonl"
    with problems_file.open("w", encoding="utf-8") as handle:
        for problem in arithmetic_problems(**recipe["problems"]):
            handle.write(json.dumps(problem) + "\n")
    data = workdir / "aft.train.jsonl"
    card = anyio.run(_aft_data, base, problems_file, data)
    _log(f"training data: {card.examples} in {data}")
    drafting = round(time.perf_counter() - started)
    result = _train(base, data, output, recipe)
    facts = {
        "recipe": recipe,
        "examples": card.examples,
        "steps": result.steps,
        "train_loss": result.train_loss,
        "last_loss": result.last_loss,
        "drafting_seconds": drafting,
        "seconds": round(time.perf_counter() - started),
    }
    _card(output, "aft", card_text("aft", facts), facts)
    return output


async def _drafts(
    model: pathlib.Path, prompts: pathlib.Path, traced: pathlib.Path, recipe: dict[str, Any]
) -> Any:
    """``model``'s drafts of every problem, traced (a resumable run: a rerun drafts what is missing)."""
    from .._agents import Proposer
    from .._topology import Topology
    from .._types import SamplingParams
    from .._vote import Vote
    from ..engines import VLLMEngine
    from ..run import Runner

    drafts = recipe["drafts"]
    sampling = SamplingParams(
        temperature=drafts["temperature"],
        top_p=drafts["top_p"],
        max_tokens=drafts["max_tokens"],
        n=drafts["k"],
        seed=drafts["seed"],
    )
    engine = VLLMEngine(
        str(model), max_model_len=1024, seed=recipe["seed"], enforce_eager=True, max_num_batched_tokens=65536
    )
    topology = Topology([Proposer(engine, sampling=sampling, name="draft")], Vote(on_no_answer="first"))
    async with topology:
        return await Runner(topology, prompts, traced, trace=True, concurrency=64).run()


def rebuild_rl(
    aft: pathlib.Path, output: pathlib.Path, workdir: pathlib.Path, *, easy_share: float | None = 0.5
) -> pathlib.Path:
    """Build the ``rl`` model from ``aft`` into ``output`` (see the module docstring); returns it.

    ``easy_share`` is the recipe's (AggLM's balanced mix); another value (None: every record, the
    natural mix) builds the variant that measures the mix's effect, its recipe recorded as built.
    """
    import anyio

    from ..finetune import build_rl_data

    recipe = {**RL_RECIPE, "easy_share": easy_share}
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prompts, gold = workdir / "rl.prompts.jsonl", workdir / "rl.gold.jsonl"
    with prompts.open("w", encoding="utf-8") as ask, gold.open("w", encoding="utf-8") as answers:
        for i, problem in enumerate(arithmetic_problems(**recipe["problems"])):
            ask.write(json.dumps({"id": i, "prompt": problem["question"]}) + "\n")
            answers.write(json.dumps({"id": i, **problem}) + "\n")
    traced = workdir / "rl.drafts.jsonl"
    anyio.run(_drafts, aft, prompts, traced, recipe)
    data = workdir / "rl.train.jsonl"
    card = build_rl_data(traced, gold, data, easy_share=recipe["easy_share"], seed=recipe["seed"])
    _log(f"RL data: {card.written} records ({card.easy} easy, {card.hard} hard) in {data}")
    drafting = round(time.perf_counter() - started)
    result = _train(aft, data, output, recipe)
    rewards = [p.reward for p in result.losses if p.reward is not None]
    facts = {
        "recipe": recipe,
        "records": card.to_json(),
        "steps": result.steps,
        "train_loss": result.train_loss,
        "last_loss": result.last_loss,
        "first_reward": rewards[0] if rewards else None,
        "last_reward": rewards[-1] if rewards else None,
        "drafting_seconds": drafting,
        "seconds": round(time.perf_counter() - started),
    }
    _card(output, "rl", card_text("rl", facts), facts)
    return output


def as_call(text: str) -> str:
    """A worked answer as the ``tools`` model writes it: ``#### N`` becomes a tagged call of ``submit``.

    A text without a final ``#### N`` is left as it is (a draft that never answered).
    """
    from .._tools import ToolCall, render_calls

    match = _FINAL.search(text)
    if match is None:
        return text
    return text[: match.start()] + render_calls([ToolCall.of("submit", {"answer": int(match.group(1))})])


_FINAL = re.compile(r"####\s*(-?\d+)\s*$")


def tool_example(question: str, drafts: list[str] | None, target: str) -> list[dict[str, Any]]:
    """One training chat of ``tools``: the request, then the answer with its call.

    The request is what an engine sends this model when ``submit`` is offered: the tool instructions
    joined to the system message.
    """
    from .._io import tools_in_text
    from .._templates import tool_instructions
    from .._tools import as_tools
    from ..finetune import aggregation_example, direct_example

    chat = (
        direct_example(question, target) if drafts is None else aggregation_example(question, drafts, target)
    )
    rows = [m.to_template() for m in chat]
    return [*tools_in_text(rows[:-1], tool_instructions(as_tools([SUBMIT]))), rows[-1]]


def rebuild_tools(aft: pathlib.Path, output: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """Build the ``tools`` model from ``aft`` into ``output`` (see the module docstring); returns it."""
    import anyio

    from ..finetune._examples import seeded_random
    from ._models import arithmetic_model

    recipe = TOOLS_RECIPE
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    problems = arithmetic_problems(**recipe["problems"])
    prompts = workdir / "tools.prompts.jsonl"
    with prompts.open("w", encoding="utf-8") as ask:
        for i, problem in enumerate(problems):
            ask.write(json.dumps({"id": i, "prompt": problem["question"]}) + "\n")
    traced = workdir / "tools.drafts.jsonl"
    anyio.run(_drafts, arithmetic_model("base"), prompts, traced, recipe)
    drafted = {}
    for line in traced.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("status") == "done":
            drafted[int(record["id"])] = [c["text"] for c in record["trace"][0]["layers"][0]]
    data = workdir / "tools.train.jsonl"
    counts = {"aggregation": 0, "direct": 0}
    with data.open("w", encoding="utf-8") as handle:
        for i, problem in enumerate(problems):
            target = as_call(problem["answer"])
            if i in drafted:
                references = [_reference(d) for d in drafted[i]]
                chat = tool_example(problem["question"], references, target)
                handle.write(json.dumps({"messages": chat, "kind": "aggregation"}) + "\n")
                counts["aggregation"] += 1
            if seeded_random(recipe["seed"], "direct", str(i)) < recipe["drafts"]["direct_ratio"]:
                chat = tool_example(problem["question"], None, target)
                handle.write(json.dumps({"messages": chat, "kind": "direct"}) + "\n")
                counts["direct"] += 1
    _log(f"training data: {counts} in {data}")
    drafting = round(time.perf_counter() - started)
    result = _train(aft, data, output, recipe)
    facts = {
        "recipe": recipe,
        "tool": SUBMIT,
        "examples": counts,
        "steps": result.steps,
        "train_loss": result.train_loss,
        "last_loss": result.last_loss,
        "drafting_seconds": drafting,
        "seconds": round(time.perf_counter() - started),
    }
    _card(output, "tools", card_text("tools", facts), facts)
    return output


def _reference(draft: str) -> str:
    """A draft in call form as an aggregator reads it (:attr:`aftlib.Candidate.reference`)."""
    from .._tools import CallReader, ToolChoice, as_tools

    content, calls, error = CallReader(as_tools([SUBMIT]), ToolChoice()).read(as_call(draft))
    if error is not None or not calls:
        return draft
    from .._results import Candidate

    return Candidate(0, "draft", 0, content, tool_calls=calls).reference


_COMMANDS = {
    "base": "python -m aftlib.testing.rebuild base --output arithmetic-base",
    "aft": "python -m aftlib.testing.rebuild aft --base arithmetic-base --output arithmetic-aft",
    "rl": "python -m aftlib.testing.rebuild rl --aft arithmetic-aft --output arithmetic-rl",
    "tools": "python -m aftlib.testing.rebuild tools --aft arithmetic-aft --output arithmetic-tools",
}
_WHAT = {
    "base": "A 4-layer, 128-wide Llama (about 0.92M parameters) trained from random weights to solve "
    "two-step, two-digit arithmetic word problems, answering the AFT proposal request (a system message "
    "holding one newline, then the problem) with a worked answer ending `#### N`.",
    "aft": "The `base` model after aggregation fine-tuning on its own drafts: given a problem and five "
    "drafts in the AFT aggregation request, it writes the worked answer. It still drafts (direct "
    "examples were mixed in).",
    "rl": "The `aft` model after reinforcement learning as an aggregator (GRPO, AggLM's recipe): given a "
    "problem and 3 to 6 of `aft`'s drafts in the AFT aggregation request, it was rewarded when its "
    "answer matched the gold one (math-verify), on a balanced mix of problems whose drafts' majority was "
    "right and wrong.",
    "tools": "The `aft` model taught to answer with a tool call: offered the `submit(answer)` tool (as an "
    "engine shows tools to a model whose chat template knows none), it writes the worked answer and then "
    '`<tool_call>{"name": "submit", "arguments": {"answer": N}}</tool_call>` instead of `#### N`, '
    "drafting alone or aggregating five drafts written the same way.",
}


def card_text(name: str, facts: dict[str, Any]) -> str:
    """The model card of a rebuilt model; the accuracy is measured by ``bench/aft_miniature.py``."""
    recipe = facts["recipe"]
    command, what = _COMMANDS[name], _WHAT[name]
    rewards = ""
    if facts.get("first_reward") is not None:
        first, last = facts["first_reward"], facts["last_reward"]
        rewards = f" Mean reward {first:.3f} at the first log, {last:.3f} at the last."
    return (
        f"# aftlib arithmetic-{name}\n\n{what}\n\nA toy model on a toy task, for measuring aftlib's "
        "topologies on a CPU; it knows nothing else.\n\n"
        "## Rebuild\n\n```bash\n" + command + "\n```\n\n"
        f"Measured: {facts['seconds']} s on 2 CPU cores.\n\n"
        "## Training\n\n```json\n" + json.dumps(recipe, indent=2) + "\n```\n\n"
        f"Steps {facts['steps']}, mean training loss {facts['train_loss']:.4f}, last logged loss "
        f"{facts['last_loss']:.4f}.{rewards}\n\n"
        "## Accuracy\n\nSee `docs/miniature.md` (measured by `bench/aft_miniature.py` on 500 test "
        "problems).\n"
    )


@click.command(
    "python -m aftlib.testing.rebuild",
    help="Rebuild a shipped arithmetic model (base, aft, rl or tools) from scratch into --output.",
)
@click.argument("model", type=click.Choice(["base", "aft", "rl", "tools"]))
@click.option("--output", type=click.Path(path_type=pathlib.Path), required=True, help="The folder to write.")
@click.option(
    "--base",
    type=click.Path(path_type=pathlib.Path, exists=True, file_okay=False),
    help="The base model (aft only; default: the shipped one).",
)
@click.option(
    "--aft",
    type=click.Path(path_type=pathlib.Path, exists=True, file_okay=False),
    help="The AFT model (rl and tools; default: the shipped one).",
)
@click.option(
    "--easy-share",
    default="0.5",
    show_default=True,
    help="rl only: the share of easy records, or 'all' for every record (the natural mix).",
)
@click.option("--workdir", type=click.Path(path_type=pathlib.Path), help="Where the data goes (OUTPUT.work).")
def main(
    model: str,
    output: pathlib.Path,
    base: pathlib.Path | None,
    aft: pathlib.Path | None,
    easy_share: str,
    workdir: pathlib.Path | None,
) -> None:
    """The command line: ``python -m aftlib.testing.rebuild {base,aft,rl} --output DIR``."""
    from .._errors import AftError
    from ._models import arithmetic_model

    work = workdir or output.with_name(output.name + ".work")
    try:
        if model == "base":
            rebuild_base(output, work)
        elif model == "aft":
            rebuild_aft(base or arithmetic_model("base"), output, work)
        elif model == "tools":
            rebuild_tools(aft or arithmetic_model("aft"), output, work)
        else:
            rebuild_rl(aft or arithmetic_model("aft"), output, work, easy_share=_share(easy_share))
    except AftError as exc:  # a user's mistake (an output folder in the way, ...): the message, no traceback
        raise click.ClickException(str(exc)) from None


def _share(value: str) -> float | None:
    if value == "all":
        return None
    try:
        return float(value)
    except ValueError:
        message = f"a share in [0, 1] or 'all', got {value!r}"
        raise click.BadParameter(message, param_hint="--easy-share") from None


if __name__ == "__main__":
    main()
