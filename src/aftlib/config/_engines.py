"""Engine entries of a topology file: a tagged union on ``type``, each built into an engine.

``type: vllm`` is :class:`VLLMEngineSpec`, ``type: openai`` is :class:`OpenAIEngineSpec`, ``type: fake``
is :class:`FakeEngineSpec`. Every entry may also set ``max_in_flight`` (wrap the engine in
:class:`~aftlib.engines.LimitedEngine`) and ``retry`` (wrap it in :class:`~aftlib.engines.RetryingEngine`,
outside the limit).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
from attrs import field, frozen

from .._errors import ConfigError
from ..engines._base import Engine
from ._converter import config_class, converter, did_you_mean, kind_of

__all__ = ("EngineSpec", "FakeEngineSpec", "OpenAIEngineSpec", "RetryConfig", "VLLMEngineSpec")


def _at_least(low: float, *, optional: bool = False, strict: bool = False) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and optional:
            return
        ok = math.isfinite(value) and (value > low if strict else value >= low)
        if not ok:
            bound = f"> {low:g}" if strict else f">= {low:g}"
            raise ConfigError(f"{attribute.name} must be {bound}, got {value!r}", path=attribute.name)

    return check


def _non_empty(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ConfigError(f"{attribute.name} must be a non-empty string", path=attribute.name)


@config_class("a retry mapping")
@frozen
class RetryConfig:
    """An engine's ``retry`` key: wrap it in :class:`~aftlib.engines.RetryingEngine` with these settings.

    Attributes:
        attempts: Tries per request, the first included.
        backoff: The first wait's upper bound, in seconds.
        max_backoff: The largest wait's upper bound.
        timeout: Seconds allowed per attempt, or None.
    """

    attempts: int = field(default=4, validator=_at_least(1))
    backoff: float = field(default=0.5, validator=_at_least(0))
    max_backoff: float = field(default=30.0, validator=_at_least(0))
    timeout: float | None = field(default=None, validator=_at_least(0, optional=True, strict=True))


def _wrap(engine: Engine, retry: RetryConfig | None, max_in_flight: int | None) -> Engine:
    """The engine with its concurrency limit, then its retries, around it."""
    from ..engines import LimitedEngine, RetryingEngine

    if max_in_flight is not None:
        engine = LimitedEngine(engine, max_in_flight=max_in_flight)
    if retry is not None:
        engine = RetryingEngine(
            engine,
            attempts=retry.attempts,
            backoff=retry.backoff,
            max_backoff=retry.max_backoff,
            timeout=retry.timeout,
        )
    return engine


def _max_in_flight() -> Any:
    return field(default=None, validator=_at_least(1, optional=True))


@config_class("a vllm engine")
@frozen
class VLLMEngineSpec:
    """``type: vllm``: a model served in this process by :class:`~aftlib.engines.VLLMEngine`.

    Every key but the ones below is a vLLM engine argument (``max_model_len``, ``dtype``,
    ``gpu_memory_utilization``, ...), passed to vLLM unchanged and checked by vLLM when the engine starts.

    Attributes:
        model: A model folder or a model name vLLM resolves.
        lora_adapters: LoRA adapters to serve, ``{name: adapter folder}``.
        retry: Retry settings, or None.
        max_in_flight: The most requests in flight at once, or None for no limit.
        engine_args: The vLLM engine arguments (in a file, the entry's other keys).
    """

    model: str = field(validator=_non_empty)
    lora_adapters: dict[str, str] = field(factory=dict)
    retry: RetryConfig | None = None
    max_in_flight: int | None = _max_in_flight()
    engine_args: dict[str, Any] = field(factory=dict, kw_only=True)
    type: Literal["vllm"] = field(default="vllm", kw_only=True)

    def build(self, name: str) -> Engine:
        """The engine called ``name`` (not started), with its limit and retries."""
        from ..engines import VLLMEngine

        engine = VLLMEngine(self.model, name=name, lora_adapters=self.lora_adapters, **self.engine_args)
        return _wrap(engine, self.retry, self.max_in_flight)


def _urls(_: object, attribute: attrs.Attribute[Any], value: str | list[str]) -> None:
    if isinstance(value, str):
        _non_empty(_, attribute, value)
        return
    if not value:
        raise ConfigError("base_url is a URL or a non-empty list of URLs, got an empty list", path="base_url")
    for i, url in enumerate(value):
        if not url:
            raise ConfigError("a URL must be a non-empty string", path=f"base_url[{i}]")


@config_class("an openai engine")
@frozen
class OpenAIEngineSpec:
    """``type: openai``: a model behind an OpenAI-compatible endpoint (:class:`~aftlib.engines.OpenAIEngine`).

    Attributes:
        model: The model name the server serves.
        base_url: The endpoint (``http://host:port/v1``), or a list of replicas of one model: each becomes
            an engine ``NAME[i]`` and :class:`~aftlib.engines.Replicas` sends each request to the one with
            the fewest requests in flight.
        api_key_env: The environment variable holding the API key, or None for a placeholder key.
        timeout: Seconds allowed per request.
        supports_n: False for a server that rejects ``n`` > 1 (then ``n`` single calls are sent).
        priority: False never sends requests' priorities (by default they go in the body; a server that
            refuses the field gets requests without it, after one warning).
        retry: Retry settings, or None.
        max_in_flight: The most requests in flight at once (over all replicas), or None for no limit.
    """

    model: str = field(validator=_non_empty)
    base_url: str | list[str] = field(validator=_urls)
    api_key_env: str | None = None
    timeout: float = field(default=600.0, validator=_at_least(0, strict=True))
    supports_n: bool = True
    priority: bool = True
    retry: RetryConfig | None = None
    max_in_flight: int | None = _max_in_flight()
    type: Literal["openai"] = field(default="openai", kw_only=True)

    def build(self, name: str) -> Engine:
        """The engine called ``name`` (not started), with its replicas, limit and retries."""
        from ..engines import OpenAIEngine, Replicas

        def one(url: str, label: str) -> Engine:
            return OpenAIEngine(
                self.model,
                url,
                name=label,
                api_key_env=self.api_key_env,
                timeout=self.timeout,
                supports_n=self.supports_n,
                priority=self.priority,
            )

        engine: Engine
        if isinstance(self.base_url, str):
            engine = one(self.base_url, name)
        else:
            engine = Replicas([one(url, f"{name}[{i}]") for i, url in enumerate(self.base_url)], name=name)
        return _wrap(engine, self.retry, self.max_in_flight)


@config_class("a fake engine")
@frozen
class FakeEngineSpec:
    """``type: fake``: a :class:`~aftlib.testing.FakeEngine` that answers without a model (dry runs, tests).

    Attributes:
        latency: Seconds to wait before answering each request.
        context_window: A context size in tokens (one token per word), or None.
        retry: Retry settings, or None.
        max_in_flight: The most requests in flight at once, or None for no limit.
    """

    latency: float = field(default=0.0, validator=_at_least(0))
    context_window: int | None = field(default=None, validator=_at_least(1, optional=True))
    retry: RetryConfig | None = None
    max_in_flight: int | None = _max_in_flight()
    type: Literal["fake"] = field(default="fake", kw_only=True)

    def build(self, name: str) -> Engine:
        """The engine called ``name``, with its limit and retries."""
        from ..engines import FakeEngine

        engine = FakeEngine(name=name, latency=self.latency, context_window=self.context_window)
        return _wrap(engine, self.retry, self.max_in_flight)


EngineSpec = VLLMEngineSpec | OpenAIEngineSpec | FakeEngineSpec
"""One entry under ``engines:``, chosen by its ``type``."""

EngineHook = Callable[[str, Callable[[], Engine]], Engine]
"""``hook(key, build)`` gives the engine of one config entry: ``key`` is a digest of the entry (its name and
settings; equal entries, equal keys) and ``build()`` makes it. A sweep shares one engine per key, and
``aftlib run --cache`` wraps each one."""


def build_engine(hook: EngineHook | None, data: Any, build: Callable[[], Engine]) -> Engine:
    """``build()``, or what ``hook`` gives for the entry described by the JSON-ready ``data``."""
    if hook is None:
        return build()
    from .._io import fingerprint

    return hook(fingerprint(data), build)


_TYPES: dict[str, type[VLLMEngineSpec | OpenAIEngineSpec | FakeEngineSpec]] = {
    "vllm": VLLMEngineSpec,
    "openai": OpenAIEngineSpec,
    "fake": FakeEngineSpec,
}


def _structure_spec(value: Any, _: Any) -> EngineSpec:
    if not isinstance(value, Mapping):
        raise ConfigError(f"an engine is a mapping with a 'type', got {kind_of(value)} {value!r}")
    kind = value.get("type")
    if "type" not in value:
        raise ConfigError(f"an engine needs a 'type': {', '.join(_TYPES)}", path="type")
    if kind not in _TYPES:
        hint = did_you_mean(str(kind), list(_TYPES))
        raise ConfigError(f"unknown engine type {kind!r}; {hint}choose {', '.join(_TYPES)}", path="type")
    cls = _TYPES[kind]
    structured: EngineSpec = converter.structure(value, cls)
    return structured


_VLLM_KEYS = frozenset(a.name for a in attrs.fields(VLLMEngineSpec)) - {"engine_args"}
# Keys of ours that no vLLM engine argument is close to ("type" is: "dtype"), checked for misspellings.
_MISSPELT = ["lora_adapters", "retry", "max_in_flight"]
_structure_vllm_keys = converter.gen_structure_attrs_fromdict(VLLMEngineSpec)  # typed keys, no extras


def _structure_vllm(value: Any, _: Any) -> VLLMEngineSpec:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping (a vllm engine), got {kind_of(value)} {value!r}")
    if "engine_args" in value:
        raise ConfigError(
            "a vllm engine takes vLLM engine arguments as its own keys, not under 'engine_args'",
            path="engine_args",
        )
    if "name" in value:
        raise ConfigError("an engine's name is its key under 'engines'", path="name")
    args = {str(k): v for k, v in value.items() if k not in _VLLM_KEYS}
    for key in args:
        close = difflib.get_close_matches(key, _MISSPELT, n=1, cutoff=0.8)
        if close:  # a misspelt key of ours would reach vLLM as an engine argument
            raise ConfigError(
                f"unknown key {key!r}; did you mean {close[0]!r}? (a vllm engine passes its other keys to "
                "vLLM as an engine argument)",
                path=key,
            )
    spec: VLLMEngineSpec = _structure_vllm_keys(
        {k: v for k, v in value.items() if k in _VLLM_KEYS}, VLLMEngineSpec
    )
    return attrs.evolve(spec, engine_args=args)


def _structure_urls(value: Any, _: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    urls: list[str] = converter.structure(value, list[str])
    return urls


converter.register_structure_hook_func(lambda t: t == EngineSpec, _structure_spec)
converter.register_structure_hook_func(lambda t: t == str | list[str], _structure_urls)
converter.register_structure_hook(VLLMEngineSpec, _structure_vllm)
