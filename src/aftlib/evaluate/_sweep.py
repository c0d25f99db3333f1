"""Ablation sweeps: a grid of topologies over one prompt set, each cell answered, judged and costed.

A sweep file names a base config (a topology file or the AFT reference config), the axes to vary (key
paths of the base file, each with a list of values), the prompts, a judge and optionally a price table.
Every cell of the grid runs through :class:`~aftlib.Runner` into ``DIR/cells/<cell>/answers.jsonl``
and is judged by the eval runner into ``DIR/cells/<cell>/judgments.jsonl``, both resumable per record;
a cell whose ``result.json`` says it is done is skipped on a rerun.

Engines: cells whose engine entries are identical share one engine, started once for the whole sweep,
wrapped in one :class:`~aftlib.engines.CachingEngine` on ``DIR/cache``, so a request two cells send
(the same proposals, say) is generated once. That is deliberate: common random numbers, the cells then
differ by what they change, not by sampling noise.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from attrs import define, field, frozen

from .._accounting import PriceTable
from .._errors import AftError, ConfigError
from .._io import file_fingerprint, fingerprint, read_yaml, write_json_atomic
from .._logging import get_logger
from .._topology import Topology
from ..config._converter import at, config_class, structure
from ..config._engines import EngineHook
from ..engines._base import Engine
from ..engines._cache import CachingEngine
from ..engines._pool import EnginePool
from ..run import RunSummary, run_journal
from ._answers import read_baseline
from ._evaluation import Evaluation, judge_settings
from ._factory import JUDGES, join_answers, judge_from_config
from ._judge import EvalItem, EvalSummary, Judge, Judgment, mean_and_standard_error
from ._report import write_reports

__all__ = (
    "CellResult",
    "Sweep",
    "SweepCell",
    "SweepConfig",
    "SweepJudgeConfig",
    "SweepReport",
    "parse_key_path",
)

METRICS = {"math": "accuracy", "alpaca_eval": "win_rate", "mt_bench": "average"}
"""The metric a sweep reports for each judge (its ``standard_error`` beside it)."""

_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")


def _positive(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{attribute.name} must be at least 1, got {value}", path=attribute.name)


def _limit(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"limit must be >= 0, got {value}", path="limit")


@config_class("a sweep judge")
@frozen
class SweepJudgeConfig:
    """The ``judge`` of a sweep file.

    Attributes:
        type: ``math`` (needs ``references`` unless the prompts carry an ``answer``), ``alpaca_eval``
            (needs ``baseline`` and ``config``) or ``mt_bench`` (``questions``, ``references`` and
            ``config``).
        references: Gold answers (math, GSM8K layout) or reference answers (MT-Bench).
        baseline: The baseline's AlpacaEval outputs (alpaca_eval).
        questions: The MT-Bench questions (mt_bench).
        config: A judge config as ``aftlib eval --config`` reads it: the judge engine under ``engine``
            and the judge's settings beside it.
        metric: The summary metric to report; the judge's main one by default.
    """

    type: str
    references: str | None = None
    baseline: str | None = None
    questions: str | None = None
    config: str | None = None
    metric: str | None = None


@config_class("a sweep file")
@frozen
class SweepConfig:
    """A sweep file, structured (paths relative to the sweep file).

    Attributes:
        base: The base topology file or AFT reference config.
        axes: Key paths of the base file (``generation_params.n``, ``layers``,
            ``agents.draft.sampling.temperature``, ``layers[0].agents``), each with its list of values.
        variants: Named sets of values, each a mapping of key paths to values (``{layers: [[draft]],
            final: vote}``): topologies that differ in several keys at once, side by side. Every
            variant is crossed with the grid of the axes; the cells' ``variant`` column names it.
        prompts: The prompts, any input ``aftlib run`` reads.
        judge: How each cell is judged.
        limit: Only the first ``limit`` prompts.
        prices: A price table, for the cost per record.
        concurrency: Records (and judgments) in flight at once, per cell.
        trace: Write every layer's candidates into each answer line (``aftlib run --trace``), to
            measure the drafts too (how often they are right, pass@k).
    """

    base: str
    prompts: str
    judge: SweepJudgeConfig
    axes: dict[str, list[Any]] = field(factory=dict)
    variants: dict[str, dict[str, Any]] = field(factory=dict)
    limit: int | None = field(default=None, validator=_limit)
    prices: str | None = None
    concurrency: int = field(default=16, validator=_positive)
    trace: bool = False


def parse_key_path(path: str) -> list[str | int]:
    """Split a key path into keys and list indices: ``layers[0].agents`` is ``["layers", 0, "agents"]``.

    Raises:
        ConfigError: The path is empty or malformed.
    """
    parts: list[str | int] = []
    position = 0
    for match in _PART.finditer(path):
        between = path[position : match.start()]
        if between not in ("", ".") or (between == "." and not parts):
            break
        index, key = match.groups()
        parts.append(int(index) if index is not None else key)
        position = match.end()
    else:
        if parts and position == len(path):
            return parts
    raise ConfigError(f"not a key path: {path!r} (write keys with dots and list indices as [0])")


def _walk(data: Any, parts: Sequence[str | int]) -> tuple[Any, str | None]:
    """The container holding the last part, or None and what is missing."""
    node = data
    for depth, part in enumerate(parts[:-1]):
        node, missing = _step(node, part)
        if missing is not None:
            return None, f"{missing} at {_show(parts[:depth]) or 'the top'}"
    return node, None


def _step(node: Any, part: str | int) -> tuple[Any, str | None]:
    if isinstance(part, int):
        if not isinstance(node, list):
            return None, f"no list to index with [{part}]"
        if part >= len(node):
            return None, f"no item [{part}] (the list has {len(node)})"
        return node[part], None
    if not isinstance(node, Mapping):
        return None, f"no mapping with a key {part!r}"
    if part not in node:
        known = ", ".join(map(str, node)) or "none"
        return None, f"no key {part!r} (keys there: {known})"
    return node[part], None


def _show(parts: Sequence[str | int]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _set(data: Any, parts: Sequence[str | int], value: Any) -> None:
    node, _ = _walk(data, parts)
    node[parts[-1]] = copy.deepcopy(value)


def _slug(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, int | float | str):
        text = str(value)
    else:
        return fingerprint(value)[:8]
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")
    return text[:40] or fingerprint(value)[:8]


def _label(value: Any) -> str:
    if isinstance(value, int | float | str | bool) or value is None:
        return json.dumps(value) if isinstance(value, bool) or value is None else str(value)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 24 else text[:21] + "..."


@frozen
class SweepCell:
    """One cell of a sweep's grid.

    Attributes:
        id: Its name, made of its axis values (``n-2_num_aggregation-1``); its folder under ``cells/``.
        values: Its value on each axis, in the sweep file's order.
        data: The base config with those values set.
    """

    id: str
    values: Mapping[str, Any]
    data: Mapping[str, Any] = field(eq=False, repr=False)

    @property
    def label(self) -> str:
        """Its axis values for a plot: ``n=2 num_aggregation=1`` (each axis by its last key)."""
        return " ".join(f"{_last(axis)}={_label(v)}" for axis, v in self.values.items())


def _last(axis: str) -> str:
    parts = parse_key_path(axis)
    keys = [p for p in parts if isinstance(p, str)]
    return keys[-1] if keys else axis


@frozen
class CellResult:
    """What one cell gave: its quality, its cost, its status.

    Attributes:
        cell: The cell.
        status: ``done``, ``failed`` (the error says why) or ``incomplete`` (some records or judgments
            failed; a rerun retries them).
        error: Why it failed or is incomplete.
        metric: The judge metric's name.
        value: The metric's value.
        standard_error: Its standard error.
        n: Judgments summarized.
        records: Answered records.
        tokens_per_record: Mean prompt and completion tokens per answered record, tokens served from
            the cache counted as the cell's own (what the cell costs alone).
        completion_tokens_per_record: Mean completion tokens per record (generated and reused).
        cost_per_record: Mean cost per record at the price table's prices (reused tokens priced as
            generated), or None without prices.
        generated_tokens: Completion tokens the engines generated for this cell.
        reused_tokens: Completion tokens served from the cache for this cell.
        saved_tokens_per_record: Mean completion tokens per record that drafting did not generate
            (stopped for low confidence, or not drawn once the drafts agreed; an estimate, see
            :attr:`Usage.saved_tokens <aftlib.Usage.saved_tokens>`).
        summary: The judge's summary.
    """

    cell: SweepCell
    status: str
    error: str | None = None
    metric: str | None = None
    value: float | None = None
    standard_error: float | None = None
    n: int = 0
    records: int = 0
    tokens_per_record: float | None = None
    completion_tokens_per_record: float | None = None
    cost_per_record: float | None = None
    generated_tokens: int = 0
    reused_tokens: int = 0
    saved_tokens_per_record: float | None = None
    summary: Mapping[str, Any] = field(factory=dict, eq=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The cell's ``result.json``."""
        data = attrs.asdict(self, recurse=False)
        data["cell"] = self.cell.id
        data["values"] = dict(self.cell.values)
        data["summary"] = dict(self.summary)
        return data


@frozen
class SweepReport:
    """What a sweep gave.

    Attributes:
        results: One per cell, in grid order.
        output: The sweep's folder.
        files: What was written (``results.csv``, ``results.md``, the plots), by name.
        generated_tokens: Completion tokens generated in this run of the sweep, over every cell.
        reused_tokens: Completion tokens served from the cache in this run.
        engine_requests: Requests sent to the engines in this run (cache misses).
        skipped: Cells already done by an earlier run.
        pareto: The ids of the cells on the quality-cost Pareto front (by tokens per record).
    """

    results: tuple[CellResult, ...]
    output: Path
    files: Mapping[str, Path]
    generated_tokens: int = 0
    reused_tokens: int = 0
    engine_requests: int = 0
    skipped: int = 0
    pareto: tuple[str, ...] = ()


def _resolve(folder: Path, name: str | None) -> Path | None:
    return None if name is None else folder / name


@define
class Sweep:
    """A sweep read from its file: the cells, the judge's inputs and how to run them.

    Use :meth:`load`, then ``await sweep.run(output)``.

    Attributes:
        config: The sweep file, structured.
        source: The sweep file.
        base_data: The base config as read.
        cells: The grid, in order (the first axis varies slowest).
        judge: A judge object to use instead of the one the file names (for judges of your own).
        engine_hook: Gives each distinct engine before it is wrapped in the cache:
            ``engine_hook(key, build)`` (see :data:`aftlib.config._engines.EngineHook`); None builds them.
        reuse: Share the cache between cells (the point of a sweep). False gives each cell a cache of its
            own in its folder, so cells share engines but no samples (to measure what reuse saves).
        engines: The cached engines, by the key of their config entry (filled when the cells are built).
    """

    config: SweepConfig
    source: Path
    base_data: Mapping[str, Any] = field(repr=False)
    cells: tuple[SweepCell, ...]
    judge: Judge | None = None
    engine_hook: EngineHook | None = None
    reuse: bool = True
    engines: dict[str, CachingEngine] = field(factory=dict, init=False, repr=False)
    _built: dict[str, Engine] = field(factory=dict, init=False, repr=False)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        judge: Judge | None = None,
        engine_hook: EngineHook | None = None,
        reuse: bool = True,
    ) -> Sweep:
        """Read a sweep file and its base config, and lay out the grid.

        Raises:
            ConfigError: The sweep file is malformed, its base file cannot be read, an axis names no key
                of the base file (the error names the axis's key path), or an axis has no values.
        """
        source = Path(path)
        config = structure(read_yaml(source, "the sweep file"), SweepConfig, source=str(source))
        folder = source.resolve().parent
        base = folder / config.base
        with at("base", source=str(source)):
            base_data = read_yaml(base, "the sweep's base config")
        if not isinstance(base_data, Mapping):
            raise ConfigError("the base config is a mapping of keys", source=str(base))
        if not config.axes and not config.variants:
            raise ConfigError("a sweep needs at least one axis or variant", path="axes", source=str(source))
        for axis, values in config.axes.items():
            where = f"axes.{axis}"
            with at(where, source=str(source)):
                parts = parse_key_path(axis)
            if not values:
                raise ConfigError("an axis needs at least one value", path=where, source=str(source))
            _check_axis(base_data, axis, parts, values[0], base, source, where=where)
        for name, settings in config.variants.items():
            if not isinstance(settings, Mapping) or not settings:
                raise ConfigError(
                    "a variant is a non-empty mapping of key paths to values",
                    path=f"variants.{name}",
                    source=str(source),
                )
            for key, value in settings.items():
                where = f"variants.{name}.{key}"
                with at(where, source=str(source)):
                    parts = parse_key_path(key)
                _check_axis(base_data, key, parts, value, base, source, where=where)
        cells = _grid(config.axes, base_data, config.variants)
        return cls(config, source, base_data, cells, judge=judge, engine_hook=engine_hook, reuse=reuse)

    @property
    def folder(self) -> Path:
        """The sweep file's folder (its paths are relative to it)."""
        return self.source.resolve().parent

    @property
    def columns(self) -> list[str]:
        """What tells the cells apart in reports: ``variant`` (when the file has variants), then the axes."""
        return (["variant"] if self.config.variants else []) + list(self.config.axes)

    @property
    def base_path(self) -> Path:
        """The base config file."""
        return self.folder / self.config.base

    # --- building ----------------------------------------------------------------------------------

    def _hook(self, cache: Path) -> EngineHook:
        def hook(key: str, build: Callable[[], Engine]) -> Engine:
            if key not in self._built:  # one engine per distinct entry, for the whole sweep
                self._built[key] = build() if self.engine_hook is None else self.engine_hook(key, build)
            cached = f"{key}:{cache}"
            if cached not in self.engines:
                # common random numbers: unseeded requests of all cells share their samples
                self.engines[cached] = CachingEngine(self._built[key], cache, reuse_unseeded=True)
            return self.engines[cached]

        return hook

    def topology(self, cell: SweepCell, cache: Path) -> Topology:
        """Build ``cell``'s topology on the sweep's shared, cached engines (not started).

        Raises:
            ConfigError: The cell's config is not a valid topology.
        """
        from ..config import parse

        return parse(
            dict(cell.data),
            source=f"{self.base_path} (cell {cell.id})",
            base=self.base_path.resolve().parent,
            engine_hook=self._hook(cache),
        )

    def build_judge(self) -> tuple[Judge, Engine | None, dict[str, Any]]:
        """The judge, its engine (not started) if it has one, and its settings for fingerprints.

        Built by :func:`~aftlib.evaluate.judge_from_config`, as ``aftlib eval`` builds it.

        Raises:
            ConfigError: An unknown judge type, a missing input or engine, or a bad judge setting.
        """
        spec = self.config.judge
        where = str(self.source)
        if self.judge is not None:
            return self.judge, None, {"judge": judge_settings(self.judge), "engine": None}
        if spec.type not in JUDGES:
            raise ConfigError(
                f"unknown judge type {spec.type!r}; choose {', '.join(JUDGES)}",
                path="judge.type",
                source=where,
            )
        if spec.type != "math" and spec.config is None:
            raise ConfigError(
                f"the {spec.type} judge needs a judge engine: give judge.config, a file with "
                "engine: {type: ...}",
                path="judge.config",
                source=where,
            )
        instructions: tuple[str, ...] = ()
        if spec.type == "alpaca_eval":
            if spec.baseline is None:
                raise ConfigError(
                    "the alpaca_eval judge needs judge.baseline", path="judge.baseline", source=where
                )
            outputs, _ = read_baseline(self.folder / spec.baseline)
            instructions = tuple(outputs)  # the baseline's order, for the length-controlled rate
        config = None if spec.config is None else self.folder / spec.config
        setup = judge_from_config(spec.type, config, instructions=instructions)
        return setup.judge, setup.engine, setup.settings

    def items(self, answers: Path) -> tuple[list[EvalItem], dict[str, Any], list[str]]:
        """The judge's items for one cell's answers: joined as ``aftlib eval`` joins them.

        Returns:
            The items, the join's counts, and notes.
        """
        spec = self.config.judge
        joined = join_answers(
            self.judge.name if self.judge is not None else spec.type,
            answers,
            baseline=_resolve(self.folder, spec.baseline),
            questions=_resolve(self.folder, spec.questions),
            references=_resolve(self.folder, spec.references),
        )
        return list(joined.items), joined.counts, list(joined.notes)

    def _inputs(self) -> dict[str, Any]:
        spec = self.config.judge
        inputs: dict[str, Any] = {"prompts": file_fingerprint(self.folder / self.config.prompts)}
        for key in ("references", "baseline", "questions"):
            path = _resolve(self.folder, getattr(spec, key))
            if path is not None:
                inputs[key] = file_fingerprint(path)
        return inputs

    # --- running -----------------------------------------------------------------------------------

    async def run(
        self,
        output: str | Path,
        *,
        restart: bool = False,
        on_cell: Callable[[SweepCell, str], None] | None = None,
    ) -> SweepReport:
        """Run, judge and report every cell not done yet; write the results table and plots.

        Args:
            output: The sweep's folder (created if missing).
            restart: Remove the cells' earlier answers, judgments and results first (the cache is kept).
            on_cell: Called with each cell and what happens to it (``"skipped"``, ``"running"``,
                ``"judging"``, ``"done"``, ``"failed: ..."``), for a display.

        Raises:
            ConfigError: The judge, its inputs or the price table are wrong (no cell ran).
        """
        out = Path(output)
        cells_dir = _prepare(out, restart)
        cache = out / "cache"
        log = get_logger(__name__, sweep=str(self.source))
        prices = None if self.config.prices is None else PriceTable.load(self.folder / self.config.prices)
        judge, judge_engine, judge_settings = self.build_judge()
        prompts = self.folder / self.config.prompts
        inputs = self._inputs()
        notify = on_cell or (lambda cell, what: None)

        results: dict[str, CellResult] = {}
        todo: list[tuple[SweepCell, Topology]] = []
        fingerprints: dict[str, str] = {}
        for cell in self.cells:
            fingerprints[cell.id] = fingerprint(
                {"data": cell.data, "inputs": inputs, "limit": self.config.limit, "judge": judge_settings}
            )
            earlier = _earlier(cells_dir / cell.id / "result.json", fingerprints[cell.id])
            if earlier is not None:
                results[cell.id] = attrs.evolve(earlier, cell=cell)
                notify(cell, "skipped")
                continue
            try:
                topology = self.topology(cell, cache if self.reuse else cells_dir / cell.id / "cache")
            except AftError as exc:
                results[cell.id] = self._failed(cells_dir, cell, exc, fingerprints[cell.id])
                notify(cell, f"failed: {exc}")
                continue
            todo.append((cell, topology))
        skipped = len(results) - sum(1 for r in results.values() if r.status == "failed")
        engines = _distinct(e for _, t in todo for e in t.engines)
        before = _counts(engines)
        if todo:
            pool = [*engines, *([judge_engine] if judge_engine is not None else [])]
            async with EnginePool(pool):
                for cell, topology in todo:
                    results[cell.id] = await self._cell(
                        cell,
                        topology,
                        cells_dir / cell.id,
                        prompts,
                        prices,
                        judge,
                        inputs,
                        fingerprints[cell.id],
                        notify,
                        Evaluation,
                    )
        after = _counts(engines)
        ordered = tuple(results[cell.id] for cell in self.cells)

        files, pareto = write_reports(ordered, self.columns, out)
        report = SweepReport(
            ordered,
            out,
            files,
            generated_tokens=after[0] - before[0],
            reused_tokens=after[1] - before[1],
            engine_requests=after[2] - before[2],
            skipped=skipped,
            pareto=tuple(pareto),
        )
        write_json_atomic(
            out / "summary.json",
            {
                "sweep": str(self.source),
                "cells": len(ordered),
                "done": sum(1 for r in ordered if r.status == "done"),
                "failed": sum(1 for r in ordered if r.status == "failed"),
                "skipped": skipped,
                "generated_tokens": report.generated_tokens,
                "reused_tokens": report.reused_tokens,
                "engine_requests": report.engine_requests,
                "pareto": list(pareto),
                "files": {k: str(v) for k, v in files.items()},
            },
        )
        log.info(
            "sweep finished",
            cells=len(ordered),
            generated=report.generated_tokens,
            reused=report.reused_tokens,
        )
        return report

    def _failed(self, cells_dir: Path, cell: SweepCell, exc: BaseException, key: str) -> CellResult:
        result = CellResult(cell, "failed", error=str(exc))
        folder = cells_dir / cell.id
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "result.json", {**result.to_json(), "fingerprint": key})
        return result

    async def _cell(
        self,
        cell: SweepCell,
        topology: Topology,
        folder: Path,
        prompts: Path,
        prices: PriceTable | None,
        judge: Judge,
        inputs: Mapping[str, Any],
        key: str,
        notify: Callable[[SweepCell, str], None],
        evaluation: Any,
    ) -> CellResult:
        from ..run import Runner

        answers = _prepare_cell(folder) / "answers.jsonl"
        notify(cell, "running")
        runner = Runner(
            topology,
            prompts,
            answers,
            concurrency=self.config.concurrency,
            limit=self.config.limit,
            prices=prices,
            config_name=f"{self.source} cell {cell.id}",
            trace=self.config.trace,
        )
        try:
            try:
                summary = await runner.run()
            finally:
                _add_usage(folder / "usage.json", runner.summary())
            notify(cell, "judging")
            items, counts, notes = self.items(answers)
            ev = evaluation(
                judge,
                items,
                folder / "judgments.jsonl",
                concurrency=self.config.concurrency,
                inputs={**inputs, "answers": cell.id},
                counts=counts,
                notes=notes,
            )
            report = await ev.run()
        except AftError as exc:
            notify(cell, f"failed: {exc}")
            return self._failed(folder.parent, cell, exc, key)
        result = _result(
            cell,
            self.config.judge.metric,
            report.summary,
            ev.judgments(),
            answers,
            folder / "usage.json",
            topology,
            prices,
        )
        problems = []
        if summary.failed or summary.bad:
            problems.append(f"{summary.failed} record(s) failed, {summary.bad} bad input line(s)")
        if not report.ok:
            problems.append(f"{report.failed} judgment(s) failed")
        if problems:
            result = attrs.evolve(
                result, status="incomplete", error="; ".join(problems) + " (rerun to retry)"
            )
        write_json_atomic(folder / "result.json", {**result.to_json(), "fingerprint": key})
        notify(cell, result.status)
        return result


def _prepare(out: Path, restart: bool) -> Path:
    """Make the sweep's folder and its ``cells`` folder (emptied with ``restart``)."""
    out.mkdir(parents=True, exist_ok=True)
    cells = out / "cells"
    if restart and cells.exists():
        shutil.rmtree(cells)
    cells.mkdir(exist_ok=True)
    return cells


def _prepare_cell(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _check_axis(
    base: Mapping[str, Any],
    axis: str,
    parts: list[str | int],
    first: Any,
    file: Path,
    source: Path,
    *,
    where: str,
) -> None:
    node, missing = _walk(base, parts)
    last = parts[-1]
    if missing is None:
        present = isinstance(node, Mapping) and last in node
        if isinstance(last, int):
            _, missing = _step(node, last)
            present = missing is None
        elif not isinstance(node, Mapping):
            missing = f"no mapping with a key {last!r}"
        if missing is None and not present:
            missing = _unknown_leaf(base, parts, first)
    if missing is not None:
        raise ConfigError(
            f"{axis!r} names no key of the base file {file}: {missing}",
            path=where,
            source=str(source),
        )


def _unknown_leaf(base: Mapping[str, Any], parts: list[str | int], first: Any) -> str | None:
    """Whether a key absent from the base file is still a key its config knows (a default left out)."""
    from ..config import AftConfig, TopologyConfig

    trial = copy.deepcopy(dict(base))
    _set(trial, parts, first)
    kind = AftConfig if "model_name" in trial else TopologyConfig
    try:
        structure(trial, kind)
    except ConfigError as exc:
        if exc.path == _show(parts) and exc.message.startswith("unknown key"):
            return f"{exc.message} (at {_show(parts[:-1]) or 'the top'})"
    return None


def _grid(
    axes: Mapping[str, Sequence[Any]],
    base: Mapping[str, Any],
    variants: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[SweepCell, ...]:
    cells: list[SweepCell] = []
    seen: set[str] = set()
    names = list(axes)
    named: list[tuple[str | None, Mapping[str, Any]]] = list((variants or {}).items()) or [(None, {})]
    for variant, settings in named:
        for combo in itertools.product(*(axes[name] for name in names)):
            values = dict(zip(names, combo, strict=True))
            data = copy.deepcopy(dict(base))
            for key, value in {**settings, **values}.items():
                _set(data, parse_key_path(key), value)
            if variant is not None:
                values = {"variant": variant, **values}
            cid = "_".join(
                _slug(value) if name == "variant" else f"{_slug(_last(name))}-{_slug(value)}"
                for name, value in values.items()
            )
            if cid in seen:
                cid += "_" + fingerprint(values)[:6]
            seen.add(cid)
            cells.append(SweepCell(cid, values, data))
    return tuple(cells)


def _earlier(path: Path, key: str) -> CellResult | None:
    """A finished cell's result from an earlier run of the same sweep, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("status") != "done" or data.get("fingerprint") != key:
        return None
    fields = {a.name for a in attrs.fields(CellResult)} - {"cell"}
    values = {k: v for k, v in data.items() if k in fields}
    placeholder = SweepCell(str(data.get("cell")), data.get("values") or {}, {})
    try:
        return CellResult(placeholder, **values)
    except TypeError:
        return None


def _distinct(engines: Iterator[Engine] | Sequence[Engine]) -> list[Engine]:
    seen: dict[int, Engine] = {}
    for engine in engines:
        seen.setdefault(id(engine), engine)
    return list(seen.values())


def _counts(engines: Sequence[Engine]) -> tuple[int, int, int]:
    """Generated tokens, reused tokens and engine requests of the cached engines so far."""
    generated = reused = calls = 0
    for engine in engines:
        if isinstance(engine, CachingEngine):
            generated += engine.generated_tokens
            reused += engine.reused_tokens
            calls += engine.calls
    return generated, reused, calls


def _add_usage(path: Path, summary: RunSummary) -> None:
    """Add one run's usage per engine to the cell's ``usage.json`` (a resumed cell runs more than once)."""
    try:
        total = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        total = {"records": 0, "engines": {}}
    total["records"] += summary.done + summary.failed
    for name, used in summary.usage_report.engines.items():
        into = total["engines"].setdefault(name, {})
        usage = used.to_json()
        for key in (
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "reused_tokens",
            "saved_tokens",
            "requests",
        ):
            into[key] = into.get(key, 0) + int(usage.get(key, 0))
    write_json_atomic(path, total)


def _standalone_cost(path: Path, topology: Topology, prices: PriceTable | None) -> float | None:
    """The mean cost per record of a cell alone: reused tokens priced as generated, no prefix cache."""
    if prices is None:
        return None
    try:
        total = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not total.get("records"):
        return None
    by_name = {e.name: e for e in topology.engines}
    cost = 0.0
    for name, usage in total["engines"].items():
        engine = by_name.get(name)
        price = None if engine is None else prices.find(engine)
        if price is None:
            return None
        from .._types import Usage

        alone = Usage(usage["prompt_tokens"], usage["completion_tokens"] + usage.get("reused_tokens", 0))
        cost += price.cost(alone)
    return float(cost / total["records"])


def _result(
    cell: SweepCell,
    metric: str | None,
    summary: EvalSummary,
    judgments: Sequence[Judgment],
    answers: Path,
    usage: Path,
    topology: Topology,
    prices: PriceTable | None,
) -> CellResult:
    name = metric or METRICS.get(summary.judge) or next(iter(summary.metrics), None)
    value = None if name is None else summary.metrics.get(name)
    error = summary.metrics.get("standard_error")
    if error is None and name is not None:  # a judge that gives no standard error: the items' scores'
        _, error = mean_and_standard_error([j.score for j in judgments if j.score is not None])
    records = prompt = completion = reused = saved = 0
    for _, line in run_journal(answers, "jsonl").done():
        u = line.get("usage") or {}
        records += 1
        prompt += int(u.get("prompt_tokens", 0))
        completion += int(u.get("completion_tokens", 0))
        reused += int(u.get("reused_tokens", 0))
        saved += int(u.get("saved_tokens", 0))
    per = (lambda x: x / records) if records else (lambda x: None)
    return CellResult(
        cell,
        "done",
        metric=name,
        value=None if value is None else float(value),
        standard_error=None if error is None else float(error),
        n=summary.n,
        records=records,
        tokens_per_record=per(prompt + completion + reused),
        completion_tokens_per_record=per(completion + reused),
        cost_per_record=_standalone_cost(usage, topology, prices),
        generated_tokens=completion,
        reused_tokens=reused,
        saved_tokens_per_record=per(saved),
        summary=summary.to_json(),
    )
