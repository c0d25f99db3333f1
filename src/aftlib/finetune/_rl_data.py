"""RL data, AggLM's way: per problem, a traced run's drafts, the gold answer, the majority's verdict.

:func:`build_rl_data` reads the output of ``aftlib run --trace`` (the drafts are the texts of the last
layer before the final agent, as for :func:`~aftlib.finetune.examples_from_trace`) and a references file
of gold answers (GSM8K layout: ``{"id", "answer"}``, the answer after ``####``), and writes one RL record
per problem (the input of ``aftlib train`` with ``method: grpo``)::

    {"id": "17", "messages": [...], "drafts": [...], "answer": "52", "majority_right": false}

AggLM (arXiv 2509.06870) trains on a balanced mix: problems where the majority of drafts is wrong
(*hard*: the aggregator must do better than a vote) and right (*easy*: it must not do worse).
``easy_share`` sets the share of easy records kept, keeping as many records as that share allows
(every hard one when easy ones are in surplus); None keeps every record. The card (``OUT.card.json``)
counts both, before and after the mix, and the records skipped with their reasons.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import frozen

from .._errors import ConfigError, InputError
from .._extract import AnswerExtractor
from .._io import atomic_write, iter_json, write_json_atomic
from .._records import parse_input_record
from ._card import card_path

__all__ = ("RlCard", "build_rl_data")


@frozen
class RlCard:
    """What :func:`build_rl_data` wrote.

    Attributes:
        output: The RL records file.
        read: Lines read from the traced output.
        written: RL records written.
        easy: Records written whose drafts' majority was right.
        hard: Records written whose drafts' majority was wrong.
        available: Easy and hard records before the mix.
        easy_share: The share of easy records asked for (None: every record kept).
        skipped: Records with no RL record, by reason (``no drafts``, ``no gold``, ``run failed``, ...).
        drafts: The fewest and most drafts per record written.
    """

    output: Path
    read: int
    written: int
    easy: int
    hard: int
    available: Mapping[str, int]
    easy_share: float | None
    skipped: Mapping[str, int]
    drafts: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        """The card file's content."""
        return {
            "kind": "rl",
            "read": self.read,
            "written": self.written,
            "easy": self.easy,
            "hard": self.hard,
            "available": dict(self.available),
            "easy_share": self.easy_share,
            "skipped": dict(self.skipped),
            "drafts": {"min": self.drafts[0], "max": self.drafts[1]},
        }


def _gold(path: str | os.PathLike[str], extractor: AnswerExtractor) -> dict[str, str]:
    """Gold answers by record id, from a file of ``{"id", "answer"}`` lines."""
    gold: dict[str, str] = {}
    for item in iter_json(path, what="references"):
        where = f"{path}:{item.line}"
        if item.error is not None:
            raise InputError(item.error, where=where)
        value = item.value
        if not isinstance(value, Mapping) or "id" not in value or "answer" not in value:
            raise InputError("a reference is an object with 'id' and 'answer'", where=where)
        text = str(value["answer"])
        gold[str(value["id"])] = extractor.extract(text).answer or text.strip()
    return gold


def _majority_right(drafts: list[str], gold: str, extractor: AnswerExtractor) -> bool:
    from .._vote import Vote
    from ..evaluate._math import answers_match

    chosen, details = Vote(extractor=extractor).tally(drafts)
    return chosen is not None and answers_match(gold, str(details["answer"]))[0]


Line = dict[str, Any]


def _mix(easy: list[Line], hard: list[Line], share: float, seed: int) -> list[Line]:
    """Keep as many records as ``share`` of easy ones allows, dropping a seeded sample of the surplus."""
    rng = random.Random(seed)
    if share < 1 and len(easy) > share / (1 - share) * len(hard):
        keep = int(share / (1 - share) * len(hard))
        easy = rng.sample(easy, keep)
    elif share > 0 and len(hard) > (1 - share) / share * len(easy):
        keep = int((1 - share) / share * len(easy))
        hard = rng.sample(hard, keep)
    return easy + hard


def build_rl_data(
    traces: str | os.PathLike[str],
    references: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    easy_share: float | None = None,
    seed: int = 0,
) -> RlCard:
    """Write RL records (drafts, gold answer, whether the majority was right) from a traced run.

    Args:
        traces: The JSONL output of ``aftlib run --trace`` on the problems.
        references: Gold answers: JSON lines with ``id`` and ``answer`` (GSM8K's worked answer works).
        output: The RL records file to write (``OUT.card.json`` beside it).
        easy_share: The share of records whose majority was right, in [0, 1]; None keeps every record.
        seed: Seeds which surplus records are dropped.

    Answers are found in drafts and gold answers by the math judge's extractor.

    Returns:
        The card.

    Raises:
        ConfigError: ``easy_share`` is out of range.
        InputError: A file cannot be read, or a references line is malformed.
    """
    if easy_share is not None and (
        isinstance(easy_share, bool) or not isinstance(easy_share, int | float) or not 0 <= easy_share <= 1
    ):
        raise ConfigError(f"easy_share is a share in [0, 1], got {easy_share!r}", path="easy_share")
    found = AnswerExtractor()
    gold = _gold(references, found)
    skipped: Counter[str] = Counter()
    easy: list[dict[str, Any]] = []
    hard: list[dict[str, Any]] = []
    read = 0
    for item in iter_json(traces, what="traced output"):
        read += 1
        value = item.value
        if item.error is not None or not isinstance(value, Mapping):
            skipped["malformed line"] += 1
            continue
        if value.get("status") != "done":
            skipped["run failed"] += 1
            continue
        trace = value.get("trace")
        if not isinstance(trace, list) or not trace or not isinstance(trace[0], Mapping):
            skipped["no trace"] += 1
            continue
        try:
            record = parse_input_record(dict(value), line=item.line)
        except InputError:
            skipped["malformed line"] += 1
            continue
        layers = trace[0].get("layers")
        last = layers[-1] if isinstance(layers, list) and layers else []
        drafts = [c["text"] for c in last if isinstance(c, Mapping) and isinstance(c.get("text"), str)]
        drafts = [d for d in drafts if d.strip()]
        key = str(record.id)
        if not drafts:
            skipped["no drafts"] += 1
            continue
        if key not in gold:
            skipped["no gold"] += 1
            continue
        right = _majority_right(drafts, gold[key], found)
        line = {
            "id": key,
            "messages": [dict(m) for m in record.conversation],
            "drafts": drafts,
            "answer": gold[key],
            "majority_right": right,
        }
        (easy if right else hard).append(line)
    available = {"easy": len(easy), "hard": len(hard)}
    kept = easy + hard if easy_share is None else _mix(easy, hard, float(easy_share), seed)
    kept.sort(key=lambda r: (len(r["id"]), r["id"]))
    target = Path(output)
    with atomic_write(target) as handle:
        for line in kept:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    counts = [len(r["drafts"]) for r in kept]
    card = RlCard(
        target,
        read,
        len(kept),
        sum(r["majority_right"] for r in kept),
        sum(not r["majority_right"] for r in kept),
        available,
        None if easy_share is None else float(easy_share),
        dict(skipped),
        (min(counts, default=0), max(counts, default=0)),
    )
    write_json_atomic(card_path(target), card.to_json())
    return card
