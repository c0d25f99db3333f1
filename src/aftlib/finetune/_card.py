"""Write a dataset: JSONL of chat examples, the skipped records beside it, and a data card.

The dataset is one JSON object per line, ``{"messages": [{"role", "content"}, ...], "kind", "source":
{"file", "line", "id"}}``, with the same types on every line, which ``datasets.load_dataset("json",
data_files=...)`` and TRL's SFT trainer read as a conversational dataset. It is written beside its
place and moved there when complete, so an earlier dataset is never half overwritten. Every skipped
record goes to ``OUT.skipped.jsonl`` and the data card ``OUT.card.json`` counts everything: examples
by kind, records read, used and skipped by reason (with a few of them), prompt and target lengths, and
the settings that made the data.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, ExitStack, aclosing
from pathlib import Path
from types import TracebackType
from typing import Any

from attrs import define, field, frozen

from .._errors import ConfigError, MissingExtraError
from .._io import atomic_write, prompt_token_ids, side_path, write_json_atomic
from .._types import Message
from ._examples import Example, Skip

__all__ = (
    "DataCard",
    "DatasetWriter",
    "card_path",
    "load_tokenizer",
    "skipped_path",
    "write_dataset",
)

_EXAMPLES_PER_REASON = 3


def card_path(output: str | os.PathLike[str]) -> Path:
    """Where the data card of ``output`` goes: ``OUT.card.json``."""
    return side_path(output, ".card.json")


def skipped_path(output: str | os.PathLike[str]) -> Path:
    """Where the skipped records of ``output`` go: ``OUT.skipped.jsonl``."""
    return side_path(output, ".skipped.jsonl")


def load_tokenizer(name: str | os.PathLike[str]) -> Any:
    """Load a Hugging Face tokenizer (a model folder) to measure lengths in tokens.

    Raises:
        ConfigError: transformers is missing, or the folder holds no tokenizer.
    """
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise MissingExtraError("measuring lengths in tokens", "train", "transformers") from exc
    try:
        return AutoTokenizer.from_pretrained(str(name))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from {str(name)!r}: {exc}", path="tokenizer") from None


@frozen
class DataCard:
    """What a dataset holds and how it was made, written as ``OUT.card.json``.

    Attributes:
        output: The dataset file.
        examples: Examples written, by kind (``aggregation``, ``direct``).
        records_read: Input records seen (bad lines included).
        records_used: Records that gave at least one example.
        skipped: Skipped records (or turns of multi-turn records), by reason.
        skipped_examples: Up to three skipped records per reason: ``{"file", "line", "id", "detail"}``.
        lengths: Per kind, ``{"prompt": stats, "target": stats}`` with ``count, min, mean, p50, p95,
            max`` in :attr:`length_unit`.
        length_unit: ``"tokens (TOKENIZER)"``, or ``"whitespace-separated words"`` when no tokenizer was
            given.
        sources: The input files, the aftlib version and the settings that made the data (k, seed,
            target mode, templates, ...).
    """

    output: str
    examples: dict[str, int]
    records_read: int
    records_used: int
    skipped: dict[str, int]
    skipped_examples: dict[str, list[dict[str, Any]]]
    lengths: dict[str, dict[str, dict[str, float]]]
    length_unit: str
    sources: dict[str, Any]

    @property
    def total_examples(self) -> int:
        """Examples of every kind."""
        return sum(self.examples.values())

    @property
    def total_skipped(self) -> int:
        """Skipped records of every reason."""
        return sum(self.skipped.values())

    def to_json(self) -> dict[str, Any]:
        """The card as written to ``OUT.card.json``."""
        return {
            "output": self.output,
            "examples": {**self.examples, "total": self.total_examples},
            "records": {"read": self.records_read, "used": self.records_used, "skipped": self.total_skipped},
            "skipped": {
                reason: {"count": count, "examples": self.skipped_examples.get(reason, [])}
                for reason, count in self.skipped.items()
            },
            "lengths": {"unit": self.length_unit, **self.lengths},
            "sources": self.sources,
        }

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> DataCard:
        """Read a card written by :func:`write_dataset`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        lengths = dict(data["lengths"])
        unit = lengths.pop("unit")
        examples = {k: v for k, v in data["examples"].items() if k != "total"}
        skipped = data["skipped"]
        return cls(
            data["output"],
            examples,
            data["records"]["read"],
            data["records"]["used"],
            {reason: entry["count"] for reason, entry in skipped.items()},
            {reason: entry["examples"] for reason, entry in skipped.items()},
            lengths,
            unit,
            data["sources"],
        )


def stats(values: Sequence[int]) -> dict[str, float]:
    """count, min, mean, p50, p95 and max of ``values`` (nearest-rank percentiles)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def rank(p: float) -> int:
        return ordered[max(math.ceil(p * len(ordered)) - 1, 0)]

    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": rank(0.5),
        "p95": rank(0.95),
        "max": ordered[-1],
    }


@define
class _Measure:
    tokenizer: Any = None

    @property
    def unit(self) -> str:
        if self.tokenizer is None:
            return "whitespace-separated words"
        return f"tokens ({getattr(self.tokenizer, 'name_or_path', type(self.tokenizer).__name__)})"

    def prompt(self, messages: Sequence[Message]) -> int:
        if self.tokenizer is None:
            return sum(len(m.content.split()) for m in messages)
        if getattr(self.tokenizer, "chat_template", None):
            return len(prompt_token_ids(self.tokenizer, messages))  # the very tokens an engine sends
        text = "\n\n".join(m.content for m in messages)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def target(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        return len(self.tokenizer.encode(text, add_special_tokens=False))


@define
class DatasetWriter:
    """Write examples and skips as they come; the dataset appears, complete, when the writer closes.

    Use it as a context manager and :meth:`add` each item; on a clean exit the dataset is moved into
    place, the skipped records and the card are written, and :attr:`card` is set. On an error nothing
    replaces an earlier dataset.

    Args:
        path: The dataset file (JSONL).
        sources: Settings to record in the card (k, seed, target mode, ...).
        tokenizer: A tokenizer (or a model folder to load one from) to count tokens; by default
            lengths are counted in whitespace-separated words.
    """

    path: Path = field(converter=Path)
    sources: Mapping[str, Any] = field(factory=dict)
    tokenizer: Any = None
    card: DataCard | None = field(default=None, init=False)
    _measure: _Measure = field(factory=_Measure, init=False)
    _files: ExitStack | None = field(default=None, init=False, repr=False)
    _out: Any = field(default=None, init=False, repr=False)
    _skipped_out: Any = field(default=None, init=False, repr=False)
    _examples: dict[str, int] = field(factory=dict, init=False)
    _records: set[tuple[str, int]] = field(factory=set, init=False, repr=False)
    _used: set[tuple[str, int]] = field(factory=set, init=False, repr=False)
    _inputs: list[str] = field(factory=list, init=False)
    _skipped: dict[str, int] = field(factory=dict, init=False)
    _skipped_examples: dict[str, list[dict[str, Any]]] = field(factory=dict, init=False)
    _lengths: dict[str, tuple[list[int], list[int]]] = field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        tokenizer = self.tokenizer
        if isinstance(tokenizer, str | os.PathLike):
            tokenizer = load_tokenizer(tokenizer)
        self._measure = _Measure(tokenizer)

    def __enter__(self) -> DatasetWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with ExitStack() as files:
            self._out = files.enter_context(atomic_write(self.path))
            self._skipped_out = files.enter_context(atomic_write(skipped_path(self.path)))
            self._files = files.pop_all()
        return self

    def _seen(self, file: str, line: int) -> tuple[str, int]:
        if file not in self._inputs:
            self._inputs.append(file)
        self._records.add((file, line))
        return (file, line)

    def add(self, item: Example | Skip) -> None:
        """Write one example, or count and list one skipped record."""
        if self._out is None:
            raise RuntimeError("use the DatasetWriter as a context manager")
        record = self._seen(item.source.file, item.source.line)
        if isinstance(item, Skip):
            self._skipped[item.reason] = self._skipped.get(item.reason, 0) + 1
            listed = self._skipped_examples.setdefault(item.reason, [])
            if len(listed) < _EXAMPLES_PER_REASON:
                listed.append({**item.source.to_json(), "detail": item.detail})
            self._skipped_out.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
            return
        self._used.add(record)
        self._examples[item.kind] = self._examples.get(item.kind, 0) + 1
        prompts, targets = self._lengths.setdefault(item.kind, ([], []))
        prompts.append(self._measure.prompt(item.prompt))
        targets.append(self._measure.target(item.target))
        self._out.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        files, self._files = self._files, None
        self._out = self._skipped_out = None
        assert files is not None, "the DatasetWriter was not entered"
        # On an error, both files are removed unwritten and an earlier dataset stays as it was; else
        # the skipped records, then the dataset, are moved into place.
        files.__exit__(exc_type, exc_val, exc_tb)
        if exc_type is not None:
            return
        if not self._skipped:
            skipped_path(self.path).unlink(missing_ok=True)
        from .. import __version__

        kinds = sorted(self._examples, key=["aggregation", "direct"].index)
        self.card = DataCard(
            output=str(self.path),
            examples={kind: self._examples.get(kind, 0) for kind in ("aggregation", "direct")},
            records_read=len(self._records),
            records_used=len(self._used),
            skipped=dict(sorted(self._skipped.items(), key=lambda kv: -kv[1])),
            skipped_examples=self._skipped_examples,
            lengths={
                kind: {"prompt": stats(self._lengths[kind][0]), "target": stats(self._lengths[kind][1])}
                for kind in kinds
            },
            length_unit=self._measure.unit,
            sources={"inputs": self._inputs, "aftlib": __version__, **self.sources},
        )
        write_json_atomic(card_path(self.path), self.card.to_json())


async def write_dataset(
    path: str | os.PathLike[str],
    items: Iterable[Example | Skip]
    | AsyncIterable[Example | Skip]
    | AbstractAsyncContextManager[AsyncIterator[Example | Skip]],
    *,
    sources: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
) -> DataCard:
    """Write a dataset, its skipped records and its data card; return the card.

    Args:
        path: The dataset file (JSONL); the card goes to ``OUT.card.json`` and the skipped records to
            ``OUT.skipped.jsonl`` (removed when none is skipped).
        items: Examples and skips: from a builder (:func:`~aftlib.finetune.build_off_policy` and
            :func:`~aftlib.finetune.build_on_policy` give a context manager, entered here), or any
            iterable or async iterable.
        sources: Settings to record in the card (k, seed, target mode, ...).
        tokenizer: A tokenizer, or a model folder to load one from, to count lengths in tokens.

    Returns:
        The data card.
    """
    writer = DatasetWriter(path, sources or {}, tokenizer)
    with writer:
        if isinstance(items, AbstractAsyncContextManager):
            async with items as entered:  # leaving it (a writing error) stops the builder's work
                async for item in entered:
                    writer.add(item)
        elif isinstance(items, AsyncIterable):
            async with AsyncExitStack() as stack:
                if isinstance(items, AsyncGenerator):  # stop its work if writing fails
                    await stack.enter_async_context(aclosing(items))
                async for item in items:
                    writer.add(item)
        else:
            for item in items:
                writer.add(item)
    assert writer.card is not None
    return writer.card
