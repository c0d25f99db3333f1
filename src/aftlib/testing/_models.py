"""The shipped arithmetic models: small Llamas trained here on :func:`arithmetic_problems`.

``base`` was trained from random weights to answer the AFT proposal request (a system message holding
one newline, then the problem); ``aft`` is ``base`` after aggregation fine-tuning on its own drafts;
``rl`` is ``aft`` after reinforcement learning as an aggregator (GRPO on ``aft``'s drafts). All three
ship inside the package (bf16 safetensors, about 2 MB each) with a model card (``README.md``) and a
manifest (``aftlib-model.json``) that records every file's SHA-256, so an altered or incomplete folder
is refused with a clear error before any engine reads it. ``python -m aftlib.testing.rebuild`` rebuilds
them from scratch.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Literal

from .._errors import ConfigError

__all__ = ("ARITHMETIC_MODELS", "MANIFEST", "ModelName", "arithmetic_model", "models_dir", "write_manifest")

ModelName = Literal["base", "aft", "rl", "tools"]

ARITHMETIC_MODELS: tuple[ModelName, ...] = ("base", "aft", "rl", "tools")
"""The names :func:`arithmetic_model` knows."""

MANIFEST = "aftlib-model.json"
"""The file of a shipped model folder that lists its other files with their sizes and SHA-256."""


def models_dir() -> pathlib.Path:
    """The folder that holds the shipped models (inside the installed package)."""
    return pathlib.Path(__file__).resolve().parent.parent / "data" / "models"


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(folder: pathlib.Path) -> dict[str, dict[str, object]]:
    """Write the manifest of ``folder``: each file's size and SHA-256 (the manifest itself excepted).

    Returns:
        The files recorded, by name.
    """
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=2) + "\n", encoding="utf-8")
    return files


def _verify(name: str, folder: pathlib.Path) -> None:
    hint = "reinstall aftlib, or rebuild it: python -m aftlib.testing.rebuild " + name
    manifest_file = folder / MANIFEST
    if not folder.is_dir():
        raise ConfigError(f"the shipped model {name!r} is missing: no folder {folder}; {hint}")
    try:
        files = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"the shipped model {name!r} has no readable manifest ({type(exc).__name__}: {exc}); {hint}",
            source=str(manifest_file),
        ) from None
    for file_name in files:  # a missing file first: it says more than a changed one
        path = folder / file_name
        if not path.is_file():
            raise ConfigError(
                f"the shipped model {name!r} is incomplete: {file_name} is missing; {hint}", source=str(path)
            )
    for file_name, expected in files.items():
        path = folder / file_name
        if path.stat().st_size != expected["bytes"] or _sha256(path) != expected["sha256"]:
            raise ConfigError(
                f"the shipped model {name!r} was altered: {file_name} differs from the manifest; {hint}",
                source=str(path),
            )


def arithmetic_model(name: str) -> pathlib.Path:
    """The folder of a shipped arithmetic model, checked against its manifest.

    ``VLLMEngine``, ``aftlib run`` (``model_name:`` in an AFT config) and ``aftlib train`` accept the
    folder as they accept any model folder.

    Args:
        name: ``"base"`` (drafts answers), ``"aft"`` (also aggregates drafts), ``"rl"`` (``aft``
            trained further as an aggregator by reinforcement) or ``"tools"`` (``aft`` answering with a
            call of the ``submit`` tool, :data:`aftlib.testing.rebuild.SUBMIT`).

    Returns:
        The absolute path of the model folder.

    Raises:
        ConfigError: The name is unknown, or the folder is missing, incomplete or altered.
    """
    if name not in ARITHMETIC_MODELS:
        raise ConfigError(
            f"unknown arithmetic model {name!r}; the shipped ones are {', '.join(ARITHMETIC_MODELS)}",
            path="name",
        )
    folder = models_dir() / f"arithmetic-{name}"
    _verify(name, folder)
    return folder
