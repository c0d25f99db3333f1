"""The eval runner: judge every item concurrently, one judgment per line, resumably.

Like ``aftlib run``: each judgment is appended to the output as one JSON line and flushed as soon as
it is done, so a crash loses at most the judgments in flight; rerunning skips the ids already judged,
repairs a torn last line and retries the items whose judge call failed. While it runs it holds an
exclusive lock on the output; ``OUT.eval.json`` records a fingerprint of the judge's settings and of
its inputs, and a rerun with other ones is refused (unless told to restart). At the end (and when
interrupted) ``OUT.summary.json`` gets the judge's metrics over every judgment in the output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream
from attrs import define, field, frozen

from .._errors import AftError, ConfigError
from .._io import fingerprint, side_path
from .._logging import get_logger
from .._types import Usage
from .._util import unwrap_group
from ..engines._base import Engine
from ..run import Journal, RunStats, record_key
from ._judge import EvalItem, EvalSummary, Judge, Judgment

__all__ = ("EvalReport", "Evaluation", "eval_path", "judge_settings")


def eval_path(output: Path) -> Path:
    """Where an evaluation records what made its judgments (settings and inputs): ``OUT.eval.json``."""
    return side_path(output, ".eval.json")


def _plain(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON for a fingerprint: never a repr with a memory address in it."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if depth > 4:
        return type(value).__name__
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_plain(v, depth + 1) for v in value]
        if isinstance(value, set | frozenset):
            items.sort(key=str)
        if len(items) > 32:  # a long list (a set's instructions) by its digest, not in full
            return {"items": len(items), "fingerprint": fingerprint(items)}
        return items
    if attrs.has(type(value)):
        return {
            "type": type(value).__name__,
            **{
                f.name: _plain(getattr(value, f.name), depth + 1)
                for f in attrs.fields(type(value))
                if not f.name.startswith("_") and not isinstance(getattr(value, f.name), Engine)
            },
        }
    name = getattr(value, "name", None)
    return {"type": type(value).__name__, "name": name if isinstance(name, str) else None}


def judge_settings(judge: Judge) -> dict[str, Any]:
    """What decides a judge's verdicts, as JSON (fingerprinted by :class:`Evaluation`).

    The judge's ``describe()`` when it has one; else, for an attrs judge, its fields (engines by name
    only), else its name.
    """
    describe = getattr(judge, "describe", None)
    if callable(describe):
        settings: dict[str, Any] = dict(describe())
        return settings
    if attrs.has(type(judge)):
        fields = _plain(judge)
        fields.pop("type", None)
        return {"judge": judge.name, **fields, "engines": [engine.name for engine in judge.engines]}
    return {"judge": judge.name}


@frozen
class EvalReport:
    """What an evaluation did, around its judge's summary.

    Attributes:
        summary: The judge's metrics over every judgment in the output (this run's and earlier ones).
        judged: Items judged in this run.
        resumed: Items skipped because the output already had their judgment.
        failed: Items whose judge call failed (written as error lines; retried by a rerun).
        usage: The judge engine's tokens over the judgments summarized.
        counts: The join's ``matched``, ``missing`` and ``extra``.
        notes: The join's notes and the run's, after the judge's own.
        interrupted: The run was cancelled before every item was judged.
        output: The judgments file.
    """

    summary: EvalSummary
    judged: int
    resumed: int
    failed: int
    usage: Usage
    counts: Mapping[str, int]
    notes: tuple[str, ...]
    interrupted: bool
    output: Path

    @property
    def ok(self) -> bool:
        """True when every item has a judgment."""
        return not self.failed and not self.interrupted

    def to_json(self) -> dict[str, Any]:
        """The summary file: ``judge``, ``n``, the metrics, notes, counts, tokens and run counts."""
        data = self.summary.to_json()
        data["notes"] = list(self.notes)
        data.update(self.counts)
        data["tokens"] = {
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
        }
        data["run"] = {
            "judged": self.judged,
            "resumed": self.resumed,
            "failed": self.failed,
            "interrupted": self.interrupted,
        }
        data["output"] = str(self.output)
        return data


def _judgment(value: Mapping[str, Any]) -> Judgment:
    usage = value.get("usage") or {}
    details = {k: v for k, v in value.items() if k not in ("id", "judge", "score", "status", "usage")}
    return Judgment(
        str(value["id"]),
        str(value.get("judge")),
        value.get("score"),
        details,
        Usage(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        ),
    )


@define
class Evaluation:
    """Judges every item with one judge, concurrently and resumably (see the module docs).

    Args:
        judge: The judge (its engines already started).
        items: The items to judge, with unique ids.
        output: The judgments file (JSONL).
        concurrency: The most judge calls in flight at once.
        on_progress: Called with the live :class:`~aftlib.RunStats` when the run starts and after each
            judgment.
        restart: Start over: remove an earlier run's judgments and side files instead of resuming.
        settings: What decides the judge's verdicts, as JSON (fingerprinted); by default
            :func:`judge_settings`.
        inputs: What the items came from (file fingerprints, ...), as JSON (fingerprinted).
        counts: The join's ``matched``, ``missing`` and ``extra``, for the summary.
        notes: Lines for the summary (the join's notes, bad lines).

    Raises:
        ConfigError: ``concurrency`` below 1, or two items with one id.
    """

    judge: Judge
    items: Sequence[EvalItem]
    output: Path = field(converter=Path)
    concurrency: int = 16
    on_progress: Callable[[RunStats], None] | None = None
    restart: bool = False
    settings: Mapping[str, Any] | None = None
    inputs: Mapping[str, Any] = field(factory=dict)
    counts: Mapping[str, int] = field(factory=dict)
    notes: Sequence[str] = ()
    stats: RunStats = field(factory=RunStats, init=False)
    _claimed: Journal | None = field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        seen: set[str] = set()
        for item in self.items:
            if record_key(item.id) in seen:
                raise ConfigError(f"two items have the id {item.id!r}")
            seen.add(record_key(item.id))

    # --- the output: lock and origin --------------------------------------------------------------

    def _journal(self) -> Journal:
        return Journal(
            self.output,
            eval_path(self.output),
            what="judgments file",
            restart_hint="the judgments and their side files are removed",
        )

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Take the output for this run, before any engine starts; :meth:`run` does it when not done.

        Holds the output's exclusive lock for the block, removes an earlier run's files with
        ``restart``, and otherwise checks that its judgments came from the same judge settings and
        inputs (``OUT.eval.json``).

        Raises:
            ConfigError: The output is a folder or its folder is missing, another process holds it,
                or it holds the judgments of other settings or inputs.
        """
        settings = dict(self.settings if self.settings is not None else judge_settings(self.judge))
        inputs = dict(self.inputs)
        origin = {
            "judge": self.judge.name,
            "settings_fingerprint": fingerprint(settings),
            "inputs_fingerprint": fingerprint(inputs),
            "settings": settings,
            "inputs": inputs,
        }
        journal = self._journal()
        compare = ("judge", "settings_fingerprint", "inputs_fingerprint")
        with journal.claim(origin, compare=compare, refusal=_refusal, restart=self.restart):
            self._claimed = journal
            try:
                yield
            finally:
                self._claimed = None

    # --- running ----------------------------------------------------------------------------------

    async def run(self) -> EvalReport:
        """Judge every item not judged yet and return the report (also written to ``OUT.summary.json``).

        The summary file is written even when the run is cancelled; then it says ``"interrupted": true``.

        Raises:
            ConfigError: The output cannot be written, is in use, or holds another evaluation's judgments.

        A programming error in a judge is not a failed judgment: it stops the evaluation and comes
        through as itself, with its traceback.
        """
        with unwrap_group():
            if self._claimed is not None:
                return await self._run(self._claimed)
            with self.claim():
                assert self._claimed is not None
                return await self._run(self._claimed)

    async def _run(self, journal: Journal) -> EvalReport:
        log = get_logger(__name__, output=str(self.output), judge=self.judge.name)
        done = await anyio.to_thread.run_sync(journal.resume)
        todo = [item for item in self.items if record_key(item.id) not in done]
        self.stats = RunStats(total=len(self.items))
        self.stats.resumed = len(self.items) - len(todo)
        if self.on_progress is not None:
            self.on_progress(self.stats)
        log.info("evaluation started", items=len(self.items), resumed=self.stats.resumed)
        finished = False
        send, receive = anyio.create_memory_object_stream[EvalItem](0)
        try:
            with journal.appender() as append:

                async def worker(items: MemoryObjectReceiveStream[EvalItem]) -> None:
                    async with items:
                        async for item in items:
                            line, tokens = await self._judge(item)
                            append(line)  # no await: a judgment is written whole or not at all
                            if line["status"] == "done":
                                self.stats.done += 1
                            else:
                                self.stats.failed += 1
                            self.stats.completion_tokens += tokens
                            if self.on_progress is not None:
                                self.on_progress(self.stats)

                async with anyio.create_task_group() as tg:
                    for _ in range(min(self.concurrency, max(len(todo), 1))):
                        tg.start_soon(worker, receive.clone())
                    receive.close()
                    async with send:
                        for item in todo:
                            await send.send(item)
            finished = True
        finally:
            report = self.report(interrupted=not finished)
            journal.write_summary(report.to_json())
            log.info(
                "evaluation finished" if finished else "evaluation interrupted",
                judged=report.judged,
                failed=report.failed,
            )
        return report

    async def _judge(self, item: EvalItem) -> tuple[dict[str, Any], int]:
        try:
            judgment = await self.judge.judge(item)
        except AftError as exc:  # a failed judge call is written, never dropped; a bug propagates
            get_logger(__name__, item=item.id).warning(
                "judge call failed", error=f"{type(exc).__name__}: {exc}"
            )
            return {
                "id": item.id,
                "status": "error",
                "judge": self.judge.name,
                "error": f"{type(exc).__name__}: {exc}",
            }, 0
        line = {"id": item.id, "status": "done", **judgment.to_json()}
        line["id"] = item.id
        return line, judgment.usage.completion_tokens

    def judgments(self) -> list[Judgment]:
        """The judgments in the output for this run's items (earlier runs' included), in item order."""
        wanted = {record_key(item.id): index for index, item in enumerate(self.items)}
        found: dict[str, Judgment] = {}
        for _, value in self._journal().done():
            key = record_key(value["id"])
            if key in wanted and key not in found:
                found[key] = _judgment(value)
        return sorted(found.values(), key=lambda j: wanted[record_key(j.id)])

    def report(self, *, interrupted: bool = False) -> EvalReport:
        """What the evaluation has done so far (also while it runs, or after it was cancelled)."""
        judgments = self.judgments()
        summary = self.judge.summarize(judgments)
        notes = [*summary.notes, *self.notes]
        if self.stats.failed:
            notes.append(f"{self.stats.failed} judge call(s) failed (error lines; a rerun retries them)")
        left = len(self.items) - len(judgments) - self.stats.failed
        if interrupted and left > 0:
            notes.append(f"interrupted: {left} item(s) not judged yet (rerun to resume)")
        return EvalReport(
            summary=summary,
            judged=self.stats.done,
            resumed=self.stats.resumed,
            failed=self.stats.failed,
            usage=Usage.sum(j.usage for j in judgments),
            counts=dict(self.counts),
            notes=tuple(notes),
            interrupted=interrupted,
            output=self.output,
        )


def _refusal(earlier: Mapping[str, Any], origin: Mapping[str, Any], changed: Sequence[str]) -> str:
    names = {"judge": "judge", "settings_fingerprint": "judge settings", "inputs_fingerprint": "inputs"}
    differ = " and ".join(names[key] for key in changed)
    return (
        f"holds the judgments of another evaluation (its {differ} differ: {_made_from(earlier)}; "
        f"this run: {_made_from(origin)})"
    )


def _made_from(origin: Mapping[str, Any]) -> str:
    return (
        f"judge {origin.get('judge')}, settings {origin.get('settings_fingerprint')}, "
        f"inputs {origin.get('inputs_fingerprint')}"
    )
