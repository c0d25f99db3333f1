"""The one cattrs converter of aftlib's config files, and the errors it reports.

Topology files, the AFT reference config, training configs and price tables are all structured by
:data:`converter`, so they share one set of rules:

- scalars are strict: no ``"3"`` for an int, no ``true`` for a number, ints are accepted for floats;
- lists are lists (a bare string is not a list of one), mappings are mappings;
- unknown keys are refused, naming the closest known key.

:func:`structure` turns whatever goes wrong (cattrs' validation errors, and :class:`~aftlib.ConfigError`
raised by an attrs validator) into one :class:`~aftlib.ConfigError` naming the file and the key path,
such as ``agents.draft.sampling.temperature`` or ``layers[0].timeout``. :func:`at` does the same for
errors raised while the structured config is built into objects.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import cattrs
from attrs import frozen
from cattrs.cols import homogenous_tuple_structure_factory, list_structure_factory, mapping_structure_factory
from cattrs.errors import ForbiddenExtraKeysError, IterableValidationNote
from cattrs.gen import make_dict_structure_fn, override

from .._errors import ConfigError
from .._util import closest, did_you_mean

__all__ = (
    "at",
    "closest",
    "config_class",
    "converter",
    "did_you_mean",
    "kind_of",
    "join",
    "relocate",
    "structure",
    "unknown_key",
)

T = TypeVar("T")
C = TypeVar("C", bound=type)


@frozen
class _Keys:
    """How one config class is read: what to call it in messages, alias hints, who checks its values."""

    what: str
    aliases: Mapping[str, str]
    typed: bool


_CLASSES: dict[type, _Keys] = {}


def config_class(
    what: str, *, aliases: Mapping[str, str] | None = None, typed: bool = True
) -> Callable[[C], C]:
    """Register an attrs class read from config files (use as a decorator, outside ``@frozen``).

    Args:
        what: The class in words for messages (``"an openai engine"``): ``missing key 'x': WHAT needs 'x'``.
        aliases: Names other tools give some keys (``{"lora_r": "r"}``), for the hint on an unknown key.
        typed: True: the converter checks each value against the field's type. False: values reach the
            class unchanged and its own converters and validators check them (with their own messages).
    """

    def register(cls: C) -> C:
        _CLASSES[cls] = _Keys(what, dict(aliases or {}), typed)
        return cls

    return register


def kind_of(value: Any) -> str:
    """A value's type in words for messages: ``null`` for None, else the type's name."""
    return "null" if value is None else type(value).__name__


def join(prefix: str | None, path: str | None) -> str | None:
    """Join two key paths: ``join("layers[0]", "timeout")`` is ``layers[0].timeout``."""
    if not prefix:
        return path or None
    if not path:
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def unknown_key(key: str, known: Sequence[str], aliases: Mapping[str, str] | None = None) -> str:
    """The message for an unknown key: the closest known key (or the alias it stands for) and all of them."""
    return f"unknown key {key!r}; {did_you_mean(key, known, aliases)}known keys: {', '.join(known)}"


def _known(cls: type) -> list[str]:
    return [a.name for a in attrs.fields(cls) if a.init]


def _keys(cls: type) -> _Keys:
    return _CLASSES.get(cls, _Keys("this mapping", {}, True))


# --- strict values -------------------------------------------------------------------------------------


def _scalar(kind: type[Any]) -> Callable[[Any, type[Any]], Any]:
    def structure(value: Any, _: type[Any]) -> Any:
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise TypeError(f"expected {kind.__name__}, got {kind_of(value)} {value!r}")
        return kind(value)

    return structure


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _sequence_factory(
    make: Callable[[Any, cattrs.BaseConverter], Callable[[Any, Any], Any]],
) -> Callable[[Any, cattrs.BaseConverter], Callable[[Any, Any], Any]]:
    def factory(kind: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
        inner = make(kind, conv)

        def structure(value: Any, _: Any) -> Any:
            if not _is_list(value):
                raise TypeError(f"expected a list, got {kind_of(value)} {value!r}")
            return inner(value, kind)

        return structure

    return factory


def _mapping_factory(kind: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
    inner = mapping_structure_factory(kind, conv)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a mapping, got {kind_of(value)} {value!r}")
        return inner(value, kind)

    return structure


def _identity(value: Any, _: Any) -> Any:
    return value


def _class_factory(cls: type, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    keys = _keys(cls)
    overrides = {} if keys.typed else {a.name: override(struct_hook=_identity) for a in attrs.fields(cls)}
    inner: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, conv, **overrides)  # type: ignore[arg-type]

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a mapping ({keys.what}), got {kind_of(value)} {value!r}")
        return inner(value, cls)

    return structure


def _origin(kind: Any) -> Any:
    return typing.get_origin(kind)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for kind in (int, float, str, bool):
        conv.register_structure_hook(kind, _scalar(kind))
    conv.register_structure_hook_factory(
        lambda t: _origin(t) is list, _sequence_factory(list_structure_factory)
    )
    conv.register_structure_hook_factory(
        lambda t: _origin(t) is tuple and typing.get_args(t)[1:] == (...,),
        _sequence_factory(homogenous_tuple_structure_factory),
    )
    conv.register_structure_hook_factory(lambda t: _origin(t) is dict, _mapping_factory)
    conv.register_structure_hook_factory(attrs.has, lambda cls: _class_factory(cls, conv))
    return conv


converter = _make_converter()
"""The converter of every config file (register hooks for new config types on it)."""


# --- errors --------------------------------------------------------------------------------------------


@frozen
class _Problem:
    """One thing wrong, at ``path``; a missing or a suggested key is ``(the mapping's path, the key)``."""

    path: str | None
    message: str
    missing: tuple[str | None, str] | None = None
    suggested: tuple[str | None, str] | None = None


def _index(note: IterableValidationNote, container: Any, path: str | None) -> str | None:
    index = note.index
    if isinstance(index, int) and not (isinstance(container, type) and issubclass(container, Mapping)):
        return f"{path or ''}[{index}]"
    return join(path, str(index))


def _problems(exc: BaseException, path: str | None) -> list[_Problem]:
    if isinstance(exc, cattrs.ClassValidationError):
        with_notes, without = exc.group_exceptions()
        found: list[_Problem] = []
        for sub, note in with_notes:
            where = join(path, note.name)
            if isinstance(sub, KeyError):
                what = _keys(exc.cl).what
                found.append(
                    _Problem(
                        where,
                        f"missing key {note.name!r}: {what} needs {note.name!r} (required field missing)",
                        missing=(path, note.name),
                    )
                )
            else:
                found += _problems(sub, where)
        for sub in without:
            found += _problems(sub, path)
        return found
    if isinstance(exc, cattrs.IterableValidationError):
        with_index, rest = exc.group_exceptions()
        found = []
        for sub, inote in with_index:
            found += _problems(sub, _index(inote, exc.cl, path))
        for sub in rest:
            found += _problems(sub, path)
        return found
    if isinstance(exc, ForbiddenExtraKeysError):
        cls = exc.cl
        known = _known(cls)
        aliases = _keys(cls).aliases
        found = []
        for key in sorted(map(str, exc.extra_fields)):
            close = closest(key, known, aliases)
            suggested = None if close is None else (path, close)
            found.append(_Problem(join(path, key), unknown_key(key, known, aliases), suggested=suggested))
        return found
    if isinstance(exc, ConfigError):
        return [_Problem(join(path, exc.path), exc.message)]
    if isinstance(exc, cattrs.BaseValidationError):
        return [p for sub in exc.exceptions for p in _problems(sub, path)]
    return [_Problem(path, str(exc))]


def _error(problems: list[_Problem], source: str | None) -> ConfigError:
    # A missing key explained by a misspelt one next to it ("engins" for "engines") is not a second problem.
    suggested = {p.suggested for p in problems if p.suggested is not None}
    kept = [p for p in problems if p.missing not in suggested]
    kept.sort(key=lambda p: p.suggested is None and p.missing is None)  # unknown keys first
    if not kept:
        return ConfigError("not a valid config", source=source)
    first, rest = kept[0], kept[1:]
    message = first.message
    if rest:
        message += "; also " + "; ".join(f"{p.path or 'the config'}: {p.message}" for p in rest)
    return ConfigError(message, path=first.path, source=source)


def structure(data: Any, kind: type[T], *, source: str | None = None, path: str | None = None) -> T:
    """Structure config ``data`` into ``kind`` with :data:`converter`.

    Args:
        data: What was read from YAML or JSON.
        kind: The config class (or any type the converter structures).
        source: The file it came from, for the error.
        path: The key path of ``data`` inside its file, if it is not the whole file.

    Raises:
        ConfigError: Naming the file and the key path of the first problem (and the others after it).
    """
    try:
        return converter.structure(data, kind)
    except (cattrs.BaseValidationError, ConfigError, TypeError, ValueError) as exc:
        problems = _problems(exc, path)
        raise _error(problems, source) from None


def relocate(
    exc: ConfigError, path: str | None = None, *, source: str | None = None, default: str | None = None
) -> ConfigError:
    """``exc`` moved under the key path ``path`` (its own path joined to it), in the file ``source``.

    An error that names no path of its own is put at ``default`` when given, else at ``path``.
    """
    where = join(path, exc.path) if exc.path else (default or path)
    return ConfigError(exc.message, path=where, source=exc.source or source)


@contextmanager
def at(path: str | None = None, *, source: str | None = None, default: str | None = None) -> Iterator[None]:
    """Report a :class:`~aftlib.ConfigError` raised inside the block under the key path ``path``.

    Args:
        path: The key path of what the block builds (``agents.draft``); the error's own path is joined
            to it (``agents.draft.lora``).
        source: The file, when the error names none.
        default: The path for an error that names none (``path`` when None).
    """
    try:
        yield
    except ConfigError as exc:
        raise relocate(exc, path, source=source, default=default) from None
