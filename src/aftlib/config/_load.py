"""Reading a config: which kind of file it is, structuring it, building its topology."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .._errors import ConfigError
from .._io import read_yaml
from .._topology import Topology
from ._aft import AftConfig
from ._converter import at, closest, structure
from ._engines import EngineHook
from ._topology import TopologyConfig

__all__ = ("load", "parse")

_AFT_KEYS = [a.name for a in attrs.fields(AftConfig)]
_TOPOLOGY_KEYS = [a.name for a in attrs.fields(TopologyConfig)]


def _kind(data: Mapping[Any, Any], source: str | None) -> type[AftConfig | TopologyConfig]:
    """Which config ``data`` is: by a key only one kind has, or failing that by the closest one."""
    keys = [str(k) for k in data]
    if "model_name" in keys:
        return AftConfig
    if set(keys) & set(_TOPOLOGY_KEYS):
        return TopologyConfig
    if set(keys) & set(_AFT_KEYS):
        return AftConfig
    for key in keys:
        if closest(key, _TOPOLOGY_KEYS):
            return TopologyConfig
        if closest(key, _AFT_KEYS):
            return AftConfig
    raise ConfigError(
        "missing key 'model_name' (an AFT inference config) or 'engines' (a topology config)",
        path="model_name",
        source=source,
    )


def parse(
    data: Any, *, source: str | None = None, base: Path | None = None, engine_hook: EngineHook | None = None
) -> Topology:
    """Build a topology from config data already read from YAML or JSON.

    A mapping with ``model_name`` is the AFT reference config; one with ``engines``, ``agents``,
    ``layers`` and ``final`` is a topology file (see :class:`TopologyConfig`).

    Args:
        data: The config as a mapping.
        source: Where it came from, for error messages.
        base: The folder that template directories are relative to (the config file's folder); None for
            the current folder.
        engine_hook: Gives each engine instead of building a new one: ``engine_hook(key, build)`` with ``key``
            a digest of the engine's entry (see ``EngineHook``); None builds every engine.

    Raises:
        ConfigError: The config is malformed; the error names the key path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config is a mapping of keys, got {type(data).__name__}", source=source)
    config = structure(data, _kind(data, source), source=source)
    with at(source=source):
        if isinstance(config, TopologyConfig):
            return config.topology(base, engine_hook=engine_hook)
        return config.topology(engine_hook=engine_hook)


def load(path: str | os.PathLike[str], *, engine_hook: EngineHook | None = None) -> Topology:
    """Read a YAML config file and build its topology (engines not started yet).

    Use the result as ``async with aftlib.config.load("aft.yaml") as topology:``, which starts the
    engines and closes them on exit.

    Raises:
        ConfigError: The file is missing or unreadable, is not valid YAML, or is not a valid config.
    """
    return parse(read_yaml(path), source=str(path), base=Path(path).resolve().parent, engine_hook=engine_hook)
