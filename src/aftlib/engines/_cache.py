"""A request cache on disk: the same request, the same samples, generated once.

:class:`CachingEngine` keys each *sample* by a hash of the cache format, the engine's identity (the
innermost engine's class and model, output-changing engine settings, the LoRA adapter), the messages,
the sampling parameters without ``n``, and the sample's index. A request whose samples are all stored
is answered from disk; one with some missing asks the inner engine for the missing ones only.

The store is a folder: ``DIR/aftlib-cache.json`` names the format, and each sample is one JSON file
``DIR/v<format>/<2 hex>/<key>.json``, written atomically (a concurrent writer of the same key writes the
same bytes, and a reader never sees half a file). A folder written by another format is ignored with a
warning: never a wrong hit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import attrs
from anyio.streams.memory import MemoryObjectSendStream
from attrs import define, field

from .._errors import ConfigError
from .._io import write_json_atomic
from .._logging import get_logger
from .._streams import producer_stream
from .._tools import ToolCall
from .._types import ChatRequest, Completion, Delta, Sample, TokenLogprob, Usage
from ._base import Engine, EngineStream, StreamItem
from ._wrapper import WrapperEngine

__all__ = ("CACHE_FORMAT", "CachingEngine", "engine_identity")

CACHE_FORMAT = 1
"""The version of the cache's layout and keys; a folder written by another version is ignored."""

_MARKER = "aftlib-cache.json"

# vLLM engine arguments that change what a model generates (the others change only speed or memory).
_OUTPUT_ARGS = (
    "dtype",
    "quantization",
    "revision",
    "tokenizer",
    "tokenizer_revision",
    "seed",
    "max_model_len",
)


def engine_identity(engine: Engine, lora: str | None = None) -> dict[str, Any]:
    """What decides an engine's samples besides the request: the engine at the bottom of its wrappers.

    The innermost engine's class and model (its name when it has no model), the vLLM engine arguments
    that change outputs (``dtype``, ``quantization``, ``seed``, ...), and the LoRA adapter's name and
    folder.
    """
    inner: Any = engine.leaves()[0]  # replicas serve one model
    identity: dict[str, Any] = {"class": type(inner).__name__, "model": engine.model or inner.name}
    args = getattr(inner, "engine_args", None)
    if isinstance(args, Mapping):
        identity["engine_args"] = {k: args[k] for k in _OUTPUT_ARGS if k in args}
    if lora is not None:
        adapters = getattr(inner, "lora_adapters", None)
        identity["lora"] = [lora, adapters.get(lora) if isinstance(adapters, Mapping) else None]
    return identity


def _sampling_key(request: ChatRequest) -> dict[str, Any]:
    s = request.sampling
    return {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens,
        "seed": s.seed,
        "stop": list(s.stop),
        "logprobs": s.logprobs,
        # only when set, so the keys of requests without a format stay what they were
        **({"response_format": s.response_format.to_openai()} if s.response_format is not None else {}),
        **(
            {"tools": [t.to_openai() for t in request.tools], "tool_choice": request.tool_choice.to_openai()}
            if request.tools
            else {}
        ),
    }


def _logprobs_json(logprobs: tuple[TokenLogprob, ...] | None) -> Any:
    if logprobs is None:
        return None
    return [[t.token, t.logprob, [list(pair) for pair in t.top]] for t in logprobs]


def _logprobs_value(data: Any) -> tuple[TokenLogprob, ...] | None:
    if data is None:
        return None
    return tuple(TokenLogprob(token, logprob, [tuple(pair) for pair in top]) for token, logprob, top in data)


@define
class _Entry:
    """One stored sample."""

    sample: Sample
    prompt_tokens: int


def _runs(indices: list[int]) -> list[list[int]]:
    """Contiguous runs of sorted indices: ``[0, 1, 3]`` gives ``[[0, 1], [3]]``."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


@define(eq=False)
class CachingEngine(WrapperEngine):
    """An engine that answers repeated requests from a cache on disk instead of generating again.

    Two requests with the same engine (the innermost engine's class and model, LoRA adapter),
    messages, sampling parameters (all but ``n``) and sample index share that sample, generated once.
    A request of ``n`` samples that are all stored makes no engine call; when some are missing, the
    inner engine is asked for the missing ones only (one request with ``n`` = the number missing; for
    a seeded request, with the seed moved to the first missing index, as vLLM seeds sample ``i`` of a
    request with ``seed + i``). Concurrent requests for the same prompt and sampling wait for each
    other, so a sample is generated once also when two cells ask at the same time.

    Usage: a sample served from the cache counts in ``Usage.reused_tokens``, not in
    ``completion_tokens`` (which stays the generated tokens). A request answered whole from the cache
    has ``requests=0`` and ``completion_tokens=0``; its ``prompt_tokens`` are the prompt it stands for
    (not sent again, so also counted as ``cached_tokens``). Each sample keeps its own
    ``completion_tokens`` (its text's length), so a topology's candidates cost what they would alone.

    Args:
        inner: The engine that generates what the cache does not hold.
        directory: The cache folder (created when missing). Share one folder between engines and runs:
            the key includes the engine's identity.
        reuse_unseeded: Serve requests without a ``seed`` from the cache too (off by default, as
            ``aftlib run --cache`` has it: an unseeded request is generated afresh, its samples still
            stored). A sweep turns it on: within one sweep it is deliberate (common random numbers).
        name: A label for logs; the inner engine's name by default.

    Attributes:
        hits: Samples served from the cache so far.
        misses: Samples generated by the inner engine so far.
        calls: Requests sent to the inner engine so far.
        generated_tokens: Completion tokens the inner engine generated so far.
        reused_tokens: Completion tokens served from the cache so far.
    """

    directory: Path = field(converter=Path)
    reuse_unseeded: bool = field(default=False, kw_only=True)
    hits: int = field(default=0, init=False)
    misses: int = field(default=0, init=False)
    calls: int = field(default=0, init=False)
    generated_tokens: int = field(default=0, init=False)
    reused_tokens: int = field(default=0, init=False)
    _enabled: bool | None = field(default=None, init=False, repr=False)
    _locks: dict[str, tuple[anyio.Lock, list[int]]] = field(factory=dict, init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    # --- the store ------------------------------------------------------------------------------------

    def _ready(self) -> bool:
        """Check (once) that the folder is this format's, creating it when new; False when ignored."""
        if self._enabled is not None:
            return self._enabled
        marker = self.directory / _MARKER
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError("the cache is a file, not a folder", source=str(self.directory))
        found: Any = None
        if marker.is_file():
            try:
                found = json.loads(marker.read_text(encoding="utf-8")).get("format")
            except (OSError, ValueError, AttributeError):
                found = "unreadable"
        if found is not None and found != CACHE_FORMAT:
            get_logger(__name__, engine=self.name).warning(
                "cache ignored: written by another cache format",
                cache=str(self.directory),
                found=found,
                expected=CACHE_FORMAT,
                hint="use another folder, or remove this one to start a new cache",
            )
            self._enabled = False
            return False
        if found is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                marker, {"format": CACHE_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ")}
            )
        self._enabled = True
        return True

    def _base(self, request: ChatRequest) -> str:
        data = [
            CACHE_FORMAT,
            engine_identity(self.inner, request.lora),
            [[m.role, m.content] if len(m) == 2 else dict(m) for m in request.messages],
            _sampling_key(request),
        ]
        return hashlib.sha256(json.dumps(data, ensure_ascii=False, sort_keys=True).encode()).hexdigest()

    @staticmethod
    def _key(base: str, index: int) -> str:
        return hashlib.sha256(f"{base}:{index}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"v{CACHE_FORMAT}" / key[:2] / f"{key}.json"

    def _read(self, key: str) -> _Entry | None:
        path = self._path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != CACHE_FORMAT or data.get("key") != key:
                raise ValueError("written for another key or format")
            sample = Sample(
                int(data["index"]),
                str(data["text"]),
                data.get("finish_reason"),
                int(data.get("completion_tokens", 0)),
                _logprobs_value(data.get("logprobs")),
                tuple(
                    ToolCall.of(c["function"]["name"], json.loads(c["function"]["arguments"]), c["id"])
                    for c in data.get("tool_calls", ())
                ),
                data.get("tool_error"),
            )
            return _Entry(sample, int(data.get("prompt_tokens", 0)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            if not self._warned:
                self._warned = True
                get_logger(__name__, engine=self.name).warning(
                    "unreadable cache entry treated as missing", entry=str(path), error=str(exc)
                )
            return None

    def _write(self, key: str, sample: Sample, prompt_tokens: int, seeded: bool) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            path,
            {
                "format": CACHE_FORMAT,
                "key": key,
                "index": sample.index,
                "text": sample.text,
                "finish_reason": sample.finish_reason,
                "completion_tokens": sample.completion_tokens,
                "prompt_tokens": prompt_tokens,
                "logprobs": _logprobs_json(sample.logprobs),
                **({"tool_calls": [c.to_openai() for c in sample.tool_calls]} if sample.tool_calls else {}),
                **({"tool_error": sample.tool_error} if sample.tool_error is not None else {}),
                "seeded": seeded,
            },
            indent=None,
        )

    @contextlib.asynccontextmanager
    async def _held(self, base: str) -> AsyncIterator[None]:
        """Hold the lock of one prompt and sampling, so its samples are generated once."""
        lock, users = self._locks.setdefault(base, (anyio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                self._locks.pop(base, None)

    # --- requests -------------------------------------------------------------------------------------

    def _cacheable(self, request: ChatRequest) -> tuple[bool, bool]:
        """(read from the cache, write to it) for ``request``."""
        if not self._ready():
            return False, False
        return self.reuse_unseeded or request.sampling.seed is not None, True

    def _lookup(self, base: str, n: int) -> dict[int, _Entry]:
        found = {}
        for index in range(n):
            entry = self._read(self._key(base, index))
            if entry is not None:
                found[index] = attrs.evolve(entry, sample=attrs.evolve(entry.sample, index=index))
        return found

    @staticmethod
    def _sub_request(request: ChatRequest, run: list[int]) -> ChatRequest:
        """The request for the samples ``run`` (all of them, if the request has no seed)."""
        s = request.sampling
        seed = None if s.seed is None else s.seed + run[0]
        return attrs.evolve(request, sampling=attrs.evolve(s, n=len(run), seed=seed))

    def _groups(self, request: ChatRequest, missing: list[int]) -> list[list[int]]:
        # unseeded samples are interchangeable: one request for all; seeded ones by contiguous run
        return [missing] if request.sampling.seed is None else _runs(missing)

    async def _store(
        self, base: str, request: ChatRequest, group: list[int], completion: Completion
    ) -> list[Sample]:
        """Map a sub-request's samples to ``group``'s indices and store them (on a worker thread)."""
        samples = sorted(completion.samples, key=lambda s: s.index)
        placed = [attrs.evolve(sample, index=index) for index, sample in zip(group, samples, strict=False)]
        seeded = request.sampling.seed is not None

        def write_all() -> None:
            for sample in placed:
                self._write(self._key(base, sample.index), sample, completion.usage.prompt_tokens, seeded)

        await anyio.to_thread.run_sync(write_all)
        self.misses += len(placed)
        self.calls += 1
        self.generated_tokens += completion.usage.completion_tokens
        return placed

    @staticmethod
    def _answer(
        request: ChatRequest, cached: dict[int, _Entry], fresh: list[Sample], used: Usage
    ) -> Completion:
        samples = sorted([e.sample for e in cached.values()] + fresh, key=lambda s: s.index)
        reused = sum(e.sample.completion_tokens for e in cached.values())
        if used.requests:
            usage = attrs.evolve(used, reused_tokens=used.reused_tokens + reused)
        else:  # answered whole from the cache
            prompt = next(iter(cached.values())).prompt_tokens if cached else 0
            usage = Usage(prompt, 0, prompt, 0, reused)
        return Completion(samples, usage)

    async def generate(self, request: ChatRequest) -> Completion:
        """The stored samples of ``request``, generating (and storing) the missing ones."""
        read, write = self._cacheable(request)
        if not write:
            return await self.inner.generate(request)
        base = self._base(request)
        n = request.sampling.n
        async with self._held(base):
            cached = await anyio.to_thread.run_sync(self._lookup, base, n) if read else {}
            self.hits += len(cached)
            self.reused_tokens += sum(e.sample.completion_tokens for e in cached.values())
            missing = [i for i in range(n) if i not in cached]
            fresh: list[Sample] = []
            used = Usage()
            for group in self._groups(request, missing) if missing else []:
                completion = await self.inner.generate(self._sub_request(request, group))
                fresh += await self._store(base, request, group, completion)
                used = used + completion.usage
            return self._answer(request, cached, fresh, used)

    def stream(self, request: ChatRequest) -> EngineStream:
        """The stored samples as one delta each, then the missing ones streamed by the inner engine."""
        return producer_stream(partial(self._produce, request))

    async def _produce(self, request: ChatRequest, send: MemoryObjectSendStream[StreamItem]) -> None:
        read, write = self._cacheable(request)
        if not write:
            async with self.inner.stream(request) as items:
                async for item in items:
                    await send.send(item)
            return
        base = self._base(request)
        n = request.sampling.n
        async with self._held(base):
            cached = await anyio.to_thread.run_sync(self._lookup, base, n) if read else {}
            self.hits += len(cached)
            self.reused_tokens += sum(e.sample.completion_tokens for e in cached.values())
            for index in sorted(cached):
                sample = cached[index].sample
                await send.send(Delta(index, sample.text, sample.logprobs or ()))
            missing = [i for i in range(n) if i not in cached]
            fresh: list[Sample] = []
            used = Usage()
            for group in self._groups(request, missing) if missing else []:
                completion: Completion | None = None
                async with self.inner.stream(self._sub_request(request, group)) as items:
                    async for item in items:
                        if isinstance(item, Completion):
                            completion = item
                        elif 0 <= item.index < len(group):
                            await send.send(attrs.evolve(item, index=group[item.index]))
                if completion is None:
                    raise RuntimeError(f"engine {self.inner.name!r} ended a stream without a completion")
                fresh += await self._store(base, request, group, completion)
                used = used + completion.usage
            await send.send(self._answer(request, cached, fresh, used))
