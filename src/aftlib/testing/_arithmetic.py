"""Arithmetic word problems with worked answers: a task small models learn on a CPU.

:func:`arithmetic_problems` writes seeded problems in the GSM8K layout (``question``, and an ``answer``
that works the steps and ends ``#### N``), such as::

    {"question": "Tom has 23 apples. Tom gets 48 more and then gives away 19. How many apples does
                  Tom have now?",
     "answer": "23 + 48 = 71. 71 - 19 = 52. #### 52"}

Every problem belongs to one split, ``train``, ``dev`` or ``test``, by a hash of its arithmetic (the
start, the operations and the operands; not the names), so the splits never share a calculation,
whatever the seeds or counts that drew them.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from typing import Literal

from .._errors import ConfigError

__all__ = ("OPERATIONS", "SPLITS", "Split", "arithmetic_problems", "problem_split", "tokenizer_corpus")

Split = Literal["train", "dev", "test"]

SPLITS: tuple[Split, ...] = ("train", "dev", "test")
"""The splits, each a fixed share of all problems: 80 %, 10 % and 10 %."""

OPERATIONS = ("+", "-", "*")
"""The operations a problem can use: add, subtract and multiply (by 2 to 5)."""

_SHARES = {"dev": range(10), "test": range(10, 20)}  # of 100 buckets; the rest is train
_MAX_STEPS = 6
_MAX_DIGITS = 4

_NAMES = (
    "Tom", "Ana", "Ben", "Lea", "Sam", "Mia", "Max", "Eva", "Leo", "Zoe",
    "Omar", "Ines", "Raj", "Yuki", "Noah", "Emma",
)  # fmt: skip
_ITEMS = (
    "apples", "books", "coins", "stamps", "marbles", "pencils", "cards", "shells",
    "stickers", "cookies", "eggs", "flowers", "toys", "beads", "nuts", "tickets",
)  # fmt: skip
_ADD = ("gets {n} more", "buys {n} more", "finds {n} more", "wins {n} more")
_SUBTRACT = ("gives away {n}", "loses {n}", "sells {n}", "uses {n}")
_MULTIPLY = ("ends up with {n} times as many",)
_FACTORS = range(2, 6)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"expected an integer, got {type(value).__name__} {value!r}", path=name)
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(f"expected an integer {bounds}, got {value}", path=name)
    return value


def _check_operations(operations: object) -> tuple[str, ...]:
    if isinstance(operations, str) or not isinstance(operations, Iterable):
        raise ConfigError(
            f"expected a list of operations from {list(OPERATIONS)}, got {operations!r}", path="operations"
        )
    chosen = tuple(operations)
    unknown = [op for op in chosen if op not in OPERATIONS]
    if unknown or not chosen:
        what = f"unknown operation(s) {unknown}" if unknown else "no operation"
        raise ConfigError(f"{what}; choose from {list(OPERATIONS)}", path="operations")
    return tuple(op for op in OPERATIONS if op in chosen)


def problem_split(start: int, steps: Sequence[tuple[str, int]]) -> Split:
    """The split a calculation belongs to: a hash of the start value and the (operation, operand) steps.

    Args:
        start: The number the problem starts with.
        steps: The operations in order, each with its operand.

    Returns:
        ``"train"`` (80 % of calculations), ``"dev"`` (10 %) or ``"test"`` (10 %).
    """
    key = " ".join([str(start), *(f"{op}{n}" for op, n in steps)])
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    for split, buckets in _SHARES.items():
        if bucket in buckets:
            return split  # type: ignore[return-value]
    return "train"


def _apply(op: str, value: int, operand: int) -> int:
    return value + operand if op == "+" else value - operand if op == "-" else value * operand


def _draw(
    rng: random.Random, steps: int, digits: int, operations: tuple[str, ...]
) -> dict[str, object] | None:
    """One problem (start, steps, name, item), or None when only subtraction is left and cannot go on."""
    low, high = (1, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)
    start = rng.randint(low, high)
    value, chosen = start, []
    for _ in range(steps):
        usable = [op for op in operations if op != "-" or value >= low]
        if not usable:
            return None
        op = rng.choice(usable)
        if op == "-":
            operand = rng.randint(low, min(high, value))
        elif op == "*":
            operand = rng.choice(_FACTORS)
        else:
            operand = rng.randint(low, high)
        chosen.append((op, operand))
        value = _apply(op, value, operand)
    return {"start": start, "steps": chosen, "name": rng.choice(_NAMES), "item": rng.choice(_ITEMS)}


def _render(problem: dict[str, object], rng: random.Random) -> dict[str, str]:
    start = problem["start"]
    steps: list[tuple[str, int]] = problem["steps"]  # type: ignore[assignment]
    name, item = problem["name"], problem["item"]
    clauses = []
    work = []
    value: int = start  # type: ignore[assignment]
    for op, operand in steps:
        phrases = _ADD if op == "+" else _SUBTRACT if op == "-" else _MULTIPLY
        clauses.append(rng.choice(phrases).format(n=operand))
        after = _apply(op, value, operand)
        work.append(f"{value} {op} {operand} = {after}.")
        value = after
    action = clauses[0] if len(clauses) == 1 else ", then ".join(clauses[:-1]) + " and then " + clauses[-1]
    question = f"{name} has {start} {item}. {name} {action}. How many {item} does {name} have now?"
    return {"question": question, "answer": " ".join(work) + f" #### {value}"}


def arithmetic_problems(
    count: int,
    *,
    seed: int,
    split: Split = "test",
    steps: int = 2,
    digits: int = 2,
    operations: Sequence[str] = ("+", "-"),
) -> list[dict[str, str]]:
    """Draw ``count`` distinct arithmetic word problems of one split, in the GSM8K layout.

    The answer works each step (``"23 + 48 = 71. 71 - 19 = 52. #### 52"``), so :class:`MathJudge
    <aftlib.evaluate.MathJudge>` scores answers against it unchanged. The same arguments give the same
    problems. Problems of different splits never share a calculation (see :func:`problem_split`).

    Args:
        count: How many problems.
        seed: The seed of every random choice.
        split: ``"train"``, ``"dev"`` or ``"test"``.
        steps: Operations per problem, from 1 to 6.
        digits: Digits of the start value and of the operands of ``+`` and ``-``, from 1 to 4 (a
            multiplication's factor is 2 to 5).
        operations: The operations to draw from, among ``"+"``, ``"-"`` and ``"*"``. No intermediate
            value goes below zero.

    Returns:
        ``count`` dicts with the keys ``question`` and ``answer``.

    Raises:
        ConfigError: A setting is out of range, or the settings allow fewer than ``count`` distinct
            problems in the split; the error names the setting.
    """
    _check_int("count", count, 0)
    _check_int("seed", seed, 0)
    _check_int("steps", steps, 1, _MAX_STEPS)
    _check_int("digits", digits, 1, _MAX_DIGITS)
    chosen_operations = _check_operations(operations)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose from {list(SPLITS)}", path="split")
    rng = random.Random(f"aftlib-arithmetic:{seed}:{split}:{steps}:{digits}:{''.join(chosen_operations)}")
    problems: list[dict[str, str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < count:
        attempts += 1
        if attempts > 20 * count + 10_000:
            raise ConfigError(
                f"these settings give fewer than {count} distinct {split} problems "
                f"(found {len(problems)}); ask for fewer, or more steps or digits",
                path="count",
            )
        problem = _draw(rng, steps, digits, chosen_operations)
        if problem is None:
            continue
        start: int = problem["start"]  # type: ignore[assignment]
        calculation: list[tuple[str, int]] = problem["steps"]  # type: ignore[assignment]
        if problem_split(start, calculation) != split:
            continue
        rendered = _render(problem, rng)
        if rendered["question"] in seen:
            continue
        seen.add(rendered["question"])
        problems.append(rendered)
    return problems


def tokenizer_corpus() -> list[str]:
    """Texts that cover the task's words: names, items, phrases, a few problems and the AFT templates.

    :func:`~aftlib.testing.build_tiny_model` trains a tokenizer on them for the arithmetic models, so
    every word of a problem and of the aggregation prompt is one token or a few, and digits are single
    tokens.
    """
    from .._templates import PromptTemplate

    texts = [" ".join(_NAMES), " ".join(_ITEMS), *(["system", "user", "assistant", "\n\n"] * 20)]
    texts += [p.format(n=7) for p in (*_ADD, *_SUBTRACT, *_MULTIPLY)]
    for seed, split in enumerate(SPLITS):
        for steps in (1, 2, 3):
            problems = arithmetic_problems(40, seed=seed, split=split, steps=steps, operations=OPERATIONS)
            texts += [p["question"] + "\n" + p["answer"] for p in problems]
    aggregate = PromptTemplate("aft_aggregate").messages([], ["a", "b"])
    texts += [m.content for m in aggregate]
    return texts
