"""The AFT reference inference config, read unchanged, built into the AFT topology on one vLLM engine.

::

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
example ``max_model_len`` or ``tensor_parallel_size``).
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import field, frozen

from .._errors import ConfigError
from .._topology import Topology
from .._types import SamplingParams
from ._converter import config_class
from ._engines import EngineHook, build_engine

__all__ = ("AftConfig", "GenerationParams")


def _sampling(key: str) -> Any:
    """Check a value as :class:`~aftlib.SamplingParams` checks its ``key``; the error names this field."""

    def check(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        try:
            SamplingParams(**{key: value})
        except ConfigError as exc:
            raise ConfigError(exc.message, path=attribute.name) from None

    return check


@config_class("generation_params")
@frozen
class GenerationParams:
    """Sampling settings of the AFT reference config."""

    temperature: float = field(validator=_sampling("temperature"))
    top_p: float = field(validator=_sampling("top_p"))
    max_tokens: int = field(validator=_sampling("max_tokens"))
    n: int = field(validator=_sampling("n"))
    final_layer_temperature: float = field(validator=_sampling("temperature"))
    final_layer_top_p: float = field(validator=_sampling("top_p"))


def _aggregations(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if value < 1:
        raise ConfigError(
            f"num_aggregation counts the final aggregation and must be >= 1, got {value}", path=attribute.name
        )


def _model_name(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ConfigError(
            "model_name must be a model folder or name, got an empty string", path=attribute.name
        )


def _engine_args(_: object, attribute: attrs.Attribute[Any], value: dict[str, Any]) -> None:
    if "model" in value:
        raise ConfigError("set the model with model_name, not in engine_args", path="engine_args.model")
    if "name" in value:
        raise ConfigError("engine_args are vLLM's; an engine's name is not one", path="engine_args.name")


@config_class("an AFT config")
@frozen
class AftConfig:
    """The AFT reference inference config, plus optional vLLM engine arguments."""

    model_name: str = field(validator=_model_name)
    generation_params: GenerationParams
    num_aggregation: int = field(validator=_aggregations)
    vllm_seed: int | None = None
    engine_args: dict[str, Any] = field(factory=dict, validator=_engine_args)

    def topology(self, *, engine_hook: EngineHook | None = None) -> Topology:
        """Build the AFT topology on a (not yet started) :class:`~aftlib.engines.VLLMEngine`.

        Args:
            engine_hook: Gives the engine instead of building a new one (see ``EngineHook``).
        """
        from ..engines import VLLMEngine
        from ..presets import aft

        g = self.generation_params
        args = dict(self.engine_args)
        if self.vllm_seed is not None:
            args.setdefault("seed", self.vllm_seed)
        data = {"vllm": self.model_name, "engine_args": args}
        return aft(
            build_engine(engine_hook, data, lambda: VLLMEngine(self.model_name, **args)),
            n=g.n,
            num_aggregation=self.num_aggregation,
            temperature=g.temperature,
            top_p=g.top_p,
            max_tokens=g.max_tokens,
            final_temperature=g.final_layer_temperature,
            final_top_p=g.final_layer_top_p,
        )
