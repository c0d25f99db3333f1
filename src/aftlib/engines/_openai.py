"""An engine for any OpenAI-compatible chat endpoint (vLLM, SGLang, hosted APIs)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator
from functools import partial
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream
from attrs import define, field

from .._errors import (
    ConfigError,
    ContextLengthError,
    EngineError,
    EngineTimeoutError,
    MissingExtraError,
    RateLimitError,
    ServerError,
)
from .._logging import get_logger
from .._streams import iterate, producer_stream
from .._tools import ToolCall
from .._types import ChatRequest, Completion, Delta, Sample, SamplingParams, TokenLogprob, Usage
from ._base import Engine, EngineStream, StreamItem, collect

__all__ = ("OpenAIEngine",)


def _add_call(calls: dict[int, list[str]], part: Any) -> None:
    """Add a streamed piece of a tool call: its id and name come first, its arguments in pieces."""
    call = calls.setdefault(part.index, ["", "", ""])
    function = part.function
    call[0] = part.id or call[0]
    if function is not None:
        call[1] = call[1] or function.name or ""
        call[2] += function.arguments or ""


def _calls(calls: dict[int, list[str]]) -> tuple[tuple[ToolCall, ...], str | None]:
    """The streamed calls of a sample, and why they are unusable (arguments that are not JSON)."""
    out = []
    for position in sorted(calls):
        ident, name, arguments = calls[position]
        try:
            value = json.loads(arguments or "{}")
        except ValueError as exc:
            return (), f"malformed tool call: the arguments of call {position} are not JSON ({exc})"
        if not isinstance(value, dict):
            return (), f"malformed tool call: the arguments of call {position} are not a JSON object"
        out.append(ToolCall.of(name, value, ident or None))
    return tuple(out), None


def _token_logprob(entry: Any) -> TokenLogprob:
    """One token's entry of a streamed chunk's ``logprobs.content``."""
    top = [(t.token, t.logprob) for t in entry.top_logprobs or ()]
    return TokenLogprob(entry.token, entry.logprob, top)


def _import_openai() -> Any:
    try:
        import openai
    except ImportError as exc:
        raise MissingExtraError("OpenAIEngine", "openai", "openai") from exc
    return openai


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    value = None if response is None else response.headers.get("retry-after")
    try:
        return None if value is None else max(float(value), 0.0)
    except ValueError:  # an HTTP date: not worth parsing, back off as usual
        return None


@define(eq=False, init=False)
class OpenAIEngine(Engine):
    """A model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    The ``n`` samples of a request go in one call; for a server that does not take ``n``, set
    ``supports_n=False`` and the engine sends ``n`` concurrent single calls instead. Tokens stream as the
    server sends them. On start, the server is asked for its models, so an unreachable server, a refused
    key or a model the server does not serve fails before any generation. Errors become aftlib's engine
    errors, with the HTTP status and a rate limit's ``retry-after`` on them. For several servers of one
    model, wrap one engine per server in :class:`~aftlib.engines.Replicas`.

    Args:
        model: The model name the server serves.
        base_url: The endpoint, ``http://host:port/v1``.
        api_key_env: The environment variable holding the API key; read at start, never stored in
            results, logs or traces. None sends a placeholder key (what local servers expect).
        name: A label for logs and results; the model by default.
        timeout: Seconds allowed per request.
        supports_n: Whether the server takes ``n`` samples per call.
        priority: Send each request's :attr:`~aftlib.ChatRequest.priority` in the body (vLLM's server
            takes it, and schedules by it when started with ``--scheduling-policy priority``). A server
            that refuses the field (HTTP 400 naming it) is sent requests without it from then on, with one
            warning; ``False`` never sends it.
        http_client: An ``httpx.AsyncClient`` to send through (tests pass one with a mock transport).
    """

    model: str
    base_url: str
    api_key_env: str | None
    timeout: float
    http_client: Any = field(repr=False)
    _supports_n: bool = True
    _priority: bool = True
    _client: Any = field(default=None, repr=False)

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str | None = None,
        name: str | None = None,
        timeout: float = 600.0,
        supports_n: bool = True,
        priority: bool = True,
        http_client: Any = None,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ConfigError(f"model must be a non-empty string, got {model!r}", path="model")
        if not isinstance(base_url, str) or not base_url:
            hint = (
                "; for several servers of one model use aftlib.engines.Replicas"
                if isinstance(base_url, list | tuple)
                else ""
            )
            raise ConfigError(f"base_url must be one URL, got {base_url!r}{hint}", path="base_url")
        self.__attrs_init__(
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            timeout=timeout,
            http_client=http_client,
            supports_n=bool(supports_n),
            priority=bool(priority),
            name=name or model,
        )

    @property
    def supports_n(self) -> bool:
        """Whether the server takes ``n`` samples per call (else ``n`` single calls are sent)."""
        return self._supports_n

    @property
    def supports_logprobs(self) -> bool:
        """True: the Chat Completions API returns log probabilities when asked (vLLM's server does)."""
        return True

    @property
    def supports_structured_outputs(self) -> bool:
        """True: a request's ``response_format`` is sent, and the server constrains decoding to it.

        A server that cannot refuses the request (an :class:`~aftlib.EngineError`); answers are checked
        after generation either way.
        """
        return True

    @property
    def supports_priority(self) -> bool:
        """Whether requests carry their priority (the server schedules by it if it was started so)."""
        return self._priority

    def _refused_priority(self, exc: Any) -> bool:
        """True (once, with a warning) when the server refused the ``priority`` field: stop sending it."""
        if not self._priority or "priority" not in str(getattr(exc, "message", exc)).lower():
            return False
        self._priority = False
        get_logger(__name__, engine=self.name).warning(
            "the server refused the 'priority' field; requests go without it from now on "
            "(set priority: false on this engine to silence this)",
            base_url=self.base_url,
            error=str(getattr(exc, "message", exc)),
        )
        return True

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
        """Create the client and check that the server serves the model."""
        openai = _import_openai()
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key(),
            timeout=self.timeout,
            max_retries=0,
            http_client=self.http_client,
        )
        try:
            served = [m.id async for m in client.models.list()]
        except Exception as exc:
            await self._close(client)
            raise self._translate(exc) from exc
        if self.model not in served:
            await self._close(client)
            raise ConfigError(
                f"engine {self.name!r}: {self.base_url} does not serve model {self.model!r}; "
                f"it serves {', '.join(served) or 'nothing'}",
                path="model",
            )
        self._client = client
        get_logger(__name__, engine=self.name).info("OpenAI engine ready", base_url=self.base_url)

    async def _close(self, client: Any) -> None:
        if self.http_client is None:  # a client passed in belongs to the caller
            await client.close()

    async def aclose(self) -> None:
        """Close the client (not an ``http_client`` passed in)."""
        client, self._client = self._client, None
        if client is not None:
            await self._close(client)

    def _translate(self, exc: Exception, *, streaming: bool = False) -> EngineError:
        """The aftlib error for an openai error; ``streaming`` when the answer had started to arrive."""
        openai = _import_openai()
        where = f"engine {self.name!r} ({self.base_url})"
        status = getattr(exc, "status_code", None)
        if isinstance(exc, openai.RateLimitError):
            return RateLimitError(
                f"{where}: rate limited: {exc.message}", retry_after=_retry_after(exc), status=status
            )
        if isinstance(exc, openai.APITimeoutError):
            return EngineTimeoutError(f"{where}: no answer within {self.timeout:g}s")
        if isinstance(exc, openai.APIConnectionError):
            if streaming:
                return ServerError(f"{where}: the connection dropped mid-stream: {exc.__cause__ or exc}")
            return ServerError(f"{where}: cannot reach the server: {exc.__cause__ or exc}")
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            source = f"the key in ${self.api_key_env}" if self.api_key_env else "no API key"
            return EngineError(f"{where}: the server refused {source} (HTTP {status})", status=status)
        if isinstance(exc, openai.NotFoundError):
            return EngineError(
                f"{where}: not found (is model {self.model!r} served here?): {exc.message}", status=status
            )
        if isinstance(exc, openai.BadRequestError):
            text = str(exc.message).lower()
            if "context" in text and ("length" in text or "maximum" in text):
                return ContextLengthError(f"{where}: {exc.message}", status=status)
            return EngineError(f"{where}: bad request: {exc.message}", status=status)
        if isinstance(exc, openai.APIStatusError):
            kind = ServerError if exc.status_code >= 500 else EngineError
            return kind(f"{where}: HTTP {exc.status_code}: {exc.message}", status=status)
        return EngineError(f"{where}: {exc!r}")

    @property
    def client(self) -> Any:
        """The ``openai.AsyncOpenAI`` client (after start)."""
        if self._client is None:
            raise EngineError(f"engine {self.name!r} is not started: use 'async with engine:'")
        return self._client

    async def generate(self, request: ChatRequest) -> Completion:
        """Generate ``request.sampling.n`` samples."""
        return await collect(self.stream(request))

    def stream(self, request: ChatRequest) -> EngineStream:
        """Stream the samples' text as the server sends it, then the completion."""
        if request.lora is not None:
            raise ConfigError(
                f"engine {self.name!r}: an OpenAI endpoint takes no LoRA adapter; serve it as a model"
            )
        if request.sampling.n == 1 or self.supports_n:
            return iterate(self._call(request, request.sampling.n, 0))
        return producer_stream(partial(self._fan_out, request))

    async def _fan_out(self, request: ChatRequest, send: MemoryObjectSendStream[StreamItem]) -> None:
        """``n`` single calls at once, merged into one stream with the samples re-indexed."""
        completions: list[Completion] = []

        async def one(index: int) -> None:
            async with iterate(self._call(request, 1, index)) as items:
                async for item in items:
                    if isinstance(item, Completion):
                        completions.append(item)
                    else:
                        await send.send(item)

        async with anyio.create_task_group() as tg:
            for index in range(request.sampling.n):
                tg.start_soon(one, index)
        samples = sorted((s for c in completions for s in c.samples), key=lambda s: s.index)
        await send.send(Completion(samples, Usage.sum(c.usage for c in completions)))

    async def _call(self, request: ChatRequest, n: int, first_index: int) -> AsyncGenerator[StreamItem, None]:
        client = self.client
        s: SamplingParams = request.sampling
        texts: dict[int, list[str]] = {i: [] for i in range(n)}
        chunks = dict.fromkeys(texts, 0)
        reasons: dict[int, str | None] = dict.fromkeys(texts)
        logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in texts}
        usage = Usage(requests=1)
        answered = False
        extra: dict[str, Any] = {}
        if s.logprobs is not None:
            extra = {"logprobs": True, "top_logprobs": s.logprobs}
        if s.response_format is not None:
            extra["response_format"] = s.response_format.to_openai()
        if request.tools:
            extra["tools"] = [t.to_openai() for t in request.tools]
            extra["tool_choice"] = request.tool_choice.to_openai()
        calls: dict[int, dict[int, list[str]]] = {i: {} for i in texts}  # sample -> call -> id, name, args
        try:
            while True:
                ranked = self._priority and request.priority != 0
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
                        extra_body={"priority": request.priority} if ranked else None,
                        **extra,
                    )
                except _import_openai().BadRequestError as exc:
                    if ranked and self._refused_priority(exc):
                        continue  # the same request, without its priority
                    raise
                break
            answered = True
            async with response:
                async for chunk in response:
                    for choice in chunk.choices:
                        index = choice.index
                        if choice.finish_reason is not None:
                            reasons[index] = choice.finish_reason
                        content = getattr(getattr(choice, "logprobs", None), "content", None)
                        new = [_token_logprob(entry) for entry in content or ()]
                        logprobs[index] += new
                        text = choice.delta.content if choice.delta is not None else None
                        for part in getattr(choice.delta, "tool_calls", None) or ():
                            _add_call(calls[index], part)
                        if text:
                            texts[index].append(text)
                            chunks[index] += 1
                        if text or new:
                            yield Delta(first_index + index, text or "", new)
                    if chunk.usage is not None:
                        details = getattr(chunk.usage, "prompt_tokens_details", None)
                        cached = getattr(details, "cached_tokens", None) or 0
                        usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, cached, 1)
        except EngineError:
            raise
        except Exception as exc:
            openai = _import_openai()
            if isinstance(exc, openai.OpenAIError):
                error = self._translate(exc, streaming=answered)
                if n > 1 and isinstance(exc, openai.BadRequestError):
                    hint = "if the server does not take n > 1 samples per call, set supports_n=False"
                    error = EngineError(f"{error} ({hint})", status=error.status)
                raise error from exc
            raise
        # Servers report completion tokens for the whole call; per sample, count the streamed chunks.
        samples = [
            Sample(
                first_index + i,
                "".join(texts[i]),
                reasons[i],
                usage.completion_tokens if n == 1 else chunks[i],
                None if s.logprobs is None else tuple(logprobs[i]),
                *_calls(calls[i]),
            )
            for i in sorted(texts)
        ]
        yield Completion(samples, usage)
