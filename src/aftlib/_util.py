"""Small helpers shared across modules."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ("closest", "did_you_mean", "publish", "unwrap_group")


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise a task group's lone error as itself, so callers catch ``EngineError``, not a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from leaves[0].__cause__
        raise


_defined_in: dict[type, str] = {}
"""The module each published class was defined in, for resolving the annotations of its subclasses."""


def _namespace(cls: type) -> dict[str, Any]:
    """The names of the modules that define ``cls`` and its bases, where their annotations are read."""
    merged: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        defining = sys.modules.get(_defined_in.get(base, base.__module__))
        if defining is not None:
            merged.update(vars(defining))
    return merged


def publish(namespace: dict[str, Any], module: str) -> None:
    """Report the public classes and functions of ``namespace.__all__`` as members of ``module``.

    Reprs, tracebacks and docs then show ``aftlib.Topology``, not ``aftlib._topology.Topology`` (httpx does
    the same). Two passes: first the annotations of every attrs class are resolved, in the modules that
    define the class and its bases (so that attrs and cattrs find their types, whatever the order of
    ``__all__`` and whichever package published a base first); then the modules are rewritten.

    Raises:
        RuntimeError: An annotation names something its module does not define at run time.
    """
    import attrs

    ours = []
    for name in namespace["__all__"]:
        value = namespace.get(name)
        if not (isinstance(value, type) or callable(value)) or getattr(value, "__module__", None) is None:
            continue
        if not str(value.__module__).startswith("aftlib") or "._" not in str(value.__module__):
            continue  # not ours, or already published by the package that owns it
        ours.append(value)
    for value in ours:
        if isinstance(value, type) and attrs.has(value):
            try:
                attrs.resolve_types(value, localns=_namespace(value))
            except NameError as exc:
                raise RuntimeError(
                    f"cannot publish {value.__module__}.{value.__qualname__} as {module}: its annotations "
                    f"name something its module does not import at run time ({exc})"
                ) from exc
    for value in ours:
        if isinstance(value, type):
            _defined_in.setdefault(value, value.__module__)
        try:
            value.__module__ = module
        except (AttributeError, TypeError):  # builtins-backed aliases
            continue


def closest(name: str, known: Sequence[str], aliases: Mapping[str, str] | None = None) -> str | None:
    """The known name ``name`` most likely stands for: its alias if known, else the closest spelling."""
    alias = (aliases or {}).get(name)
    if alias is not None and alias in known:
        return alias
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


def did_you_mean(name: str, known: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    """``"did you mean 'x'? "`` for the closest known name, or nothing when none is close."""
    close = closest(name, known, aliases)
    return "" if close is None else f"did you mean {close!r}? "
