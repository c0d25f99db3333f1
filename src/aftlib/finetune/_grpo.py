"""Aggregators trained by reinforcement: GRPO prompts from drafts, rewarded by the math judge's check.

An RL record (the output of ``aftlib data rl``) holds a problem, drafts of it and the gold answer::

    {"id": "17", "messages": [{"role": "user", "content": "Tom has 23 apples. ..."}],
     "drafts": ["23 + 48 = 71. ... #### 52", "... #### 51", ...], "answer": "52",
     "majority_right": true}

For each record, :func:`grpo_rows` draws ``drafts`` of them (a fixed number, or one drawn per record
from a range, as AggLM varies m), seeded by the training seed and the record's id, and builds the
aggregation request with the same template :class:`~aftlib.Aggregator` uses at inference; TRL renders it
with the model's chat template and the generation prompt, as :class:`~aftlib.engines.VLLMEngine` does, so
the policy is trained on the very tokens it will be served (a test pins it). :func:`reward_functions`
gives GRPO its rewards: 1 when the completion's answer (found by :class:`~aftlib.AnswerExtractor`)
matches the gold answer by math-verify, else 0, plus an optional ``format_reward`` when an answer is
found at all.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attrs import field, frozen

from .._errors import ConfigError, InputError
from .._extract import AnswerExtractor
from .._io import iter_json, render_prompt
from .._templates import as_template
from .._types import Message, as_conversation
from ..config._converter import config_class

__all__ = ("GrpoSettings", "RlRecord", "grpo_rows", "prompt_text", "read_rl_records", "reward_functions")


def _check_group(_: object, __: object, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ConfigError(
            f"group_size is the completions compared per prompt, at least 2 (GRPO's advantage is relative "
            f"to the group), got {value!r}",
            path="group_size",
        )


def _check_drafts(_: object, __: object, value: Any) -> None:
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    ok = whole(value) or (
        isinstance(value, tuple) and len(value) == 2 and all(whole(v) for v in value) and value[0] <= value[1]
    )
    if not ok:
        raise ConfigError(
            f"drafts is a number of drafts per prompt (at least 1) or a range [low, high], got {value!r}",
            path="drafts",
        )


def _drafts(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_number(name: str, low: float, *, inclusive: bool = True) -> Any:
    def check(_: object, __: object, value: Any) -> None:
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not number or value < low or (not inclusive and value == low):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{name} is a number {bound}, got {value!r}", path=name)

    return check


def _check_tokens(_: object, __: object, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"max_completion_length is a number of tokens of at least 1, got {value!r}",
            path="max_completion_length",
        )


@config_class("GRPO settings", typed=False)
@frozen
class GrpoSettings:
    """How ``aftlib train`` trains with ``method: grpo`` (TRL's ``GRPOTrainer``).

    Attributes:
        group_size: Completions sampled per prompt and compared with each other (TRL's
            ``num_generations``); at least 2. ``batch_size`` counts completions, so it is a multiple of it.
        beta: The weight of the KL penalty to the starting model (0: none, as DAPO and TRL's default).
        drafts: Drafts per prompt: a number, or ``[low, high]`` to draw one per record (AggLM varies it).
        max_completion_length: The most tokens of a completion.
        temperature: The sampling temperature of the completions.
        format_reward: Added to the reward when the completion has an answer the extractor finds (0: the
            reward is correctness alone).
        template: The aggregation template (the one the served topology uses).
    """

    group_size: int = field(default=8, validator=_check_group)
    beta: float = field(default=0.0, validator=_check_number("beta", 0.0))
    drafts: int | tuple[int, int] = field(default=5, converter=_drafts, validator=_check_drafts)
    max_completion_length: int = field(default=256, validator=_check_tokens)
    temperature: float = field(default=1.0, validator=_check_number("temperature", 0.0, inclusive=False))
    format_reward: float = field(default=0.0, validator=_check_number("format_reward", 0.0))
    template: str = "aft_aggregate"


@frozen
class RlRecord:
    """One problem to aggregate: its conversation, its drafts and its gold answer."""

    where: str
    id: str
    conversation: tuple[Message, ...]
    drafts: tuple[str, ...]
    answer: str
    majority_right: bool | None = None


def read_rl_records(paths: Sequence[str]) -> tuple[list[RlRecord], list[str]]:
    """Read RL records; malformed ones are errors, records without drafts are skipped and listed.

    Returns:
        The records, and where each one without drafts was.

    Raises:
        InputError: A line is not an RL record (the error names the file, the line and the key).
        ConfigError: A record has no gold answer: the reward could not score it (raised before any
            model is loaded).
    """
    records: list[RlRecord] = []
    skipped: list[str] = []
    for path in paths:
        for item in iter_json(path, what="RL data"):
            where = f"{path}:{item.line}"
            if item.error is not None:
                raise InputError(item.error, where=where)
            value = item.value
            if not isinstance(value, Mapping):
                raise InputError(f"an RL record is a JSON object, got {type(value).__name__}", where=where)
            answer = value.get("answer")
            if not isinstance(answer, str | int | float) or isinstance(answer, bool) or str(answer) == "":
                raise ConfigError(
                    "the reward scores completions against a gold 'answer', and this record has none; "
                    "build RL data with aftlib data rl (it joins the gold answers)",
                    source=where,
                    path="answer",
                )
            drafts = value.get("drafts")
            if drafts is None or drafts == []:
                skipped.append(where)
                continue
            if not isinstance(drafts, list) or not all(isinstance(d, str) for d in drafts):
                raise InputError("'drafts' is a list of texts", where=where)
            messages = value.get("messages")
            if messages is None:
                raise InputError("an RL record needs 'messages', the conversation to answer", where=where)
            try:
                conversation = as_conversation(messages, path="messages")
            except InputError as exc:
                raise InputError(exc.message, where=f"{where}: {exc.where or 'messages'}") from None
            right = value.get("majority_right")
            records.append(
                RlRecord(
                    where,
                    str(value.get("id", where)),
                    conversation,
                    tuple(drafts),
                    str(answer),
                    right if isinstance(right, bool) else None,
                )
            )
    if not records:
        raise InputError("no RL record with drafts", where=", ".join(paths))
    return records, skipped


Row = dict[str, Any]


def grpo_rows(records: Sequence[RlRecord], settings: GrpoSettings, seed: int) -> list[Row]:
    """One training row per record: the aggregation request (``prompt``, as messages) and the gold answer.

    The drafts a prompt reads are drawn per record from ``seed`` and its id: the same run builds the
    same prompts. A record with fewer drafts than asked reads all it has.
    """
    template = as_template(settings.template)
    rows: list[Row] = []
    for record in records:
        rng = random.Random(f"{seed}:{record.id}")
        if isinstance(settings.drafts, int):
            count = settings.drafts
        else:
            low, high = settings.drafts
            count = rng.randint(low, high)
        chosen = rng.sample(list(record.drafts), min(count, len(record.drafts)))
        messages = template.messages(record.conversation, chosen)
        rows.append({"prompt": [dict(m) for m in messages], "answer": record.answer})
    return rows


def prompt_text(tokenizer: Any, row: Row) -> str:
    """A row's prompt as the model reads it: rendered by the chat template with the generation prompt."""
    return render_prompt(tokenizer, row["prompt"])


def _text(completion: Any) -> str:
    """A completion's text: TRL gives a string, or for chat prompts a list with the assistant's message."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion if isinstance(m, Mapping))


RewardFunction = Callable[..., list[float]]


def reward_functions(settings: GrpoSettings) -> tuple[list[RewardFunction], list[float]]:
    """GRPO's reward functions and their weights: correctness, and the format reward when it is set.

    Correctness is 1.0 when the completion's extracted answer matches the row's gold ``answer`` by the
    math judge's comparison (math-verify, in process: TRL calls rewards synchronously), else 0.0.
    """
    from ..evaluate._math import answers_match

    found = AnswerExtractor()  # the math judge's: ####, "the answer is", \boxed{}, the last number

    def correctness(completions: Sequence[Any], answer: Sequence[str], **_: Any) -> list[float]:
        scores = []
        for completion, gold in zip(completions, answer, strict=True):
            got = found.extract(_text(completion)).answer
            expected = found.extract(gold).answer or gold
            scores.append(1.0 if got is not None and answers_match(expected, got)[0] else 0.0)
        return scores

    def answer_format(completions: Sequence[Any], **_: Any) -> list[float]:
        return [1.0 if found.extract(_text(c)).answer is not None else 0.0 for c in completions]

    if settings.format_reward > 0:
        return [correctness, answer_format], [1.0, settings.format_reward]
    return [correctness], [1.0]
