"""Ray Data: map a Ray Dataset through a topology, one topology (and its engines) per actor.

Each actor of the pool builds its own topology, from a config or a factory (engines cannot be pickled),
starts it once with ``async with topology:`` on an event loop of its own (an anyio blocking portal, one
background thread per actor) and answers every batch Ray gives it on that loop: the records of a batch
run concurrently, and two batches may be under way at once, with at most ``concurrency`` records in flight
per actor. When Ray releases the actor, its engines are closed.

Rows are input records as ``aftlib run`` reads them (``query``, ``messages``, ``turns``, ``instruction``
or ``prompt``, see :func:`~aftlib._records.parse_input_record`). Each output row keeps its input columns
and adds :data:`ADDED_COLUMNS`. A record that fails becomes a row with ``status`` ``"error"``; the job
goes on.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ._accounting import usage_dict
from ._errors import AftError, ConfigError, MissingExtraError
from ._records import parse_input_record
from ._topology import Topology
from ._types import Usage
from .run import answer_record

if TYPE_CHECKING:
    import pyarrow
    import ray.data
    from anyio.from_thread import BlockingPortal

__all__ = ("ADDED_COLUMNS", "TopologyFactory", "TopologyMapper", "map_topology")

TopologyFactory = Callable[[], Topology]
"""A zero-argument callable that builds a :class:`~aftlib.Topology` (its engines not started)."""

ADDED_COLUMNS: tuple[str, ...] = ("response", "responses", "status", "error", "usage", "timings")
"""The columns an output row adds to its input columns (an input column of the same name is replaced).

- ``response``: the answer (null for a failed record); for a multi-turn record, the last turn's.
- ``responses``: every turn's answer for a multi-turn (``turns``) record, else null.
- ``status``: ``"done"`` or ``"error"``.
- ``error``: ``"ErrorType: message"`` for a failed record, else null.
- ``usage``: ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``requests``, ``reused_tokens``.
- ``timings``: ``elapsed`` (seconds to answer) and ``first_token`` (seconds to the first answer token,
  null when no token came).
"""

_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "cached_tokens", "requests", "reused_tokens")
_CALLS_PER_ACTOR = 2  # batches under way at once per actor: the next one starts while one finishes


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise MissingExtraError("aftlib.ray", "ray", module=exc.name or "ray") from exc
    return ray


def _import_pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:
        raise MissingExtraError("aftlib.ray", "ray", module=exc.name or "pyarrow") from exc
    return pyarrow


def _schema_types(pa: Any) -> dict[str, Any]:
    """The Arrow type of each added column: the same in every batch, so blocks concatenate."""
    return {
        "response": pa.string(),
        "responses": pa.list_(pa.string()),
        "status": pa.string(),
        "error": pa.string(),
        "usage": pa.struct([(key, pa.int64()) for key in _USAGE_KEYS]),
        "timings": pa.struct([("elapsed", pa.float64()), ("first_token", pa.float64())]),
    }


def _check_counts(concurrency: int, actors: int | None = None) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
        raise ConfigError(f"actors must be an integer >= 1, got {actors!r}")


def _build(
    config: str | os.PathLike[str] | Mapping[str, Any] | None,
    topology: TopologyFactory | None,
    *,
    source: str | None = None,
    base: str | None = None,
) -> Topology:
    """The topology from a config file or mapping, or from the factory (exactly one of them)."""
    from . import config as config_files

    if (config is None) == (topology is None):
        raise ConfigError("give a config (a file or a mapping) or a topology factory, not both or neither")
    if topology is not None:
        if not callable(topology):
            kind = type(topology).__name__
            raise ConfigError(f"topology must be a zero-argument callable returning a Topology, got {kind}")
        built = topology()
        if not isinstance(built, Topology):
            raise ConfigError(f"the topology factory returned {type(built).__name__}, expected a Topology")
        return built
    if isinstance(config, Mapping):
        return config_files.parse(config, source=source, base=None if base is None else Path(base))
    assert config is not None
    return config_files.load(config)


class TopologyMapper:
    """A Ray Data callable class: one topology per actor, the records of each batch answered concurrently.

    Use it with ``Dataset.map_batches`` when :func:`map_topology` does not give the control you need;
    batches must be in the ``pyarrow`` format, and ``enable_true_multi_threading`` lets two batches share
    the actor's engines::

        ds.map_batches(
            TopologyMapper,
            fn_constructor_kwargs={"config": "topology.yaml", "concurrency": 64},
            batch_format="pyarrow",
            batch_size=64,
            compute=ray.data.ActorPoolStrategy(
                size=4, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True
            ),
        )

    The topology's engines start in the constructor and are closed by :meth:`close`, which runs when Ray
    releases the actor.

    Args:
        config: A config file (as ``aftlib run --config`` takes), or its content as a mapping.
        topology: Instead of ``config``, a zero-argument callable that builds the topology; it is pickled
            and called in the actor.
        concurrency: The most records in flight at once in this actor (over all its batches).
        source: Where a mapping ``config`` came from, for error messages.
        base: The folder that template directories of a mapping ``config`` are relative to.
        backend: The anyio backend of the actor's event loop: ``asyncio`` or ``trio``.

    Raises:
        ConfigError: The config is invalid, or neither or both of ``config`` and ``topology`` are given.
        EngineError: An engine failed to start.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        topology: TopologyFactory | None = None,
        concurrency: int = 64,
        source: str | None = None,
        base: str | None = None,
        backend: str = "asyncio",
    ) -> None:
        from anyio.from_thread import start_blocking_portal

        self._portal: BlockingPortal | None = None
        _check_counts(concurrency)
        self._pa = _import_pyarrow()
        self._types = _schema_types(self._pa)
        self._orders = itertools.count()
        self._stack = contextlib.ExitStack()
        try:
            self.topology = _build(config, topology, source=source, base=base)
            portal: BlockingPortal = self._stack.enter_context(start_blocking_portal(backend))
            self._limiter = portal.call(anyio.CapacityLimiter, concurrency)
            self._stack.enter_context(portal.wrap_async_context_manager(self.topology))
            self._portal = portal
        except BaseException:
            self._stack.close()
            raise

    def __call__(self, batch: pyarrow.Table) -> pyarrow.Table:
        """Answer every row of ``batch``; returns it with :data:`ADDED_COLUMNS` (input columns kept)."""
        if self._portal is None:
            raise RuntimeError("this TopologyMapper is closed")
        rows = batch.to_pylist()
        outputs = self._portal.call(self._answer_all, rows)
        table = batch.drop_columns([name for name in ADDED_COLUMNS if name in batch.column_names])
        for name in ADDED_COLUMNS:
            table = table.append_column(
                name, self._pa.array([out[name] for out in outputs], type=self._types[name])
            )
        return table

    def close(self) -> None:
        """Close the topology's engines and stop the actor's event loop (once; later calls do nothing)."""
        if self._portal is None:
            return
        self._portal = None
        self._stack.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    async def _answer_all(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        outputs: list[dict[str, Any]] = [{} for _ in rows]

        async def one(index: int, row: Mapping[str, Any]) -> None:
            async with self._limiter:
                outputs[index] = await self._answer(row, index)

        async with anyio.create_task_group() as tg:
            for index, row in enumerate(rows):
                tg.start_soon(one, index, row)
        return outputs

    async def _answer(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        """One output row's added columns; a failure is an error row, never an exception."""
        out: dict[str, Any] = {"response": None, "responses": None, "status": "done", "error": None}
        try:
            # a column missing from this row is null in the batch: absent, for recognising the shape
            record = parse_input_record({k: v for k, v in row.items() if v is not None}, line=index + 1)
        except AftError as exc:  # a bad record is a row, never a crashed job
            usage = usage_dict(Usage())
            return {
                **out,
                "status": "error",
                "error": f"{type(exc).__name__}: {exc}",
                "usage": {key: usage[key] for key in _USAGE_KEYS},
                "timings": {"elapsed": 0.0, "first_token": None},
            }
        answered = await answer_record(self.topology, record, order=next(self._orders), clock=time.monotonic)
        if answered.done:
            out["response"] = answered.results[-1].text
            if record.followups:
                out["responses"] = [r.text for r in answered.results]
        else:
            out.update(status="error", error=answered.error_text)
        usage = usage_dict(answered.usage)
        out["usage"] = {key: usage[key] for key in _USAGE_KEYS}
        out["timings"] = {
            "elapsed": round(answered.elapsed, 4),
            "first_token": None if answered.first_token is None else round(answered.first_token, 4),
        }
        return out


def map_topology(
    dataset: ray.data.Dataset,
    config: str | os.PathLike[str] | None = None,
    *,
    topology: TopologyFactory | None = None,
    actors: int = 1,
    concurrency: int = 64,
    batch_size: int | None = None,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    backend: str = "asyncio",
    **map_batches_args: Any,
) -> ray.data.Dataset:
    """Map every row of a Ray Dataset through a topology, on a pool of actors.

    Each actor builds the topology, starts its engines once and keeps up to ``concurrency`` records in
    flight; rows go to the actors in batches of ``batch_size``. The result is lazy, as any Ray Dataset:
    it runs when it is consumed (``write_json``, ``take_all``, ...). Output rows keep their input columns
    and add :data:`ADDED_COLUMNS`; a record that fails is a row with ``status`` ``"error"``.

    Example:
        >>> ds = ray.data.read_json("prompts.jsonl")  # doctest: +SKIP
        >>> out = aftlib.ray.map_topology(ds, "topology.yaml", actors=4, concurrency=64)  # doctest: +SKIP
        >>> out.write_json("answers/")  # doctest: +SKIP

    Args:
        dataset: The records, one per row (``query``, ``messages``, ``turns``, ``instruction`` or
            ``prompt``, as ``aftlib run`` reads them).
        config: A config file, as ``aftlib run --config`` takes. It is read and checked here, and its
            content is sent to the actors; template folders it names must exist on every node.
        topology: Instead of ``config``, a zero-argument callable that builds the topology (engines not
            started); it is pickled and called in each actor.
        actors: The actors in the pool: one topology, and its engines, each.
        concurrency: The most records in flight at once per actor.
        batch_size: Rows per batch (default: ``concurrency``).
        num_gpus: GPUs reserved per actor (for a ``vllm`` engine in the actor: its tensor parallel size
            times its pipeline parallel size).
        num_cpus: CPUs reserved per actor (Ray's default when None).
        backend: The anyio backend of each actor's event loop.
        **map_batches_args: Passed to ``Dataset.map_batches`` (``memory``, ``resources``,
            ``runtime_env``, ...).

    Returns:
        The mapped dataset (lazy).

    Raises:
        MissingExtraError: Ray is not installed (the ``ray`` extra).
        ConfigError: The config is invalid, neither or both of ``config`` and ``topology`` are given, or
            ``actors``, ``concurrency`` or ``batch_size`` is below 1.
    """
    ray_module = _import_ray()
    from . import config as config_files
    from ._io import read_yaml

    _check_counts(concurrency, actors)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if (config is None) == (topology is None):
        raise ConfigError("give a config file or a topology factory, not both or neither")
    kwargs: dict[str, Any] = {"topology": topology, "concurrency": concurrency, "backend": backend}
    if config is not None:
        data = read_yaml(config, what="the config")
        base = str(Path(config).resolve().parent)
        # a bad config fails here, not in every actor (the engines are built, not started)
        config_files.parse(data, source=str(config), base=Path(base))
        kwargs.update(config=data, source=str(config), base=base)
    compute = ray_module.data.ActorPoolStrategy(
        size=actors, max_concurrent_calls_per_actor=_CALLS_PER_ACTOR, enable_true_multi_threading=True
    )
    options: dict[str, Any] = {"udf_modifying_row_count": False, **map_batches_args}
    if num_gpus is not None:
        options["num_gpus"] = num_gpus
    if num_cpus is not None:
        options["num_cpus"] = num_cpus
    mapped: ray.data.Dataset = dataset.map_batches(
        TopologyMapper,
        fn_constructor_kwargs=kwargs,
        batch_format="pyarrow",
        batch_size=batch_size or concurrency,
        compute=compute,
        **options,
    )
    return mapped
