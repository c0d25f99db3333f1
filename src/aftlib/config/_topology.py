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

from .._agents import Agent, Aggregator, ModelAgent, Proposer, SequentialAggregator, Subset
from .._confidence import Confidence
from .._drafting import Consensus, Drafts, OnlineStop
from .._errors import ConfigError
from .._extract import AnswerExtractor
from .._filter import ConfidenceFilter
from .._templates import builtin_templates
from .._topology import EarlyExit, Layer, Topology
from .._types import SamplingParams
from .._vote import Vote
from ..engines._base import Engine
from ._converter import at, config_class, converter, did_you_mean, kind_of
from ._engines import EngineHook, EngineSpec, build_engine

__all__ = (
    "AgentConfig",
    "ConsensusConfig",
    "DraftingConfig",
    "EarlyExitConfig",
    "ExtractorConfig",
    "FilterConfig",
    "LayerConfig",
    "ReferencesConfig",
    "TopologyConfig",
)

_ROLES = ("proposer", "aggregator", "sequential_aggregator")
_TYPES = (*_ROLES, "vote", "select", "best_of_n")
_READERS = ("aggregator", "sequential_aggregator", "select", "best_of_n", "vote")


@config_class("an answer extractor")
@frozen
class ExtractorConfig:
    """How answers are found (:class:`~aftlib.AnswerExtractor`): strategies in order, and a regex."""

    strategies: list[str] = field(factory=lambda: list(AnswerExtractor().strategies))
    pattern: str | None = None

    def build(self) -> AnswerExtractor:
        """The extractor."""
        return AnswerExtractor(strategies=tuple(self.strategies), pattern=self.pattern)


@config_class("a reference subset")
@frozen
class ReferencesConfig:
    """Which of the previous layer's candidates an aggregator reads (:class:`~aftlib.Subset`)."""

    subset: int | None = None
    drop: float = 0.0
    seed: int = 0


@config_class("an early exit")
@frozen
class EarlyExitConfig:
    """Stop when a layer's candidates agree (:class:`~aftlib.EarlyExit`)."""

    by: str = "answer"
    min_agreement: float = 1.0
    extractor: ExtractorConfig = field(factory=ExtractorConfig)


@config_class("a consensus")
@frozen
class ConsensusConfig:
    """Stop drawing drafts once they agree (:class:`~aftlib.Consensus`)."""

    agreement: float = 0.75
    min_drafts: int = 3
    extractor: ExtractorConfig = field(factory=ExtractorConfig)

    def build(self) -> Consensus:
        """The consensus rule."""
        with at("extractor"):
            extractor = self.extractor.build()
        return Consensus(self.agreement, self.min_drafts, extractor)


@config_class("drafting")
@frozen
class DraftingConfig:
    """How a proposer's drafts are drawn (:class:`~aftlib.Drafts`): in waves, stopped, until they agree."""

    wave: int | None = None
    stop: OnlineStop | None = None
    consensus: ConsensusConfig | None = None


@config_class("a confidence filter")
@frozen
class FilterConfig:
    """Read only the most confident candidates (:class:`~aftlib.ConfidenceFilter`)."""

    keep: float = 0.5
    confidence: Confidence = field(factory=Confidence)


@config_class("an agent")
@frozen
class AgentConfig:
    """One agent of a topology file.

    ``type`` (or ``role``) is ``proposer``, ``aggregator``, ``sequential_aggregator`` (which needs
    ``window``), ``vote`` (no engine: a majority of extracted answers), ``select`` (an LLM picks the best
    candidate) or ``best_of_n`` (an LLM scores each candidate); ``template`` defaults to the kind's
    template; ``sampling`` holds the keys of :class:`~aftlib.SamplingParams` (its defaults where a key
    is left out); ``references: {subset: K, drop: P, seed: S}`` makes an aggregator read a seeded random
    subset of the previous layer's candidates.

    Spending tokens by confidence: a vote takes ``weight: confidence`` (with ``confidence: {metric,
    window, tail}``, :class:`~aftlib.Confidence`); any agent that reads candidates takes ``filter: {keep,
    confidence}`` (:class:`~aftlib.ConfidenceFilter`); a proposer takes ``drafting: {wave, stop:
    {threshold | warmup, keep, window}, consensus: {agreement, min_drafts, extractor}}``
    (:class:`~aftlib.Drafts`).
    """

    engine: str | None = None
    role: str | None = None
    type: str | None = None
    template: str | None = None
    sampling: SamplingParams | None = None
    lora: str | None = None
    shuffle: int | None = None
    window: int | None = None
    references: ReferencesConfig | None = None
    extractor: ExtractorConfig | None = None
    on_no_answer: str | None = None
    min_scores: int | None = None
    weight: str | None = None
    confidence: Confidence | None = None
    filter: FilterConfig | None = None
    drafting: DraftingConfig | None = None


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
    early_exit: EarlyExitConfig | None = None
    budget: int | None = None

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
        early_exit = None
        if self.early_exit is not None:
            with at("early_exit"):
                spec_exit = self.early_exit
                with at("extractor"):
                    extractor = spec_exit.extractor.build()
                early_exit = EarlyExit(spec_exit.by, spec_exit.min_agreement, extractor)
        with at(default="layers"):
            return Topology(layers, agents[self.final], early_exit=early_exit, budget=self.budget)

    def _agent(self, name: str, spec: AgentConfig, engines: Mapping[str, Engine], dirs: list[Path]) -> Agent:
        agent = self._plain_agent(name, spec, engines, dirs)
        path = f"agents.{name}"
        if spec.drafting is not None:
            drafting = spec.drafting
            with at(f"{path}.drafting"):
                consensus = None
                if drafting.consensus is not None:
                    with at("consensus"):
                        consensus = drafting.consensus.build()
                assert isinstance(agent, ModelAgent)  # checked: a proposer
                agent = Drafts(agent, stop=drafting.stop, consensus=consensus, wave=drafting.wave)
        if spec.filter is not None:
            with at(f"{path}.filter"):
                agent = ConfidenceFilter(agent, keep=spec.filter.keep, confidence=spec.filter.confidence)
        return agent

    def _plain_agent(
        self, name: str, spec: AgentConfig, engines: Mapping[str, Engine], dirs: list[Path]
    ) -> Agent:
        path = f"agents.{name}"
        if spec.role is not None and spec.type is not None and spec.role != spec.type:
            raise ConfigError("give 'type' or 'role', not both", path=f"{path}.type")
        kind = spec.type or spec.role or "proposer"
        if kind not in _TYPES:
            key = "type" if spec.type is not None else "role"
            raise ConfigError(
                f"unknown {key} {kind!r}; {did_you_mean(kind, _TYPES)}choose {', '.join(_TYPES)}",
                path=f"{path}.{key}",
            )
        self._check_keys_for(kind, spec, path)
        if kind == "vote":
            with at(path):
                with at("extractor"):
                    extractor = (spec.extractor or ExtractorConfig()).build()
                fallback: Any = spec.on_no_answer or "error"  # Vote checks the value and names the key
                weight: Any = spec.weight or "count"
                confidence = spec.confidence or Confidence()
                return Vote(
                    extractor=extractor,
                    on_no_answer=fallback,
                    weight=weight,
                    confidence=confidence,
                    name=name,
                )
        if spec.engine is None:
            raise ConfigError(f"missing key 'engine': a {kind} needs 'engine'", path=f"{path}.engine")
        if spec.engine not in engines:
            raise ConfigError(_unknown("engine", spec.engine, engines), path=f"{path}.engine")
        common: dict[str, Any] = {"name": name, "lora": spec.lora}
        if spec.sampling is not None:  # else the agent's own default (greedy for select and best_of_n)
            common["sampling"] = spec.sampling
        if spec.template is not None:
            common["template"] = _template(spec.template, dirs, f"{path}.template")
        engine = engines[spec.engine]
        subset = None
        if spec.references is not None:
            with at(f"{path}.references"):
                subset = Subset(spec.references.subset, spec.references.drop, spec.references.seed)
        with at(path):
            if kind == "proposer":
                return Proposer(engine, **common)
            if kind == "aggregator":
                return Aggregator(engine, shuffle=spec.shuffle, references=subset, **common)
            if kind == "select":
                from .._select import Select

                return Select(engine, **common)
            if kind == "best_of_n":
                from .._select import BestOfN

                return BestOfN(engine, min_scores=spec.min_scores, **common)
            assert spec.window is not None
            return SequentialAggregator(engine, shuffle=spec.shuffle, window=spec.window, **common)

    @staticmethod
    def _check_keys_for(kind: str, spec: AgentConfig, path: str) -> None:
        """Keys that only some kinds of agent take, named where they do not belong."""
        if spec.shuffle is not None and kind == "proposer":
            raise ConfigError("a proposer reads no references to shuffle", path=f"{path}.shuffle")
        if (spec.window is not None) != (kind == "sequential_aggregator"):
            raise ConfigError(
                "'window' goes with, and only with, role sequential_aggregator", path=f"{path}.window"
            )
        if spec.references is not None and kind != "aggregator":
            raise ConfigError(
                f"'references' is for aggregators; a {kind} reads every candidate", path=f"{path}.references"
            )
        only = {
            "extractor": "vote",
            "on_no_answer": "vote",
            "weight": "vote",
            "confidence": "vote",
            "min_scores": "best_of_n",
            "drafting": "proposer",
        }
        for key, owner in only.items():
            if getattr(spec, key) is not None and kind != owner:
                raise ConfigError(f"'{key}' goes with type {owner}, not {kind}", path=f"{path}.{key}")
        if spec.filter is not None and kind not in _READERS:
            raise ConfigError(
                f"'filter' keeps the most confident candidates an agent reads; a {kind} reads none",
                path=f"{path}.filter",
            )
        if spec.confidence is not None and spec.weight != "confidence":
            raise ConfigError(
                "'confidence' scores the votes of 'weight: confidence'; set it, or drop 'confidence'",
                path=f"{path}.confidence",
            )
        if kind == "vote":
            for key in ("engine", "template", "lora", "shuffle"):
                if getattr(spec, key) is not None:
                    raise ConfigError(f"a vote asks no model: '{key}' has no use here", path=f"{path}.{key}")


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
config_class("a confidence", typed=False)(Confidence)
config_class("an online stop")(OnlineStop)
