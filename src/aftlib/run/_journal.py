"""The journal: the resumable output that ``aftlib run``, ``aftlib eval`` and ``aftlib merge`` all write.

A journal is a JSONL file of finished items, one line each, appended and flushed as each one finishes,
so a crash loses at most the items in flight. Around it live its side files: ``OUT.run.json`` (or
``OUT.eval.json``), which records what made the output (fingerprints of the input, the topology or the
judge), ``OUT.summary.json`` and ``OUT.errors.jsonl`` (the input's bad lines). Taking an output
(:meth:`Journal.claim`) holds an OS lock on it for the run, removes an earlier run's files when told to
start over, and otherwise refuses an output made from something else; resuming (:meth:`Journal.resume`)
reads the ids already done, drops a torn last line and the error lines (retried now), and repairs the
file in place.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import define, field

from .._errors import ConfigError
from .._io import atomic_write, exclusive_lock, side_path, write_json_atomic, write_text_atomic
from .._logging import get_logger
from .._records import BadLine

__all__ = (
    "Journal",
    "Refusal",
    "errors_path",
    "journal_path",
    "record_key",
    "run_journal",
    "run_path",
    "summary_path",
    "write_bad_lines",
)

Refusal = Callable[[Mapping[str, Any], Mapping[str, Any], Sequence[str]], str]
"""Says why an output made from ``earlier`` cannot take a run of ``origin``, given the keys that differ."""


def record_key(rid: Any) -> str:
    """The key of a record's id in a journal (its JSON: the id ``1`` and the id ``"1"`` differ)."""
    return json.dumps(rid)


def summary_path(output: Path) -> Path:
    """Where an output's summary goes: ``OUT.summary.json``."""
    return side_path(output, ".summary.json")


def errors_path(output: Path) -> Path:
    """Where an output's bad input lines go: ``OUT.errors.jsonl``."""
    return side_path(output, ".errors.jsonl")


def run_path(output: Path) -> Path:
    """Where a run records what made the output (input and topology fingerprints): ``OUT.run.json``."""
    return side_path(output, ".run.json")


def journal_path(output: Path, fmt: str) -> Path:
    """Where a run appends its finished records: the output itself for JSONL, else ``OUT.journal.jsonl``.

    The journal is what a rerun resumes from; the other formats are written from it at the end.
    """
    return output if fmt == "jsonl" else side_path(output, ".journal.jsonl")


def run_journal(output: Path, fmt: str) -> Journal:
    """The journal of ``aftlib run``'s output in layout ``fmt``."""
    return Journal(output, run_path(output), journal_path(output, fmt))


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


@define(eq=False)
class Journal:
    """One resumable output and its side files.

    Args:
        output: The output file the user named.
        origin_file: The side file that records what made the output (``OUT.run.json``).
        lines: The file finished items are appended to: the output itself by default, or a side
            journal when the output is written in another layout at the end.
        what: What the output is, for messages (``"output"``, ``"judgments file"``).
        restart_hint: What ``--restart`` removes, for the refusal message.
    """

    output: Path = field(converter=Path)
    origin_file: Path = field(converter=Path)
    lines: Path = field(converter=Path)
    what: str = "output"
    restart_hint: str = "the output and its side files are removed"
    _origin: dict[str, Any] | None = field(default=None, init=False, repr=False)

    @lines.default
    def _lines(self) -> Path:
        return self.output

    @property
    def summary(self) -> Path:
        """``OUT.summary.json``."""
        return summary_path(self.output)

    @property
    def errors(self) -> Path:
        """``OUT.errors.jsonl``."""
        return errors_path(self.output)

    def files(self) -> tuple[Path, ...]:
        """The output and every side file, as a restart removes them."""
        return tuple(dict.fromkeys((self.output, self.lines, self.summary, self.errors, self.origin_file)))

    def check_writable(self) -> None:
        """Raise :class:`~aftlib.ConfigError` if the output is a folder or its folder is missing."""
        if self.output.is_dir():
            raise ConfigError("the output is a directory, not a file", source=str(self.output))
        if not self.output.parent.is_dir():
            raise ConfigError(
                f"the output's folder {self.output.parent} does not exist", source=str(self.output)
            )

    @contextlib.contextmanager
    def claim(
        self,
        origin: Mapping[str, Any],
        *,
        compare: Sequence[str],
        refusal: Refusal,
        restart: bool = False,
    ) -> Iterator[None]:
        """Hold the output for the block: its lock, then a restart or the check of what made it.

        Args:
            origin: What makes this run's items (recorded in :attr:`origin_file` by :meth:`resume`).
            compare: The keys of ``origin`` that must equal the earlier run's for the output to be
                resumed.
            refusal: Says why not, when they differ.
            restart: Remove an earlier run's files instead of resuming them.

        Raises:
            ConfigError: The output is a folder or has no folder; another process holds it; or it
                holds the items of another run (the refusal's words, and how to start over).
        """
        self.check_writable()
        with exclusive_lock(self.output, what=self.what):
            if restart:
                self.remove()
            self._check(origin, compare, refusal)
            try:
                yield
            finally:
                self._origin = None

    def remove(self) -> None:
        """Remove the output and its side files."""
        removed = []
        for path in self.files():
            if path.is_file():
                path.unlink()
                removed.append(path.name)
        if removed:
            get_logger(__name__, output=str(self.output)).info("started over", removed=removed)

    def earlier(self) -> dict[str, Any] | None:
        """What made the output before, as its origin file says (None when unknown or unreadable)."""
        value: Any = None
        if self.origin_file.is_file():
            with contextlib.suppress(OSError, ValueError):
                value = json.loads(self.origin_file.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else None

    def _check(self, origin: Mapping[str, Any], compare: Sequence[str], refusal: Refusal) -> None:
        earlier = self.earlier()
        has_items = self.lines.is_file() and self.lines.stat().st_size > 0
        if has_items and earlier is not None:
            changed = [key for key in compare if earlier.get(key) != origin.get(key)]
            if changed:
                raise ConfigError(
                    f"{refusal(earlier, origin, changed)}. Rerun with --restart to start over "
                    f"({self.restart_hint}), or write to another output",
                    source=str(self.output),
                )
        created = earlier.get("created") if has_items and earlier is not None else None
        self._origin = {**origin, "created": created or _iso(time.time())}

    def resume(self) -> set[str]:
        """The ids already done (as :func:`record_key`), after repairing the journal; records the origin.

        A torn last line (a run killed while writing), lines that are not JSON objects with an id, error
        lines (retried now) and repeated ids are dropped; the file is rewritten atomically only when
        something was dropped. The origin checked by :meth:`claim` is written to :attr:`origin_file`.
        """
        done: set[str] = set()
        if self.lines.exists():
            keep: list[str] = []
            dropped = 0
            with self.lines.open(encoding="utf-8") as handle:
                for text in handle:
                    try:
                        value = json.loads(text)
                        key = record_key(value["id"])
                        ok = text.endswith("\n") and value.get("status") == "done" and key not in done
                    except (json.JSONDecodeError, AttributeError, KeyError, TypeError):
                        ok = False
                    if ok:
                        done.add(key)
                        keep.append(text)
                    else:
                        dropped += 1
            if dropped:
                write_text_atomic(self.lines, "".join(keep))
                get_logger(__name__, output=str(self.lines)).info(
                    "repaired output", kept=len(keep), dropped=dropped
                )
        if self._origin is not None:
            write_json_atomic(self.origin_file, self._origin)
        return done

    @contextlib.contextmanager
    def appender(self) -> Iterator[Callable[[Mapping[str, Any]], None]]:
        """Append items for the block: each call writes one JSON line and flushes it.

        The write has no await in it, so in async code an item is written whole or not at all.
        """
        with self.lines.open("a", encoding="utf-8") as handle:

            def append(item: Mapping[str, Any]) -> None:
                handle.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")
                handle.flush()

            yield append

    def done(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each done item of the journal as ``(text, value)``; lines that are not JSON are skipped."""
        if not self.lines.is_file():
            return
        with self.lines.open(encoding="utf-8") as handle:
            for text in handle:
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(value, dict) and value.get("status") == "done" and "id" in value:
                    yield text, value

    def latest(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Each id's last whole line as ``(text, value)``, by :func:`record_key`.

        A done line wins over an error line, and a torn last line is left out (reading only: the file
        is not repaired).
        """
        lines: dict[str, tuple[str, dict[str, Any]]] = {}
        if not self.lines.is_file():
            return lines
        with self.lines.open(encoding="utf-8") as handle:
            for text in handle:
                try:
                    value = json.loads(text)
                    key = record_key(value["id"])
                except (ValueError, TypeError, KeyError):
                    continue
                if not text.endswith("\n") or not isinstance(value, dict):
                    continue
                earlier = lines.get(key)
                if earlier is None or earlier[1].get("status") != "done":
                    lines[key] = (text, value)
        return lines

    def write_summary(self, data: Mapping[str, Any]) -> None:
        """Write ``OUT.summary.json`` atomically."""
        write_json_atomic(self.summary, data)

    def write_bad(self, source: Path, bad: Sequence[BadLine]) -> Path | None:
        """Write the input's bad lines to ``OUT.errors.jsonl`` (or remove it when there are none).

        Returns:
            The errors file, or None when there were no bad lines.
        """
        return write_bad_lines(self.errors, source, bad)


def write_bad_lines(path: Path, source: Path, bad: Sequence[BadLine]) -> Path | None:
    """Write ``bad`` lines of ``source`` to ``path`` atomically (``file``, ``line``, ``error``, ``text``).

    With no bad lines, ``path`` is removed and None returned.
    """
    if not bad:
        path.unlink(missing_ok=True)
        return None
    with atomic_write(path) as handle:
        for item in bad:
            entry = {"file": str(source), "line": item.line, "error": item.error, "text": item.text}
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return path
