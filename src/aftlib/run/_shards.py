"""Splitting a dataset over machines: shards of an input file, and merging their outputs into one.

A shard ``I/N`` holds the input items at positions ``I, I + N, I + 2N, ...``: the position counts every
item of the input from 0, bad lines included (blank lines are not items), so every record, and every bad
line, lands in exactly one shard, and the same file splits the same way on every machine. Each shard
runs as an ordinary resumable output (``aftlib run --shard I/N``, or ``Runner(shard=...)``), whose
``OUT.run.json`` records the shard. :func:`merge_shards` checks that a set of shard outputs belongs
together (the same input, the same topology, every shard of the same ``N`` exactly once, each one
complete) and writes one output with every record once, in input order, and a merged summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from attrs import field, frozen

from .._errors import ConfigError
from .._io import atomic_write, exclusive_lock, file_fingerprint, side_path, write_json_atomic
from .._logging import get_logger
from .._records import BadLine, InputRecord, read_records
from .._types import Usage
from ._codecs import FORMATS, write_format
from ._journal import Journal, errors_path, record_key, run_journal, run_path, summary_path, write_bad_lines
from ._stats import Latency, Percentiles, percentiles

__all__ = ("MergeSummary", "Shard", "merge_shards", "shard_spec")

_SPEC = "a shard is I/N: part I of N, counting from 0 (the four shards of N = 4 are 0/4, 1/4, 2/4 and 3/4)"


@frozen
class Shard:
    """One of ``count`` parts of an input file: the items at positions ``index``, ``index + count``, ...

    Positions count the input's items from 0, bad lines included (blank lines are not items), so each
    item belongs to exactly one shard, the same one on every machine.

    Attributes:
        index: Which part, counting from 0 (``0 <= index < count``).
        count: How many parts (at least 1).

    Example:
        >>> Shard.parse("1/4")
        Shard(index=1, count=4)
        >>> Shard(1, 4).holds(5), Shard(1, 4).size(10)  # of positions 0..9 it holds 1, 5 and 9
        (True, 3)
    """

    index: int
    count: int

    def __attrs_post_init__(self) -> None:
        spec = f"{self.index}/{self.count}"
        for name, value in (("I", self.index), ("N", self.count)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"invalid shard {spec!r}: {_SPEC}; {name} must be a whole number")
        if self.count < 1:
            raise ConfigError(f"invalid shard {spec!r}: {_SPEC}; N must be at least 1, got {self.count}")
        if self.index < 0:
            raise ConfigError(f"invalid shard {spec!r}: {_SPEC}; I must be 0 or more, got {self.index}")
        if self.index >= self.count:
            raise ConfigError(
                f"invalid shard {spec!r}: {_SPEC}; I must be less than N, and {self.index} is not below "
                f"{self.count}"
            )

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """Read ``"I/N"`` (I counts from 0), as ``aftlib run --shard`` takes it.

        Raises:
            ConfigError: The text is not two whole numbers ``I/N``, N is below 1, or I is not in ``0..N-1``.
        """
        text = spec.strip()
        index, slash, count = text.partition("/")
        if not slash:
            raise ConfigError(f"invalid shard {spec!r}: {_SPEC}; it has no '/'")
        try:
            numbers = int(index), int(count)
        except ValueError:
            raise ConfigError(f"invalid shard {spec!r}: {_SPEC}; I and N must be whole numbers") from None
        return cls(*numbers)

    def holds(self, position: int) -> bool:
        """Whether the input item at ``position`` (0-based) belongs to this shard."""
        return position % self.count == self.index

    def size(self, total: int) -> int:
        """How many of the first ``total`` input items belong to this shard."""
        return max(0, (total - self.index + self.count - 1) // self.count)

    def as_dict(self) -> dict[str, int]:
        """``{"index": I, "count": N}``, as ``OUT.run.json`` records it."""
        return {"index": self.index, "count": self.count}

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_spec(value: Shard | str | None) -> Shard | None:
    """A :class:`Shard` from itself, from ``"I/N"``, or None (a converter for options and fields).

    Raises:
        ConfigError: A text that is not a shard spec (see :meth:`Shard.parse`).
    """
    if value is None or isinstance(value, Shard):
        return value
    return Shard.parse(value)


@frozen
class MergeSummary:
    """What :func:`merge_shards` wrote.

    Attributes:
        records: Input items the shards cover (bad lines included).
        done: Records answered (written to the output).
        failed: Records whose line is an error record (in the output too, as the runner writes them).
        bad: Input lines that were not usable records (listed in ``OUT.errors.jsonl``).
        missing: Records without any line in their shard (only with ``partial``).
        shards: How many shards were merged.
        output: The merged output file.
        summary: The merged summary file, ``OUT.summary.json``.
        errors: The errors file, if any bad line was found.
        usage: The tokens of every record's line, summed.
        cost: Their cost, when every line has one.
        latency: Time to answer and to the first answer token, over every answered record.
    """

    records: int
    done: int
    failed: int
    bad: int
    missing: int
    shards: int
    output: Path
    summary: Path
    errors: Path | None = None
    usage: Usage = field(factory=Usage, eq=False)
    cost: float | None = field(default=None, eq=False)
    latency: Latency = field(factory=Latency, eq=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when every record has an answer."""
        return not (self.failed or self.bad or self.missing)


@frozen
class _Part:
    """One shard output given to merge: its path, its ``OUT.run.json`` and its shard."""

    path: Path
    origin: dict[str, Any]
    shard: Shard

    @property
    def name(self) -> str:
        return str(self.path)

    def journal(self) -> Journal:
        fmt = self.origin.get("format")
        if isinstance(fmt, str):
            return run_journal(self.path, fmt)
        side = side_path(self.path, ".journal.jsonl")  # an output recorded before formats were
        return Journal(self.path, run_path(self.path), side if side.is_file() else self.path)


def merge_shards(
    shards: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    input: str | os.PathLike[str] | None = None,
    format: str = "jsonl",
    generator: str | None = None,
    partial: bool = False,
    on_warning: Callable[[str], None] | None = None,
) -> MergeSummary:
    """Merge the outputs of ``aftlib run --shard I/N`` into one output, every record once, in input order.

    Reads each shard's ``OUT.run.json`` and checks that the shards belong together: made from the
    same input and the same topology (their fingerprints), every shard of the same ``N`` given exactly
    once, with the same ``--limit``. Then reads the input (whose fingerprint must still match) to take
    the order from it, and writes the output atomically: JSONL (each record's line as its shard wrote
    it, error records included), or ``aft`` / ``alpaca_eval`` / ``mt_bench`` as ``aftlib run --format``
    writes them (answered records only). Beside it, ``OUT.summary.json`` (counts, usage summed, time
    to answer percentiles recomputed from every record's ``timings``) and, when the input has bad
    lines, ``OUT.errors.jsonl``. Each shard output is locked while it is read, so a shard still
    running is refused.

    Args:
        shards: The shard outputs (the ``--output`` of each ``aftlib run --shard``), in any order; a
            path that is a side file of another one given (``out.0.jsonl.errors.jsonl``, which a glob
            ``out.*.jsonl`` matches too) is left out.
        output: The merged output file.
        input: The input file, when it is not where the shards' ``OUT.run.json`` says (shards made
            on other machines); it must be the same file (the same fingerprint).
        format: ``jsonl``, ``aft``, ``alpaca_eval`` or ``mt_bench``.
        generator: The model name for ``alpaca_eval`` and ``mt_bench``; by default the one the
            shards' runs recorded.
        partial: Merge shards that are not complete (some records without a line): warn, and count
            those records as missing, instead of refusing.
        on_warning: Called with each warning line (by default, logged).

    Raises:
        ConfigError: The shards do not belong together (naming the files and the mismatch), one is
            missing, given twice, not a shard or (without ``partial``) not complete; the input is not
            found or changed; or the output cannot be written. Nothing is written then.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown output format {format!r}; choose one of {', '.join(FORMATS)}")
    if not shards:
        raise ConfigError("no shard outputs to merge")
    target = Path(output)
    if target.is_dir():
        raise ConfigError("the output is a directory, not a file", source=str(target))
    if not target.parent.is_dir():
        raise ConfigError(f"the output's folder {target.parent} does not exist", source=str(target))
    given = _without_side_files([Path(path) for path in shards])
    parts = [_read_part(path, run_path(path)) for path in given]
    _check_together(parts)
    count = parts[0].shard.count
    limit = parts[0].origin.get("limit")
    source = _input_file(parts, None if input is None else Path(input))
    taken = (
        {source.resolve()} | {p.path.resolve() for p in parts} | {p.journal().lines.resolve() for p in parts}
    )
    if target.resolve() in taken:
        raise ConfigError("the output is the input or one of the shard outputs", source=str(target))
    warn = on_warning or (lambda text: get_logger(__name__).warning(text))
    by_index = {part.shard.index: part for part in parts}

    with contextlib.ExitStack() as locks:
        for part in parts:
            locks.enter_context(_locked(part.path))
        locks.enter_context(exclusive_lock(target, what="output"))
        journals = [by_index[index].journal().latest() for index in range(count)]
        lines: list[str] = []
        values: list[dict[str, Any]] = []
        order: list[InputRecord] = []
        answers: dict[str, dict[str, Any]] = {}
        bad: list[BadLine] = []
        seen: set[str] = set()
        expected, missing = Counter[int](), Counter[int]()
        covered = 0
        for position, item in enumerate(read_records(source)):
            if isinstance(limit, int) and position >= limit:
                break
            covered += 1
            if isinstance(item, InputRecord) and record_key(item.id) in seen:
                item = BadLine(item.line, f"duplicate id {item.id!r}", json.dumps(item.data))
            if isinstance(item, BadLine):
                bad.append(item)
                continue
            seen.add(record_key(item.id))
            index = position % count
            expected[index] += 1
            found = journals[index].get(record_key(item.id))
            if found is None:
                missing[index] += 1
                continue
            text, value = found
            lines.append(text)
            values.append(value)
            if value.get("status") == "done":
                answers[record_key(item.id)] = value
                order.append(item)
        if missing:
            holes = "; ".join(
                f"shard {index}/{count} ({by_index[index].name}) lacks {missing[index]} of its "
                f"{expected[index]} records"
                for index in sorted(missing)
            )
            if not partial:
                raise ConfigError(
                    f"not every shard is complete: {holes}. Rerun each with the same command (it "
                    "resumes), or merge with --partial (partial=True) to take what there is"
                )
            warn(f"merging shards that are not complete: {holes}")
        if format == "jsonl":
            with atomic_write(target) as handle:
                handle.writelines(lines)
        else:
            name = generator or parts[0].origin.get("generator") or "aftlib"
            write_format(target, format, order, answers, str(name))
        errors = write_bad_lines(errors_path(target), source, bad)
        done = sum(1 for value in values if value.get("status") == "done")
        latency = _latency(values)
        usage = _sum_usage(value.get("usage") for value in values)
        report = {
            "input": str(source),
            "output": str(target),
            "format": format,
            "merged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "shards": [
                {"shard": str(part.shard), "output": part.name, "records": expected[part.shard.index]}
                for part in sorted(parts, key=lambda p: p.shard.index)
            ],
            "records": {
                "read": covered,
                "done": done,
                "failed": len(values) - done,
                "bad": len(bad),
                "missing": sum(missing.values()),
            },
            "usage": usage,
            "latency": latency.to_json(),
        }
        summary = summary_path(target)
        write_json_atomic(summary, report)
    return MergeSummary(
        records=covered,
        done=done,
        failed=len(values) - done,
        bad=len(bad),
        missing=sum(missing.values()),
        shards=len(parts),
        output=target,
        summary=summary,
        errors=errors,
        usage=Usage(**{k: v for k, v in usage.items() if k != "cost"}),
        cost=usage.get("cost"),
        latency=latency,
    )


_SIDE_FILES = (".journal.jsonl", ".errors.jsonl", ".summary.json", ".run.json", ".lock")


def _without_side_files(paths: list[Path]) -> list[Path]:
    """The paths less the side files of others among them (a glob ``out.*.jsonl`` matches those too)."""
    named = {os.path.normpath(path) for path in paths}

    def side(path: Path) -> bool:
        text = os.path.normpath(path)
        return any(text.endswith(end) and text[: -len(end)] in named for end in _SIDE_FILES)

    return [path for path in paths if not side(path)]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold a shard output's lock while it is read: a shard whose run still goes is refused.

    A shard in a folder this process cannot write (copied read-only from another machine) has no
    run going here; it is read without the lock.
    """
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(PermissionError):
            stack.enter_context(exclusive_lock(path, what="shard output"))
        yield


def _read_part(path: Path, run: Path) -> _Part:
    if path.is_dir():
        raise ConfigError("is a directory, not a shard output", source=str(path))
    if not run.is_file():
        what = "it has no" if path.exists() else "no such file, and no"
        raise ConfigError(
            f"is not the output of an aftlib run: {what} {run.name} beside it", source=str(path)
        )
    try:
        origin = json.loads(run.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {run.name}: {exc}", source=str(path)) from None
    if not isinstance(origin, dict):
        raise ConfigError(f"{run.name} is not a JSON object", source=str(path))
    spec = origin.get("shard")
    if spec is None:
        raise ConfigError(
            "is not a shard: its run had no --shard (aftlib merge takes the outputs of aftlib run "
            "--shard I/N)",
            source=str(path),
        )
    try:
        shard = Shard(int(spec["index"]), int(spec["count"]))
    except (TypeError, KeyError, ValueError, ConfigError):
        raise ConfigError(f"{run.name} has an invalid shard {spec!r}", source=str(path)) from None
    return _Part(path, origin, shard)


def _groups(parts: Sequence[_Part], key: Callable[[_Part], Any], describe: Callable[[_Part], str]) -> str:
    """``a, b from X; c from Y``: the parts grouped by ``key``, each group described once."""
    groups: dict[Any, list[_Part]] = {}
    for part in parts:
        groups.setdefault(json.dumps(key(part), sort_keys=True, default=str), []).append(part)
    return "; ".join(f"{', '.join(p.name for p in group)} {describe(group[0])}" for group in groups.values())


def _check_together(parts: Sequence[_Part]) -> None:
    def differ(key: Callable[[_Part], Any]) -> bool:
        return len({json.dumps(key(p), sort_keys=True, default=str) for p in parts}) > 1

    def input_key(p: _Part) -> Any:
        return p.origin.get("input_fingerprint")

    def topology_key(p: _Part) -> Any:
        return p.origin.get("topology_fingerprint")

    if differ(input_key):
        groups = _groups(
            parts,
            input_key,
            lambda p: f"from input {p.origin.get('input')} (fingerprint {p.origin.get('input_fingerprint')})",
        )
        raise ConfigError(f"the shards were made from different inputs: {groups}")
    if differ(topology_key):

        def made(p: _Part) -> str:
            config = p.origin.get("config")
            by = f"config {config}" if config else "a topology built in Python"
            return f"from {by} (topology fingerprint {p.origin.get('topology_fingerprint')})"

        raise ConfigError(
            f"the shards were made with different topologies: {_groups(parts, topology_key, made)}"
        )
    if differ(lambda p: p.shard.count):
        groups = _groups(parts, lambda p: p.shard.count, lambda p: f"of N = {p.shard.count}")
        raise ConfigError(f"the outputs are shards of different splits: {groups}")
    if differ(lambda p: p.origin.get("limit")):
        groups = _groups(
            parts, lambda p: p.origin.get("limit"), lambda p: f"with --limit {p.origin.get('limit')}"
        )
        raise ConfigError(
            f"the shards were run with different --limit: {groups}; rerun them with the same one"
        )
    count = parts[0].shard.count
    by_index: dict[int, list[_Part]] = {}
    for part in parts:
        by_index.setdefault(part.shard.index, []).append(part)
    for index, given in sorted(by_index.items()):
        if len(given) > 1:
            names = " and ".join(p.name for p in given)
            raise ConfigError(f"shard {index}/{count} is given {len(given)} times: {names}")
    absent = [index for index in range(count) if index not in by_index]
    if absent:
        have = ", ".join(f"{p.shard} ({p.name})" for p in sorted(parts, key=lambda p: p.shard.index))
        raise ConfigError(
            f"missing shard(s) {', '.join(map(str, absent))} of {count}: a merge needs every shard 0 to "
            f"{count - 1}; given {have}"
        )


def _input_file(parts: Sequence[_Part], given: Path | None) -> Path:
    recorded = parts[0].origin.get("input")
    want = parts[0].origin.get("input_fingerprint")
    if given is None:
        if not isinstance(recorded, str):
            raise ConfigError(f"{parts[0].name}'s run record names no input file; pass --input")
        path = Path(recorded)
        if not path.is_file() and not path.is_absolute() and (parts[0].path.parent / path).is_file():
            path = parts[0].path.parent / path
        if not path.is_file():
            raise ConfigError(
                f"the shards' input {recorded} is not found here; pass --input with the same file (for "
                "shards made on other machines)"
            )
    else:
        path = given
        if not path.is_file():
            raise ConfigError("the input is not found (or not a file)", source=str(path))
    have = file_fingerprint(path)
    if have != want:
        raise ConfigError(
            f"the input {path} is not the file the shards were made from: its fingerprint is {have}, the "
            f"shards' input {recorded} had {want}; merge needs the same file (its order decides the output's)"
        )
    return path


def _sum_usage(usages: Iterable[Any]) -> dict[str, Any]:
    total: dict[str, Any] = dict.fromkeys(
        ("prompt_tokens", "completion_tokens", "cached_tokens", "requests", "reused_tokens", "saved_tokens"),
        0,
    )
    cost: float | None = 0.0
    for usage in usages:
        if not isinstance(usage, dict):
            cost = None
            continue
        for name in total:
            value = usage.get(name)
            if isinstance(value, int):
                total[name] += value
        if cost is not None:
            cost = cost + usage["cost"] if isinstance(usage.get("cost"), int | float) else None
    if cost is not None and total["requests"]:
        total["cost"] = round(cost, 8)
    return total


def _latency(values: Sequence[dict[str, Any]]) -> Latency:
    answer: list[float] = []
    first: list[float] = []
    for value in values:
        timings = value.get("timings")
        if value.get("status") != "done" or not isinstance(timings, dict):
            continue
        if isinstance(timings.get("elapsed"), int | float):
            answer.append(float(timings["elapsed"]))
        if isinstance(timings.get("first_token"), int | float):
            first.append(float(timings["first_token"]))
    return Latency(Percentiles(**percentiles(answer)), Percentiles(**percentiles(first)))
