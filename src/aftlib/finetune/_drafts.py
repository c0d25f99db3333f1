"""The draft cache: generated drafts and targets, one JSON line per finished piece of work.

``aftlib data`` keeps it beside the dataset as ``OUT.drafts.jsonl`` (:func:`drafts_path`). Each line is
``{"key": RECORD KEY, "part": "drafts" | "target", "settings": FINGERPRINT, "value": ...}`` and is
appended and flushed as soon as the work is done, so a crash loses only the work in flight. On a rerun,
a piece whose settings fingerprint matches is reused instead of generated again; pieces made with other
settings (another model, k, temperature, template, other drafts...) stay in the file, unused. A torn
last line (a crash in the middle of a write) is cut off before anything is appended.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO

from attrs import define, field

from .._errors import InputError
from .._io import iter_json, side_path

__all__ = ("DraftCache", "drafts_path")


def drafts_path(output: str | os.PathLike[str]) -> Path:
    """Where ``aftlib data`` keeps the draft cache of the dataset ``output``: ``OUT.drafts.jsonl``."""
    return side_path(output, ".drafts.jsonl")


def _key(value: Any) -> tuple[str, str, str] | None:
    """The (key, part, settings) of a cache line, or None when it is not one."""
    if not isinstance(value, dict) or "value" not in value:
        return None
    key, part, settings = value.get("key"), value.get("part"), value.get("settings")
    if isinstance(key, str) and isinstance(part, str) and isinstance(settings, str):
        return key, part, settings
    return None


@define
class DraftCache:
    """Generated drafts and targets by record key, kept in a JSONL file.

    Args:
        path: The file; created on first write.
    """

    path: Path = field(converter=Path)
    _index: dict[tuple[str, str, str], int] = field(factory=dict, init=False, repr=False)
    _handle: BinaryIO | None = field(default=None, init=False, repr=False)
    _reader: BinaryIO | None = field(default=None, init=False, repr=False)

    def open(self) -> None:
        """Index what the file holds (repairing a torn last line) and open it for appending.

        Raises:
            InputError: The file exists but is not a draft cache (the error names the line).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._repair()
            for item in iter_json(self.path, what="draft cache"):
                key = _key(item.value)
                if key is None or item.offset is None:
                    raise InputError(
                        "not a draft cache of aftlib data (delete it to start over)",
                        where=f"{self.path}:{item.line}",
                    )
                self._index[key] = item.offset
        self._handle = self.path.open("ab")
        self._reader = self.path.open("rb")

    def __len__(self) -> int:
        return len(self._index)

    def _repair(self) -> None:
        with self.path.open("rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)

    def get(self, key: str, part: str, settings: str) -> Any | None:
        """The stored value of ``part`` for record ``key`` made with ``settings``, or None."""
        offset = self._index.get((key, part, settings))
        if offset is None or self._reader is None:
            return None
        self._reader.seek(offset)
        return json.loads(self._reader.readline())["value"]

    def put(self, key: str, part: str, settings: str, value: Any) -> None:
        """Append one finished piece of work and flush it."""
        assert self._handle is not None, "open() the cache first"
        entry = {"key": key, "part": part, "settings": settings, "value": value}
        line = json.dumps(entry, ensure_ascii=False)
        self._handle.seek(0, os.SEEK_END)
        offset = self._handle.tell()
        self._handle.write((line + "\n").encode())
        self._handle.flush()
        self._index[(key, part, settings)] = offset

    def close(self) -> None:
        """Close the file."""
        for handle in (self._handle, self._reader):
            if handle is not None:
                handle.close()
        self._handle = self._reader = None
