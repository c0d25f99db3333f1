"""Topology files: named engines, named agents, layers of agent names and the final agent.

The file's mappings are structured into :class:`TopologyConfig` by the shared converter; then
:meth:`TopologyConfig.topology` builds the engines (not started), the agents and the
:class:`~aftlib.Topology`, naming the key path of anything that does not fit together.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from attrs import field, frozen

from .._agents import Agent, Aggregator, Proposer, SequentialAggregator
from .._errors import ConfigError
from .._templates import builtin_templates
from .._topology import Layer, Topology
from .._types import SamplingParams
from ..engines._base import Engine
from ._converter import at, config_class, converter, did_you_mean, kind_of
from ._engines import EngineHook, EngineSpec, build_engine

__all__ = ("AgentConfig", "LayerConfig", "TopologyConfig")

_ROLES = ("proposer", "aggregator", "sequential_aggregator")


@config_class("an agent")
@frozen
class AgentConfig:
    """One agent of a topology file.

    ``role`` is ``proposer``, ``aggregator`` or ``sequential_aggregator`` (which needs ``window``);
    ``template`` defaults to the role's AFT template; ``sampling`` holds the keys of
    :class:`~aftlib.SamplingParams` (its defaults where a key is left out).
    """

    engine: str
    role: str = "proposer"
    template: str | None = None
    sampling: SamplingParams = field(factory=SamplingParams)
    lora: str | None = None
    shuffle: int | None = None
    window: int | None = None


@config_class("a layer mapping", aliases={"deadline": "timeout", "quorum": "min_candidates"})
@frozen
class LayerConfig:
    """A layer of a topology file written as a mapping, to set a quorum or a timeout.

    See :class:`~aftlib.Layer` for what ``min_candidates`` and ``timeout`` do.
    """

    agents: list[str]
    min_candidates: int | None = None
    timeout: float | None = None


@config_class("a topology config")
@frozen
class TopologyConfig:
    """A topology file: named engines, named agents, layers of agent names, and the final agent.

    A layer is a list of agent names, or a mapping (:class:`LayerConfig`) with ``agents`` and a quorum
    (``min_candidates``) or ``timeout``. An engine is a mapping with a ``type`` (see
    :class:`VLLMEngineSpec`, :class:`OpenAIEngineSpec`, :class:`FakeEngineSpec`); any engine may have a
    ``retry`` mapping (:class:`RetryConfig`) and a ``max_in_flight`` limit.

    An agent's ``template`` is a built-in template name or a ``.j2`` file found in one of
    ``template_dirs`` (relative to the config file's folder; by default that folder alone). A template
    path that leads outside those folders is refused, so a config file cannot make aftlib read
    arbitrary files into prompts.

    Example::

        engines:
          big: {type: vllm, model: /models/llama-aft, max_model_len: 8192}
          remote:
            type: openai
            model: qwen
            base_url: [http://gpu-box:8000/v1, http://gpu-box:8001/v1]
            api_key_env: QWEN_KEY
            max_in_flight: 32
            retry: {attempts: 5, timeout: 120}
        agents:
          draft: {engine: big, template: aft_propose, sampling: {n: 4, temperature: 0.7}}
          other: {engine: remote, template: passthrough}
          judge: {role: aggregator, engine: big, template: moa_aggregate, sampling: {max_tokens: 1024}}
        layers:
          - {agents: [draft, other], min_candidates: 4, timeout: 300}
        final: judge
    """

    engines: dict[str, EngineSpec]
    agents: dict[str, AgentConfig]
    layers: list[list[str] | LayerConfig]
    final: str
    template_dirs: list[str] | None = None

    def topology(self, base: Path | None = None, *, engine_hook: EngineHook | None = None) -> Topology:
        """Build the engines (not started), the agents and the topology.

        Args:
            base: The folder relative paths are read from (the config file's); None for the current one.
            engine_hook: Gives each entry's engine instead of building a new one (see ``EngineHook``).

        Raises:
            ConfigError: Names the key path of what does not fit (an undefined agent, a bad role, ...).
        """
        hook, folder = engine_hook, Path.cwd() if base is None else base
        dirs = [folder] if self.template_dirs is None else [folder / d for d in self.template_dirs]
        engines: dict[str, Engine] = {}
        for name, entry in self.engines.items():
            with at(f"engines.{name}"):
                data = {"name": name, "spec": attrs.asdict(entry)}
                engines[name] = build_engine(hook, data, partial(entry.build, name))
        agents = {name: self._agent(name, spec, engines, dirs) for name, spec in self.agents.items()}
        if not self.layers:
            raise ConfigError("a topology needs at least one layer before the final agent", path="layers")
        layers = []
        for i, item in enumerate(self.layers):
            spec = item if isinstance(item, LayerConfig) else LayerConfig(item)
            where = f"layers[{i}]" + (".agents" if isinstance(item, LayerConfig) else "")
            if not spec.agents:
                raise ConfigError("a layer with no agents", path=where)
            for j, name in enumerate(spec.agents):
                if name not in agents:
                    raise ConfigError(_unknown("agent", name, agents), path=f"{where}[{j}]")
            with at(f"layers[{i}]", default=where):
                layer = Layer(
                    [agents[n] for n in spec.agents], min_candidates=spec.min_candidates, timeout=spec.timeout
                )
            layers.append(layer)
        if self.final not in agents:
            raise ConfigError(_unknown("agent", self.final, agents), path="final")
        with at(default="layers"):
            return Topology(layers, agents[self.final])

    def _agent(self, name: str, spec: AgentConfig, engines: Mapping[str, Engine], dirs: list[Path]) -> Agent:
        path = f"agents.{name}"
        if spec.engine not in engines:
            raise ConfigError(_unknown("engine", spec.engine, engines), path=f"{path}.engine")
        common: dict[str, Any] = {"sampling": spec.sampling, "name": name, "lora": spec.lora}
        if spec.template is not None:
            common["template"] = _template(spec.template, dirs, f"{path}.template")
        engine = engines[spec.engine]
        if spec.role not in _ROLES:
            hint = did_you_mean(spec.role, _ROLES)
            raise ConfigError(
                f"unknown role {spec.role!r}; {hint}choose {', '.join(_ROLES)}", path=f"{path}.role"
            )
        if spec.shuffle is not None and spec.role == "proposer":
            raise ConfigError("a proposer reads no references to shuffle", path=f"{path}.shuffle")
        if (spec.window is not None) != (spec.role == "sequential_aggregator"):
            raise ConfigError(
                "'window' goes with, and only with, role sequential_aggregator", path=f"{path}.window"
            )
        with at(path):
            if spec.role == "proposer":
                return Proposer(engine, **common)
            if spec.role == "aggregator":
                return Aggregator(engine, shuffle=spec.shuffle, **common)
            assert spec.window is not None
            return SequentialAggregator(engine, shuffle=spec.shuffle, window=spec.window, **common)


def _template(name: str, dirs: list[Path], path: str) -> str:
    """A built-in template's name, or the path of a template file inside one of ``dirs``."""
    if name in builtin_templates():
        return name
    for folder in dirs:
        root = folder.resolve()
        for file in (name, f"{name}.j2"):
            candidate = (root / file).resolve()
            if candidate.is_relative_to(root) and candidate.suffix == ".j2" and candidate.is_file():
                return str(candidate)
    raise ConfigError(
        f"template {name!r} is not a built-in template ({', '.join(builtin_templates())}) nor a .j2 file "
        f"inside the template directories ({', '.join(str(d) for d in dirs)}); list the folder of your "
        "templates under template_dirs",
        path=path,
    )


def _unknown(what: str, name: str, known: Mapping[str, Any]) -> str:
    return f"unknown {what} {name!r}; {did_you_mean(name, list(known))}defined: {', '.join(known) or 'none'}"


def _structure_layer(value: Any, _: Any) -> list[str] | LayerConfig:
    if isinstance(value, Mapping):
        layer: LayerConfig = converter.structure(value, LayerConfig)
        return layer
    if not isinstance(value, list | tuple):
        raise TypeError(
            f"expected a list of agent names or a mapping with 'agents', got {kind_of(value)} {value!r}"
        )
    names: list[str] = converter.structure(value, list[str])
    return names


def _structure_stop(value: Any, _: Any) -> tuple[str, ...]:
    """``SamplingParams.stop``: one string or a list of them (as ``SamplingParams`` itself takes)."""
    if isinstance(value, str):
        return (value,)
    stop: list[str] = converter.structure(value, list[str])
    return tuple(stop)


converter.register_structure_hook_func(lambda t: t == list[str] | LayerConfig, _structure_layer)
converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _structure_stop)
config_class("sampling")(SamplingParams)
