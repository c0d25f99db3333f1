"""Config files: YAML in, topologies out.

:func:`load` reads the AFT reference inference config unchanged::

    model_name: path/to/aft-model
    generation_params:
      temperature: 0.7
      top_p: 0.95
      max_tokens: 4096
      n: 5
      final_layer_temperature: 0.7
      final_layer_top_p: 1.0
    vllm_seed: 2025          # optional
    num_aggregation: 2       # aggregation layers, the final one included

One key beyond the reference is accepted: ``engine_args``, a mapping passed to vLLM unchanged (for
example ``max_model_len`` or ``tensor_parallel_size``). Unknown, missing or ill-typed keys raise
:class:`~aftlib.ConfigError` naming the file and the key path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cattrs
import yaml
from attrs import field, frozen

from ._errors import ConfigError
from ._topology import Topology
from ._types import SamplingParams

__all__ = ("AftConfig", "GenerationParams", "load", "parse")


@frozen
class GenerationParams:
    """Sampling settings of the AFT reference config."""

    temperature: float
    top_p: float
    max_tokens: int
    n: int
    final_layer_temperature: float
    final_layer_top_p: float


@frozen
class AftConfig:
    """The AFT reference inference config, plus optional vLLM engine arguments."""

    model_name: str
    generation_params: GenerationParams
    num_aggregation: int
    vllm_seed: int | None = None
    engine_args: dict[str, Any] = field(factory=dict)

    def topology(self) -> Topology:
        """Build the AFT topology on a (not yet started) :class:`~aftlib.engines.VLLMEngine`."""
        from .engines import VLLMEngine
        from .presets import aft

        g = self.generation_params
        _check_sampling(
            "generation_params.", temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, n=g.n
        )
        _check_sampling(
            "generation_params.final_layer_", temperature=g.final_layer_temperature, top_p=g.final_layer_top_p
        )
        if self.num_aggregation < 1:
            raise ConfigError(
                f"num_aggregation counts the final aggregation and must be >= 1, got {self.num_aggregation}",
                path="num_aggregation",
            )
        args = dict(self.engine_args)
        if self.vllm_seed is not None:
            args.setdefault("seed", self.vllm_seed)
        return aft(
            VLLMEngine(self.model_name, **args),
            n=g.n,
            num_aggregation=self.num_aggregation,
            temperature=g.temperature,
            top_p=g.top_p,
            max_tokens=g.max_tokens,
            final_temperature=g.final_layer_temperature,
            final_top_p=g.final_layer_top_p,
        )


def _check_sampling(prefix: str, **values: Any) -> None:
    """Validate sampling values, naming the config key of the one that is wrong."""
    try:
        SamplingParams(**values)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=f"{prefix}{exc.path}") from None


def _strict(kind: type[Any]) -> Any:
    def structure(value: Any, _: type[Any]) -> Any:
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)

    return structure


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for kind in (int, float, str):
        converter.register_structure_hook(kind, _strict(kind))
    converter.register_structure_hook_func(lambda t: t == dict[str, Any], _mapping)
    return converter


def _mapping(value: Any, _: type[Any]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return dict(value)


_CONVERTER = _converter()


def _describe(exc: BaseException, kind: type[Any] | None) -> str:
    """Our own type errors say what was expected and what came; cattrs words the rest."""
    if isinstance(exc, TypeError) and str(exc).startswith("expected "):
        return str(exc)
    return cattrs.v.format_exception(exc, kind)


_PATH = re.compile(r"^(?P<message>.*) @ \$\.?(?P<path>.*)$")


def parse(data: Any, *, source: str | None = None) -> Topology:
    """Build a topology from config data already read from YAML or JSON.

    Args:
        data: The config as a mapping.
        source: Where it came from, for error messages.

    Raises:
        ConfigError: The config is malformed; the error names the key path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config is a mapping of keys, got {type(data).__name__}", source=source)
    if "model_name" not in data:
        raise ConfigError(
            "missing key 'model_name' (the AFT inference config names the model to serve)",
            path="model_name",
            source=source,
        )
    try:
        config = _CONVERTER.structure(data, AftConfig)
    except cattrs.BaseValidationError as exc:
        problems = cattrs.transform_error(exc, path="$", format_exception=_describe)
        first = _PATH.match(problems[0])
        path = first["path"] if first else None
        message = "; ".join(problems) if len(problems) > 1 else (first["message"] if first else problems[0])
        raise ConfigError(message, path=path, source=source) from None
    try:
        return config.topology()
    except ConfigError as exc:
        raise ConfigError(exc.message, path=exc.path, source=source) from None


def load(path: str | os.PathLike[str]) -> Topology:
    """Read a YAML config file and build its topology (engines not started yet).

    Use the result as ``async with aftlib.config.load("aft.yaml") as topology:``, which starts the
    engines and closes them on exit.

    Raises:
        ConfigError: The file is missing or unreadable, is not valid YAML, or is not a valid config.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the config: {exc.strerror or exc}", source=source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", source=where) from None
    return parse(data, source=source)
