"""An engine for any OpenAI-compatible chat endpoint (vLLM, SGLang, hosted APIs)."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from attrs import define, field

from .._errors import (
    ConfigError,
    ContextLengthError,
    EngineError,
    EngineTimeoutError,
    RateLimitError,
    ServerError,
)
from .._logging import get_logger
from .._types import ChatRequest, Completion, Delta, Sample, SamplingParams, Usage
from .._util import unwrap_group
from ._base import Engine, StreamItem, collect

__all__ = ("OpenAIEngine",)

_INSTALL_HINT = "OpenAIEngine needs the openai package: pip install 'aftlib[openai]'"


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return openai


def _urls(value: str | Sequence[str]) -> tuple[str, ...]:
    urls = (value,) if isinstance(value, str) else tuple(value)
    if not urls or not all(isinstance(u, str) and u for u in urls):
        raise ConfigError(
            f"base_url must be a URL or a non-empty list of URLs, got {value!r}", path="base_url"
        )
    return urls


@define(eq=False, init=False)
class OpenAIEngine(Engine):
    """A model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Several base URLs are replicas of one model: requests go to them in turn. The ``n`` samples of a
    request go in one call; a server that rejects ``n`` gets ``n`` concurrent single calls instead (and
    the engine remembers). Tokens stream as the server sends them. On start, each replica is asked for
    its models, so an unreachable server, a refused key or a model the server does not serve fails before
    any generation. Errors become aftlib's engine errors.

    Args:
        model: The model name the server serves.
        base_url: The endpoint (``http://host:port/v1``), or a list of replicas.
        api_key_env: The environment variable holding the API key; read at start, never stored in
            results, logs or traces. None sends a placeholder key (what local servers expect).
        name: A label for logs and results; the model by default.
        timeout: Seconds allowed per request.
        http_client: An ``httpx.AsyncClient`` to send through (tests pass one with a mock transport).
    """

    model: str
    base_urls: tuple[str, ...]
    api_key_env: str | None
    timeout: float
    http_client: Any = field(repr=False)
    supports_n: bool = True
    _clients: list[Any] = field(factory=list, repr=False)
    _turn: int = field(default=0, repr=False)

    def __init__(
        self,
        model: str,
        base_url: str | Sequence[str],
        *,
        api_key_env: str | None = None,
        name: str | None = None,
        timeout: float = 600.0,
        http_client: Any = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model must be a non-empty string, got {model!r}", path="model")
        self.__attrs_init__(
            model=model,
            base_urls=_urls(base_url),
            api_key_env=api_key_env,
            timeout=timeout,
            http_client=http_client,
            name=name or model,
        )

    def _api_key(self) -> str:
        if self.api_key_env is None:
            return "EMPTY"
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"engine {self.name!r}: the environment variable {self.api_key_env} (its API key) is not set",
                path="api_key_env",
            )
        return key

    async def start(self) -> None:
        """Create a client per replica and check that each one serves the model."""
        openai = _import_openai()
        key = self._api_key()
        self._clients = [
            openai.AsyncOpenAI(
                base_url=url, api_key=key, timeout=self.timeout, max_retries=0, http_client=self.http_client
            )
            for url in self.base_urls
        ]
        for url, client in zip(self.base_urls, self._clients, strict=True):
            try:
                served = [m.id async for m in client.models.list()]
            except Exception as exc:
                await self.aclose()
                raise self._translate(exc, url) from exc
            if self.model not in served:
                await self.aclose()
                raise ConfigError(
                    f"engine {self.name!r}: {url} does not serve model {self.model!r}; "
                    f"it serves {', '.join(served) or 'nothing'}",
                    path="model",
                )
        get_logger(__name__, engine=self.name).info("OpenAI engine ready", replicas=len(self._clients))

    async def aclose(self) -> None:
        """Close the clients (not an ``http_client`` passed in)."""
        clients, self._clients = self._clients, []
        if self.http_client is None:
            for client in clients:
                await client.close()

    def _translate(self, exc: Exception, url: str, *, streaming: bool = False) -> EngineError:
        """The aftlib error for an openai error; ``streaming`` when the answer had started to arrive."""
        openai = _import_openai()
        where = f"engine {self.name!r} ({url})"
        if isinstance(exc, openai.RateLimitError):
            return RateLimitError(f"{where}: rate limited: {exc.message}")
        if isinstance(exc, openai.APITimeoutError):
            return EngineTimeoutError(f"{where}: no answer within {self.timeout:g}s")
        if isinstance(exc, openai.APIConnectionError):
            if streaming:
                return ServerError(f"{where}: the connection dropped mid-stream: {exc.__cause__ or exc}")
            return ServerError(f"{where}: cannot reach the server: {exc.__cause__ or exc}")
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            source = f"the key in ${self.api_key_env}" if self.api_key_env else "no API key"
            return EngineError(f"{where}: the server refused {source} (HTTP {exc.status_code})")
        if isinstance(exc, openai.NotFoundError):
            return EngineError(f"{where}: not found (is model {self.model!r} served here?): {exc.message}")
        if isinstance(exc, openai.BadRequestError):
            text = str(exc.message).lower()
            if "context" in text and ("length" in text or "maximum" in text):
                return ContextLengthError(f"{where}: {exc.message}")
            return EngineError(f"{where}: bad request: {exc.message}")
        if isinstance(exc, openai.APIStatusError):
            kind = ServerError if exc.status_code >= 500 else EngineError
            return kind(f"{where}: HTTP {exc.status_code}: {exc.message}")
        return EngineError(f"{where}: {exc!r}")

    def _client(self) -> tuple[str, Any]:
        if not self._clients:
            raise EngineError(f"engine {self.name!r} is not started: use 'async with engine:'")
        turn = self._turn % len(self._clients)
        self._turn += 1
        return self.base_urls[turn], self._clients[turn]

    async def generate(self, request: ChatRequest) -> Completion:
        """Generate ``request.sampling.n`` samples."""
        return await collect(self.stream(request))

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """Stream the samples' text as the server sends it, then the completion."""
        if request.lora is not None:
            raise ConfigError(
                f"engine {self.name!r}: an OpenAI endpoint takes no LoRA adapter; serve it as a model"
            )
        n = request.sampling.n
        if n == 1 or self.supports_n:
            try:
                async with aclosing(self._call(request, n, 0)) as calls:
                    async for item in calls:
                        yield item
                return
            except EngineError as exc:
                if n == 1 or not _rejects_n(exc):
                    raise
                self.supports_n = False
                get_logger(__name__, engine=self.name).info("server rejects n: sending single requests")
        async with aclosing(self._fan_out(request)) as fanned:
            async for item in fanned:
                yield item

    async def _fan_out(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """``n`` single calls at once, merged into one stream with the samples re-indexed."""
        n = request.sampling.n
        send, receive = anyio.create_memory_object_stream[StreamItem](math.inf)
        completions: list[Completion] = []

        async def one(index: int, out: MemoryObjectSendStream[StreamItem]) -> None:
            async with out, aclosing(self._call(request, 1, index)) as calls:
                async for item in calls:
                    if isinstance(item, Completion):
                        completions.append(item)
                    else:
                        await out.send(item)

        with unwrap_group():
            async with anyio.create_task_group() as tg, receive:
                for index in range(n):
                    tg.start_soon(one, index, send.clone())
                send.close()
                async for item in receive:
                    yield item
        samples = sorted((s for c in completions for s in c.samples), key=lambda s: s.index)
        yield Completion(samples, Usage.sum(c.usage for c in completions))

    async def _call(self, request: ChatRequest, n: int, first_index: int) -> AsyncGenerator[StreamItem, None]:
        url, client = self._client()
        s: SamplingParams = request.sampling
        texts: dict[int, list[str]] = {i: [] for i in range(n)}
        chunks = dict.fromkeys(texts, 0)
        reasons: dict[int, str | None] = dict.fromkeys(texts)
        usage = Usage(requests=1)
        answered = False
        try:
            response = await client.chat.completions.create(
                model=self.model,
                messages=[dict(m) for m in request.messages],
                n=n,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=s.seed,
                stop=list(s.stop) or None,
                stream=True,
                stream_options={"include_usage": True},
            )
            answered = True
            async with response:
                async for chunk in response:
                    for choice in chunk.choices:
                        index = choice.index
                        if choice.finish_reason is not None:
                            reasons[index] = choice.finish_reason
                        text = choice.delta.content if choice.delta is not None else None
                        if text:
                            texts[index].append(text)
                            chunks[index] += 1
                            yield Delta(first_index + index, text)
                    if chunk.usage is not None:
                        details = getattr(chunk.usage, "prompt_tokens_details", None)
                        cached = getattr(details, "cached_tokens", None) or 0
                        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, cached, 1)
        except EngineError:
            raise
        except Exception as exc:
            openai = _import_openai()
            if isinstance(exc, openai.OpenAIError):
                raise self._translate(exc, url, streaming=answered) from exc
            raise
        # Servers report completion tokens for the whole call; per sample, count the streamed chunks.
        samples = [
            Sample(
                first_index + i,
                "".join(texts[i]),
                reasons[i],
                usage.completion_tokens if n == 1 else chunks[i],
            )
            for i in sorted(texts)
        ]
        yield Completion(samples, usage)


def _rejects_n(exc: EngineError) -> bool:
    text = str(exc).lower()
    return "bad request" in text and (
        "'n'" in text or " n " in text or "n must" in text or "parameter n" in text
    )
