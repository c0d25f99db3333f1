"""Traces to data: the output of ``aftlib run --trace`` as aggregation examples (distilling a topology).

Each output line of a traced run holds the input record's own fields, its ``status`` and a ``trace``
with one entry per turn (MT-Bench records have two): ``{"layers": [[candidate, ...], ...], "answer":
candidate, ...}``, a candidate being ``{"agent", "index", "text", ...}``. For every turn, the texts of
the last layer are the drafts and the final answer is the target; the conversation is rebuilt from the
record's own fields exactly as the run built it, a later turn following the earlier turns' answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

from .._errors import ConfigError, InputError
from .._io import iter_json
from .._records import parse_input_record
from .._templates import PromptTemplate, as_template
from .._types import Message
from ._examples import Example, Skip, Source, examples_for, wants_direct

__all__ = ("examples_from_trace",)


def _texts(candidates: Any, where: str) -> list[str]:
    if not isinstance(candidates, list):
        raise InputError(f"{where} must be a list of candidates")
    texts = []
    for i, candidate in enumerate(candidates):
        text = candidate.get("text") if isinstance(candidate, Mapping) else None
        if not isinstance(text, str):
            raise InputError(f"{where}[{i}] has no 'text' string")
        texts.append(text)
    return texts


def _turn(entry: Any, turn: int) -> tuple[list[str], str]:
    """(drafts, answer) of one trace entry."""
    where = f"trace[{turn}]"
    if not isinstance(entry, Mapping):
        raise InputError(f"{where} must be an object")
    layers = entry.get("layers")
    if not isinstance(layers, list):
        raise InputError(f"{where}.layers must be a list of layers")
    answer = entry.get("answer")
    text = answer.get("text") if isinstance(answer, Mapping) else None
    if not isinstance(text, str):
        raise InputError(f"{where}.answer has no 'text' string")
    drafts = _texts(layers[-1], f"{where}.layers[{len(layers) - 1}]") if layers else []
    return drafts, text


def _record_examples(
    value: Any, source: Source, *, seed: int, direct_ratio: float, template: PromptTemplate
) -> Iterator[Example | Skip]:
    if not isinstance(value, Mapping):
        yield Skip("malformed record", f"a line is a JSON object, got {type(value).__name__}", source)
        return
    own = value.get("id")
    if isinstance(own, str | int) and not isinstance(own, bool):
        source = Source(source.file, source.line, str(own))
    status = value.get("status")
    if status == "error":
        yield Skip("run failed", str(value.get("error") or "the record failed in the run"), source)
        return
    trace = value.get("trace")
    if status != "done" or not isinstance(trace, list) or not trace:
        detail = (
            "no 'trace': run aftlib run with --trace"
            if status == "done"
            else "not an output line of aftlib run (no status 'done' or 'error')"
        )
        yield Skip("no trace", detail, source)
        return
    try:
        record = parse_input_record(dict(value), line=source.line)
    except InputError as exc:
        yield Skip("malformed record", str(exc), source)
        return
    followups: list[str | None] = [None, *record.followups]
    if len(trace) != len(followups):
        yield Skip(
            "malformed record",
            f"the trace has {len(trace)} turn(s), the record {len(followups)} user turn(s)",
            source,
        )
        return
    conversation = list(record.conversation)
    previous: str | None = None
    for turn, (followup, entry) in enumerate(zip(followups, trace, strict=True)):
        if followup is not None:
            assert previous is not None
            conversation += [Message("assistant", previous), Message("user", followup)]
        try:
            drafts, answer = _turn(entry, turn)
        except InputError as exc:
            yield Skip("malformed record", str(exc), source)
            return
        previous = answer
        label = f"turn {turn + 1}: " if len(trace) > 1 else ""
        drafts = [d for d in drafts if d.strip()]
        if not drafts:
            yield Skip("no drafts", f"{label}the last layer has no draft with text", source)
            continue
        if not answer.strip():
            yield Skip("empty target", f"{label}the final answer is empty", source)
            continue
        key = source.key if turn == 0 else f"{source.key} turn {turn + 1}"
        yield from examples_for(
            conversation,
            drafts,
            answer,
            source=source,
            template=template,
            direct=wants_direct(seed, key, direct_ratio),
        )


def examples_from_trace(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    direct_ratio: float = 0.0,
    template: str | PromptTemplate = "aft_aggregate",
) -> Iterator[Example | Skip]:
    """Aggregation examples from the output of ``aftlib run --trace``: last layer's drafts -> final answer.

    Every turn of a record gives one example (MT-Bench records give two; the second turn's conversation
    holds the first turn's answer). The drafts are all the texts of the last layer before the final
    agent, in layer order (agent, then sample index).

    Args:
        path: The JSONL output of a traced run (for ``--format`` other than ``jsonl``, the
            ``OUT.journal.jsonl`` file beside the output).
        seed: Fixes which records also get a direct example.
        direct_ratio: Direct examples per aggregation example, in [0, 1].
        template: The aggregation template of the examples.

    Yields:
        Examples, and a :class:`~aftlib.finetune.Skip` for each record (or turn) that gives none:
        records that failed in the run (``"run failed"``), lines without a trace (``"no trace"``), a
        last layer without text (``"no drafts"``), an empty answer (``"empty target"``) or a malformed
        line.

    Raises:
        InputError: The file cannot be read.
    """
    if not 0 <= direct_ratio <= 1:
        raise ConfigError(f"direct_ratio must be in [0, 1], got {direct_ratio}", path="direct_ratio")
    aggregate = as_template(template)
    file = str(path)
    for item in iter_json(path, what="traced output"):
        source = Source(file, item.line)
        if item.error is not None:
            yield Skip("invalid JSON", item.error, source)
            continue
        yield from _record_examples(
            item.value, source, seed=seed, direct_ratio=direct_ratio, template=aggregate
        )
