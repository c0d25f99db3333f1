"""Loading the models of a serve config, and running the app under uvicorn with a shutdown grace."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import frozen

from .. import config
from .._errors import ConfigError, MissingExtraError
from .._io import read_yaml
from .._topology import Topology
from ..engines._base import Engine

__all__ = ("Models", "load_models", "read_api_keys", "serve")


@frozen
class Models:
    """The topologies a server serves, by name, and other names for them.

    Attributes:
        topologies: The models, by name.
        aliases: ``{alias: name}``.
    """

    topologies: Mapping[str, Topology]
    aliases: Mapping[str, str]

    @property
    def names(self) -> list[str]:
        """Every name a request may use: the models, then the aliases."""
        return [*self.topologies, *self.aliases]


def load_models(path: str | os.PathLike[str], *, name: str | None = None) -> Models:
    """Read a serve config: one topology file (or AFT reference config), or a file naming several.

    A file with a ``models`` key maps names to topology files (paths relative to it) and may have
    ``aliases: {ALIAS: NAME}``; equal engine entries in several files share one engine. Any other file is
    one topology, named ``name`` or the file's stem.

    Raises:
        ConfigError: The file or one it names is missing or invalid; names the file and key.
    """
    source = Path(path)
    data = read_yaml(source, what="serve config")
    engines: dict[str, Engine] = {}

    def share(key: str, build: Any) -> Engine:
        if key not in engines:
            engines[key] = build()
        return engines[key]

    if not (isinstance(data, Mapping) and "models" in data):
        return Models({name or source.stem: config.load(source, engine_hook=share)}, {})
    unknown = sorted(set(data) - {"models", "aliases"})
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}; a serve config has 'models' and 'aliases'", path=unknown[0],
            source=str(source),
        )  # fmt: skip
    models, aliases = data["models"], data.get("aliases") or {}
    if not isinstance(models, Mapping) or not models:
        raise ConfigError("'models' maps names to topology files", path="models", source=str(source))
    if not isinstance(aliases, Mapping):
        raise ConfigError("'aliases' maps aliases to model names", path="aliases", source=str(source))
    topologies: dict[str, Topology] = {}
    for key, file in models.items():
        if not isinstance(file, str):
            raise ConfigError(
                "a model is the path of a topology file", path=f"models.{key}", source=str(source)
            )
        topologies[str(key)] = config.load(source.parent / file, engine_hook=share)
    for alias, target in aliases.items():
        if target not in topologies:
            known = ", ".join(topologies)
            raise ConfigError(
                f"alias {alias!r} names {target!r}, which is not a model ({known})", path=f"aliases.{alias}",
                source=str(source),
            )  # fmt: skip
    return Models(topologies, {str(a): str(t) for a, t in aliases.items()})


def read_api_keys(env: str | None = None, file: str | os.PathLike[str] | None = None) -> list[str] | None:
    """The API keys from an environment variable (comma-separated) and a file (one a line, ``#`` comments).

    Returns:
        The keys, or None when neither source is given.

    Raises:
        ConfigError: The variable is unset or empty, or the file is unreadable or holds no key.
    """
    if env is None and file is None:
        return None
    keys: list[str] = []
    if env is not None:
        value = os.environ.get(env, "")
        found = [k.strip() for k in value.split(",") if k.strip()]
        if not found:
            raise ConfigError(f"the environment variable {env} holds no API key", path="--api-key-env")
        keys += found
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file: {exc.strerror}", source=str(file)) from None
        found = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not found:
            raise ConfigError("the API key file holds no key", source=str(file))
        keys += found
    return keys


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8000, grace: float = 10.0) -> None:
    """Serve ``app`` with uvicorn until SIGINT or SIGTERM.

    On a signal the server stops accepting connections and lets in-flight requests finish for
    ``grace`` seconds (rounded up to whole seconds); then it cancels those still running (their engine
    requests are aborted) and closes the engines.
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError("aftlib serve", "serve", exc.name) from exc
    settings = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(grace),
        lifespan="on",
    )
    uvicorn.Server(settings).run()
