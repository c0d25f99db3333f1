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
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream
from attrs import define, field, frozen

from .._errors import AftError, ConfigError
from .._io import exclusive_lock, fingerprint, side_path, write_json_atomic
from .._logging import get_logger
from .._runner import RunStats, _key, _resume
from .._types import Usage
from .._util import unwrap_group
from ..engines._base import Engine
from ._judge import EvalItem, EvalSummary, Judge, Judgment

__all__ = ("EvalReport", "Evaluation", "eval_path", "judge_settings")


def eval_path(output: Path) -> Path:
    """Where an evaluation records what made its judgments (settings and inputs): ``OUT.eval.json``."""
    return side_path(output, ".eval.json")


def _summary_path(output: Path) -> Path:
    return side_path(output, ".summary.json")


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


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


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
    _claimed: bool = field(default=False, init=False, repr=False)
    _origin: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        seen: set[str] = set()
        for item in self.items:
            if _key(item.id) in seen:
                raise ConfigError(f"two items have the id {item.id!r}")
            seen.add(_key(item.id))

    # --- the output: lock and origin --------------------------------------------------------------

    def _outputs(self) -> tuple[Path, ...]:
        return (self.output, _summary_path(self.output), eval_path(self.output))

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
        output = self.output
        if output.is_dir():
            raise ConfigError("the output is a directory, not a file", source=str(output))
        if not output.parent.is_dir():
            raise ConfigError(f"the output's folder {output.parent} does not exist", source=str(output))
        with exclusive_lock(output, what="judgments file"):
            if self.restart:
                for path in self._outputs():
                    path.unlink(missing_ok=True)
            self._check_origin()
            self._claimed = True
            try:
                yield
            finally:
                self._claimed = False

    def _check_origin(self) -> None:
        settings = dict(self.settings if self.settings is not None else judge_settings(self.judge))
        inputs = dict(self.inputs)
        origin = {
            "judge": self.judge.name,
            "settings_fingerprint": fingerprint(settings),
            "inputs_fingerprint": fingerprint(inputs),
            "settings": settings,
            "inputs": inputs,
        }
        earlier: Any = None
        path = eval_path(self.output)
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):
                earlier = json.loads(path.read_text(encoding="utf-8"))
        has_judgments = self.output.is_file() and self.output.stat().st_size > 0
        if has_judgments and isinstance(earlier, dict):
            changed = [
                what
                for what, key in (
                    ("judge", "judge"),
                    ("judge settings", "settings_fingerprint"),
                    ("inputs", "inputs_fingerprint"),
                )
                if earlier.get(key) != origin[key]
            ]
            if changed:
                raise ConfigError(
                    f"holds the judgments of another evaluation (its {' and '.join(changed)} differ: "
                    f"{_made_from(earlier)}; this run: {_made_from(origin)}). Rerun with --restart to start "
                    "over (the judgments and their side files are removed), or write to another output",
                    source=str(self.output),
                )
        created = earlier.get("created") if has_judgments and isinstance(earlier, dict) else None
        self._origin = {**origin, "created": created or _iso(time.time())}

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
            if self._claimed:
                return await self._run()
            with self.claim():
                return await self._run()

    async def _run(self) -> EvalReport:
        log = get_logger(__name__, output=str(self.output), judge=self.judge.name)
        done = _resume(self.output)
        if self._origin is not None:
            write_json_atomic(eval_path(self.output), self._origin)
        todo = [item for item in self.items if _key(item.id) not in done]
        self.stats = RunStats(total=len(self.items))
        self.stats.resumed = len(self.items) - len(todo)
        if self.on_progress is not None:
            self.on_progress(self.stats)
        log.info("evaluation started", items=len(self.items), resumed=self.stats.resumed)
        finished = False
        send, receive = anyio.create_memory_object_stream[EvalItem](0)
        try:
            with open(self.output, "a", encoding="utf-8") as out:  # noqa: ASYNC230 - appends of one line

                async def worker(items: MemoryObjectReceiveStream[EvalItem]) -> None:
                    async with items:
                        async for item in items:
                            line, tokens = await self._judge(item)
                            # no await from here on: a judgment is written whole or not at all
                            out.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
                            out.flush()
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
            write_json_atomic(_summary_path(self.output), report.to_json())
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
        wanted = {_key(item.id): index for index, item in enumerate(self.items)}
        found: dict[str, Judgment] = {}
        if self.output.is_file():
            with self.output.open(encoding="utf-8") as handle:
                for text in handle:
                    try:
                        value = json.loads(text)
                    except json.JSONDecodeError:
                        continue
                    if not isinstance(value, dict) or value.get("status") != "done" or "id" not in value:
                        continue
                    key = _key(value["id"])
                    if key in wanted and key not in found:
                        found[key] = _judgment(value)
        return sorted(found.values(), key=lambda j: wanted[_key(j.id)])

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


def _made_from(origin: Mapping[str, Any]) -> str:
    return (
        f"judge {origin.get('judge')}, settings {origin.get('settings_fingerprint')}, "
        f"inputs {origin.get('inputs_fingerprint')}"
    )
