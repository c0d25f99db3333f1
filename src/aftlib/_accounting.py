"""Token accounting and cost: usage summed per agent, layer, model and run, priced from a table.

A price table is a YAML (or JSON) mapping of model to prices per million tokens::

    gpt-4o-mini: {prompt: 0.15, completion: 0.60, cached: 0.075}
    /models/llama-aft: {prompt: 0.0, completion: 0.0}

A model is found by its engine's name first, then by the model the engine serves. Cached prompt tokens
cost ``cached`` when given, else the prompt price. The unit is whatever currency the table is written in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import define, field, frozen

from ._errors import ConfigError
from ._io import read_yaml
from ._results import AgentFailure, Result
from ._topology import Topology
from ._types import Usage
from .config._converter import config_class, structure
from .engines._base import Engine

__all__ = (
    "AgentFailures",
    "LayerUsage",
    "Ledger",
    "Price",
    "PriceTable",
    "UsageReport",
    "Used",
    "usage_dict",
)

_PER = 1_000_000


def _price(name: str) -> Any:
    def check(_: object, attribute: Any, value: float | None) -> None:
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"a price is a number >= 0, got {value!r}", path=name)

    return check


def _number(name: str, value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"could not convert {name} {value!r} to a number (a price is a number >= 0)")
    return float(value)


def _prompt(value: Any) -> float:
    return _number("prompt", value)


def _completion(value: Any) -> float:
    return _number("completion", value)


def _cached(value: Any) -> float | None:
    return None if value is None else _number("cached", value)


@config_class("a price", typed=False)
@frozen
class Price:
    """What one model costs per million tokens.

    Attributes:
        prompt: Per million prompt tokens not served from a cache.
        completion: Per million generated tokens.
        cached: Per million prompt tokens served from the prefix cache; None charges the prompt price.
    """

    prompt: float = field(converter=_prompt, validator=_price("prompt"))
    completion: float = field(converter=_completion, validator=_price("completion"))
    cached: float | None = field(default=None, converter=_cached, validator=_price("cached"))

    def cost(self, usage: Usage) -> float:
        """The cost of ``usage`` at these prices."""
        cached = self.prompt if self.cached is None else self.cached
        fresh = usage.prompt_tokens - usage.cached_tokens
        return (
            fresh * self.prompt + usage.cached_tokens * cached + usage.completion_tokens * self.completion
        ) / _PER


@frozen
class PriceTable:
    """Prices by model.

    Attributes:
        prices: ``{model: Price}``.
    """

    prices: Mapping[str, Price] = field(factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PriceTable:
        """Read a price table from a YAML or JSON file.

        Raises:
            ConfigError: The file is unreadable or malformed; the error names the model and key.
        """
        return cls.parse(read_yaml(path, "the price table"), source=str(path))

    @classmethod
    def parse(cls, data: Any, *, source: str | None = None) -> PriceTable:
        """Build a price table from ``{model: {prompt, completion, cached?}}``.

        Raises:
            ConfigError: The data is malformed; the error names the model and key.
        """
        if not isinstance(data, Mapping):
            raise ConfigError("a price table maps model names to prices", source=source)
        return cls(structure(data, dict[str, Price], source=source))

    def find(self, engine: Engine) -> Price | None:
        """The price of ``engine``'s model: by engine name, then by the model it serves; None if absent."""
        for key in _model_names(engine):
            if key in self.prices:
                return self.prices[key]
        return None


def _model_names(engine: Engine) -> list[str]:
    """The names to look a price up by: the engine's, then the model it serves (under wrappers, replicas)."""
    return [engine.name] if engine.model is None else [engine.name, engine.model]


def usage_dict(usage: Usage, cost: float | None = None) -> dict[str, Any]:
    """``usage`` as a JSON-ready mapping, with its cost when known."""
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "requests": usage.requests,
        "reused_tokens": usage.reused_tokens,
        "saved_tokens": usage.saved_tokens,
    }
    if cost is not None:
        out["cost"] = round(cost, 8)
    return out


@frozen
class Used:
    """Tokens used, and what they cost (None without prices, or when a model has no price)."""

    usage: Usage
    cost: float | None = None

    def to_json(self) -> dict[str, Any]:
        """As the summary file writes it: the token counts, and ``cost`` when known."""
        return usage_dict(self.usage, self.cost)


@frozen
class LayerUsage:
    """One layer's usage (the final agent is the last layer), in all and per agent."""

    layer: int
    total: Used
    agents: Mapping[str, Used]

    def to_json(self) -> dict[str, Any]:
        """``{"layer", "usage", "agents": {name: usage}}``."""
        return {
            "layer": self.layer,
            "usage": self.total.to_json(),
            "agents": {name: used.to_json() for name, used in self.agents.items()},
        }


@frozen
class AgentFailures:
    """An agent that gave no candidates, and in how many records."""

    layer: int
    agent: str
    records: int


@frozen
class UsageReport:
    """A run's usage: in all, per layer and agent, per engine, and the agents that failed."""

    total: Used = Used(Usage())
    layers: tuple[LayerUsage, ...] = ()
    engines: Mapping[str, Used] = field(factory=dict)
    failed_agents: tuple[AgentFailures, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """As the summary file writes it: ``usage``, ``layers``, ``engines``, ``failed_agents``."""
        return {
            "usage": self.total.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
            "engines": {name: used.to_json() for name, used in self.engines.items()},
            "failed_agents": [
                {"layer": f.layer, "agent": f.agent, "records": f.records} for f in self.failed_agents
            ],
        }


@define
class Ledger:
    """Usage of many results, summed per agent, layer, model and in all, and priced.

    Args:
        topology: The topology the results come from (it tells which engine each agent uses).
        prices: Prices by model, or None to count tokens only.
    """

    topology: Topology
    prices: PriceTable | None = None
    by_agent: dict[tuple[int, str], Usage] = field(factory=dict, init=False)
    failed_agents: dict[tuple[int, str], int] = field(factory=dict, init=False)
    _engines: dict[tuple[int, str], Engine] = field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        for index, layer in enumerate(self.topology.layers):
            for agent in layer.agents:
                if agent.engines:
                    self._engines[(index, agent.name)] = agent.engines[0]
        final = self.topology.final
        if final.engines:
            self._engines[(len(self.topology.layers), final.name)] = final.engines[0]

    def add(self, result: Result) -> None:
        """Count one result's usage and failed agents."""
        for key, usage in result.usage_by_agent().items():
            self.by_agent[key] = self.by_agent.get(key, Usage()) + usage
        self.count_failures(result.failures)

    def count_failures(self, failures: Iterable[AgentFailure]) -> None:
        """Count agents that gave no candidates (also those of a record that failed)."""
        for failure in failures:
            key = (failure.layer, failure.agent)
            self.failed_agents[key] = self.failed_agents.get(key, 0) + 1

    def cost(self, result: Result) -> float | None:
        """The cost of one result, or None without prices or when a model it used has no price."""
        return self._cost(result.usage_by_agent())

    @property
    def total(self) -> Usage:
        """Everything counted so far."""
        return Usage.sum(self.by_agent.values())

    @property
    def total_cost(self) -> float | None:
        """The cost of everything counted so far (None as for :meth:`cost`)."""
        return self._cost(self.by_agent)

    def _price(self, key: tuple[int, str]) -> Price | None:
        engine = self._engines.get(key)
        return None if self.prices is None or engine is None else self.prices.find(engine)

    def _cost(self, usage: Mapping[tuple[int, str], Usage]) -> float | None:
        if self.prices is None:
            return None
        total = 0.0
        for key, used in usage.items():
            if key not in self._engines:  # an agent that asks no engine (a vote) costs nothing
                continue
            price = self._price(key)
            if price is None:
                return None
            total += price.cost(used)
        return total

    def usage_report(self) -> UsageReport:
        """The totals: in all, per layer and agent, per engine, and the agents that failed."""

        def used(usage: Mapping[tuple[int, str], Usage]) -> Used:
            return Used(Usage.sum(usage.values()), self._cost(usage))

        layers: dict[int, dict[str, Usage]] = {}
        for (index, agent), usage in sorted(self.by_agent.items()):
            layers.setdefault(index, {})[agent] = usage
        engine_keys: dict[str, list[tuple[int, str]]] = {}
        for key in self.by_agent:
            engine = self._engines.get(key)
            engine_keys.setdefault(engine.name if engine is not None else "?", []).append(key)
        return UsageReport(
            total=Used(self.total, self.total_cost),
            layers=tuple(
                LayerUsage(
                    index,
                    used({(index, a): u for a, u in agents.items()}),
                    {agent: used({(index, agent): usage}) for agent, usage in agents.items()},
                )
                for index, agents in sorted(layers.items())
            ),
            engines={name: used({k: self.by_agent[k] for k in keys}) for name, keys in engine_keys.items()},
            failed_agents=tuple(
                AgentFailures(layer, agent, count)
                for (layer, agent), count in sorted(self.failed_agents.items())
            ),
        )
