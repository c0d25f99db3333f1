"""Small helpers shared across modules."""

from __future__ import annotations

import difflib
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


def publish(namespace: dict[str, Any], module: str) -> None:
    """Report the public classes and functions of ``namespace.__all__`` as members of ``module``.

    Reprs, tracebacks and docs then show ``aftlib.Topology``, not ``aftlib._topology.Topology`` (httpx does
    the same). The annotations of attrs classes are resolved first, in their own module, so that attrs and
    cattrs still find their types.
    """
    import attrs

    for name in namespace["__all__"]:
        value = namespace.get(name)
        if not (isinstance(value, type) or callable(value)) or getattr(value, "__module__", None) is None:
            continue
        if not str(value.__module__).startswith("aftlib") or "._" not in str(value.__module__):
            continue  # not ours, or already published by the package that owns it
        if isinstance(value, type) and attrs.has(value):
            try:
                attrs.resolve_types(value)
            except NameError:  # a name only known to type checkers: keep the private path
                continue
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
