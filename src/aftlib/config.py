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
example ``max_model_len`` or ``tensor_parallel_size``).

It also reads topology files (:class:`TopologyConfig`): named engines (``vllm``, ``openai``, ``fake``),
named agents (role, engine, template, sampling, LoRA adapter), layers of agent names and the final agent.

Unknown, missing or ill-typed keys raise :class:`~aftlib.ConfigError` naming the file and the key path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import cattrs
import yaml
from attrs import field, frozen

from ._agents import Agent, Aggregator, Proposer, SequentialAggregator
from ._errors import ConfigError
from ._templates import builtin_templates
from ._topology import Layer, Topology
from ._types import SamplingParams
from .engines._base import Engine

__all__ = (
    "AftConfig",
    "AgentConfig",
    "GenerationParams",
    "LayerConfig",
    "RetryConfig",
    "SamplingConfig",
    "TopologyConfig",
    "load",
    "parse",
    "read_yaml",
)

T = TypeVar("T")


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


@frozen
class SamplingConfig:
    """An agent's sampling in a topology file (the fields of :class:`~aftlib.SamplingParams`)."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 1024
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(factory=list)


@frozen
class AgentConfig:
    """One agent of a topology file.

    ``role`` is ``proposer``, ``aggregator`` or ``sequential_aggregator`` (which needs ``window``);
    ``template`` defaults to the role's AFT template.
    """

    engine: str
    role: str = "proposer"
    template: str | None = None
    sampling: SamplingConfig = field(factory=SamplingConfig)
    lora: str | None = None
    shuffle: int | None = None
    window: int | None = None


@frozen
class LayerConfig:
    """A layer of a topology file written as a mapping, to set a quorum or a deadline.

    See :class:`~aftlib.Layer` for what ``min_candidates`` and ``deadline`` do.
    """

    agents: list[str]
    min_candidates: int | None = None
    deadline: float | None = None


@frozen
class RetryConfig:
    """An engine's ``retry`` key: wrap it in :class:`~aftlib.engines.RetryingEngine` with these settings."""

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float | None = None


_ENGINE_KEYS: dict[str, tuple[set[str], set[str]]] = {
    # type: (required keys, optional keys); a vllm engine also takes any vLLM engine argument
    "vllm": ({"model"}, set()),
    "openai": ({"model", "base_url"}, {"api_key_env", "timeout"}),
    "fake": (set(), {"latency", "context_window"}),
}


@frozen
class TopologyConfig:
    """A topology file: named engines, named agents, layers of agent names, and the final agent.

    A layer is a list of agent names, or a mapping (:class:`LayerConfig`) with ``agents`` and a quorum
    (``min_candidates``) or ``deadline``. Any engine may have a ``retry`` mapping (:class:`RetryConfig`).

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
            base_url: http://gpu-box:8000/v1
            api_key_env: QWEN_KEY
            retry: {attempts: 5, timeout: 120}
        agents:
          draft: {engine: big, template: aft_propose, sampling: {n: 4, temperature: 0.7}}
          other: {engine: remote, template: passthrough}
          judge: {role: aggregator, engine: big, template: moa_aggregate, sampling: {max_tokens: 1024}}
        layers:
          - {agents: [draft, other], min_candidates: 4, deadline: 300}
        final: judge
    """

    engines: dict[str, dict[str, Any]]
    agents: dict[str, AgentConfig]
    layers: list[list[str] | LayerConfig]
    final: str
    template_dirs: list[str] | None = None

    def topology(self, base: Path | None = None) -> Topology:
        """Build the engines (not started), the agents and the topology.

        Args:
            base: The folder relative paths are read from (the config file's); None for the current one.
        """
        folder = Path.cwd() if base is None else base
        dirs = [folder] if self.template_dirs is None else [folder / d for d in self.template_dirs]
        engines = {name: _engine(name, spec, self.engines) for name, spec in self.engines.items()}
        agents = {name: self._agent(name, spec, engines, dirs) for name, spec in self.agents.items()}
        if not self.layers:
            raise ConfigError("a topology needs at least one layer before the final agent", path="layers")
        layers = []
        for i, entry in enumerate(self.layers):
            spec = entry if isinstance(entry, LayerConfig) else LayerConfig(entry)
            where = f"layers[{i}]" + (".agents" if isinstance(entry, LayerConfig) else "")
            if not spec.agents:
                raise ConfigError("a layer with no agents", path=where)
            for j, name in enumerate(spec.agents):
                if name not in agents:
                    raise ConfigError(_unknown("agent", name, agents), path=f"{where}[{j}]")
            try:
                layers.append(
                    Layer(
                        [agents[n] for n in spec.agents],
                        min_candidates=spec.min_candidates,
                        deadline=spec.deadline,
                    )
                )
            except ConfigError as exc:
                raise ConfigError(
                    exc.message, path=f"layers[{i}].{exc.path}" if exc.path else where
                ) from None
        if self.final not in agents:
            raise ConfigError(_unknown("agent", self.final, agents), path="final")
        try:
            return Topology(layers, agents[self.final])
        except ConfigError as exc:
            raise ConfigError(exc.message, path=exc.path or "layers") from None

    def _agent(self, name: str, spec: AgentConfig, engines: Mapping[str, Engine], dirs: list[Path]) -> Agent:
        path = f"agents.{name}"
        if spec.engine not in engines:
            raise ConfigError(_unknown("engine", spec.engine, engines), path=f"{path}.engine")
        s = spec.sampling
        _check_sampling(
            f"{path}.sampling.", temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, n=s.n
        )
        sampling = SamplingParams(s.temperature, s.top_p, s.max_tokens, s.n, s.seed, s.stop)
        common: dict[str, Any] = {"sampling": sampling, "name": name, "lora": spec.lora}
        if spec.template is not None:
            common["template"] = _template(spec.template, dirs, f"{path}.template")
        engine = engines[spec.engine]
        roles = ("proposer", "aggregator", "sequential_aggregator")
        if spec.role not in roles:
            raise ConfigError(f"unknown role {spec.role!r}; choose {', '.join(roles)}", path=f"{path}.role")
        if spec.shuffle is not None and spec.role == "proposer":
            raise ConfigError("a proposer reads no references to shuffle", path=f"{path}.shuffle")
        if (spec.window is not None) != (spec.role == "sequential_aggregator"):
            raise ConfigError(
                "'window' goes with, and only with, role sequential_aggregator", path=f"{path}.window"
            )
        try:
            if spec.role == "proposer":
                return Proposer(engine, **common)
            if spec.role == "aggregator":
                return Aggregator(engine, shuffle=spec.shuffle, **common)
            assert spec.window is not None
            return SequentialAggregator(engine, shuffle=spec.shuffle, window=spec.window, **common)
        except ConfigError as exc:
            raise ConfigError(exc.message, path=f"{path}.{exc.path}" if exc.path else path) from None


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


def _gpu_share(specs: Mapping[str, Any]) -> float | None:
    """The GPU share of a vLLM engine that sets none, when several vLLM engines share the GPU.

    Engines start one after another and each would take most of the GPU: the memory that the engines do not
    claim explicitly (of 90 %) is split evenly among those that do not.
    """
    vllm = [s for s in specs.values() if isinstance(s, Mapping) and s.get("type") == "vllm"]
    if len(vllm) < 2:
        return None
    claimed = sum(float(s["gpu_memory_utilization"]) for s in vllm if "gpu_memory_utilization" in s)
    unset = sum(1 for s in vllm if "gpu_memory_utilization" not in s)
    left = 0.9 - claimed
    if left <= 0.05 * unset:
        raise ConfigError(
            f"the vLLM engines claim {claimed:.2f} of the GPU, leaving too little for the {unset} "
            "that set no gpu_memory_utilization",
            path="engines",
        )
    return round(left / unset, 3)


def _unknown(what: str, name: str, known: Mapping[str, Any]) -> str:
    return f"unknown {what} {name!r}; defined: {', '.join(known) or 'none'}"


def _engine(name: str, spec: Mapping[str, Any], all_specs: Mapping[str, Mapping[str, Any]]) -> Engine:
    from .engines import OpenAIEngine, RetryingEngine, VLLMEngine
    from .testing import FakeEngine

    path = f"engines.{name}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"an engine is a mapping with a 'type', got {type(spec).__name__}", path=path)
    kind = spec.get("type")
    if kind not in _ENGINE_KEYS:
        raise ConfigError(f"unknown engine type {kind!r}; choose vllm, openai or fake", path=f"{path}.type")
    required, optional = _ENGINE_KEYS[kind]
    args = {k: v for k, v in spec.items() if k not in ("type", "retry")}
    for key in sorted(required - set(args)):
        raise ConfigError(f"a {kind} engine needs '{key}'", path=f"{path}.{key}")
    if kind != "vllm":
        for key in sorted(set(args) - required - optional):
            raise ConfigError(f"unknown key for an engine of type {kind}", path=f"{path}.{key}")
    retry = None
    if "retry" in spec:
        retry = _structure(spec["retry"], RetryConfig, None, prefix=f"{path}.retry")
    engine: Engine
    try:
        if kind == "vllm":
            model = args.pop("model")
            if "gpu_memory_utilization" not in args:
                share = _gpu_share(all_specs)
                if share is not None:
                    args["gpu_memory_utilization"] = share
            engine = VLLMEngine(model, name=name, **args)
        elif kind == "openai":
            engine = OpenAIEngine(name=name, **args)
        else:
            engine = FakeEngine(name=name, **args)
        if retry is not None:
            engine = RetryingEngine(
                engine,
                attempts=retry.attempts,
                backoff=retry.backoff,
                max_backoff=retry.max_backoff,
                timeout=retry.timeout,
            )
        return engine
    except ConfigError as exc:
        raise ConfigError(exc.message, path=f"{path}.{exc.path}" if exc.path else path) from None
    except TypeError as exc:
        raise ConfigError(str(exc), path=path) from None


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

    def layer(value: Any, _: type[Any]) -> list[str] | LayerConfig:
        if isinstance(value, Mapping):
            return converter.structure(value, LayerConfig)
        return converter.structure(value, list[str])

    converter.register_structure_hook_func(lambda t: t == list[str] | LayerConfig, layer)
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


_KEY = re.compile(r"\['([^']*)'\]")
_PATH = re.compile(r"^(?P<message>.*) @ \$\.?(?P<path>.*)$")


def _structure(data: Any, kind: type[T], source: str | None, *, prefix: str | None = None) -> T:
    try:
        return _CONVERTER.structure(data, kind)
    except cattrs.BaseValidationError as exc:
        problems = cattrs.transform_error(exc, path="$", format_exception=_describe)
        first = _PATH.match(problems[0])
        path = _KEY.sub(r".\1", first["path"]) if first else None
        if prefix is not None:
            path = f"{prefix}.{path}" if path else prefix
        message = "; ".join(problems) if len(problems) > 1 else (first["message"] if first else problems[0])
        raise ConfigError(_KEY.sub(r".\1", message), path=path, source=source) from None


def parse(data: Any, *, source: str | None = None, base: Path | None = None) -> Topology:
    """Build a topology from config data already read from YAML or JSON.

    A mapping with ``model_name`` is the AFT reference config; one with ``engines``, ``agents``,
    ``layers`` and ``final`` is a topology file (see :class:`TopologyConfig`).

    Args:
        data: The config as a mapping.
        source: Where it came from, for error messages.
        base: The folder that template directories are relative to (the config file's folder); None for
            the current folder.

    Raises:
        ConfigError: The config is malformed; the error names the key path.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config is a mapping of keys, got {type(data).__name__}", source=source)
    kind: type[AftConfig | TopologyConfig]
    if "model_name" in data:
        kind = AftConfig
    elif "engines" in data or "agents" in data:
        kind = TopologyConfig
    else:
        raise ConfigError(
            "missing key 'model_name' (an AFT inference config) or 'engines' (a topology config)",
            path="model_name",
            source=source,
        )
    config = _structure(data, kind, source)
    try:
        return config.topology(base) if isinstance(config, TopologyConfig) else config.topology()
    except ConfigError as exc:
        raise ConfigError(exc.message, path=exc.path, source=source) from None


def read_yaml(path: str | os.PathLike[str], what: str = "the config") -> Any:
    """Read a YAML file safely.

    Raises:
        ConfigError: The file is missing or unreadable, or is not valid YAML (naming the line).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror or exc}", source=source) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML: {problem}", source=where) from None


def load(path: str | os.PathLike[str]) -> Topology:
    """Read a YAML config file and build its topology (engines not started yet).

    Use the result as ``async with aftlib.config.load("aft.yaml") as topology:``, which starts the
    engines and closes them on exit.

    Raises:
        ConfigError: The file is missing or unreadable, is not valid YAML, or is not a valid config.
    """
    return parse(read_yaml(path), source=str(path), base=Path(path).resolve().parent)
