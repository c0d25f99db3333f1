"""A wrapper that retries transient engine failures and bounds each attempt in time."""

from __future__ import annotations

import random
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

import anyio
from attrs import define, field

from .._errors import EngineTimeoutError, RateLimitError, ServerError
from .._logging import get_logger
from .._types import ChatRequest, Completion, Delta, Message
from ._base import Engine, StreamItem

__all__ = ("RetryingEngine",)

TRANSIENT: tuple[type[Exception], ...] = (RateLimitError, EngineTimeoutError, ServerError)


@define(eq=False)
class RetryingEngine(Engine):
    """Retry an engine's transient failures with exponential backoff and full jitter.

    A request that fails with one of ``retry_on`` (rate limits, timeouts, server errors and dropped
    connections by default) is sent again after a random wait of up to ``backoff x 2^attempt`` seconds
    (at most ``max_backoff``), up to ``attempts`` times in all. With ``timeout``, each attempt that takes
    longer is cancelled (and aborted inside the engine) and counts as an :class:`~aftlib.EngineTimeoutError`.
    A stream is retried only before its first token: text already delivered cannot be taken back.

    Args:
        inner: The engine to wrap; entering the wrapper enters it.
        attempts: Tries per request, the first included.
        backoff: The first wait's upper bound, in seconds.
        max_backoff: The largest wait's upper bound.
        timeout: Seconds allowed per attempt, or None.
        retry_on: The errors worth another try.
    """

    inner: Engine
    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 30.0
    timeout: float | None = None
    retry_on: tuple[type[Exception], ...] = TRANSIENT
    name: str = field(default="", kw_only=True)

    def __attrs_post_init__(self) -> None:
        self.name = self.name or self.inner.name

    def _wait(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    async def generate(self, request: ChatRequest) -> Completion:
        """Generate, retrying transient failures."""
        attempt = 0
        while True:
            try:
                with anyio.fail_after(self.timeout):
                    return await self.inner.generate(request)
            except TimeoutError:
                error: Exception = EngineTimeoutError(
                    f"engine {self.name!r}: no answer within {self.timeout:g}s"
                )
            except self.retry_on as exc:
                error = exc
            attempt = await self._retry_or_raise(error, attempt)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """Stream, retrying transient failures that happen before the first token."""
        attempt = 0
        while True:
            started = False
            try:
                with anyio.fail_after(self.timeout):
                    async with aclosing(self.inner.stream(request)) as items:
                        async for item in items:
                            started = started or isinstance(item, Delta)
                            yield item
                return
            except TimeoutError:
                error: Exception = EngineTimeoutError(
                    f"engine {self.name!r}: no answer within {self.timeout:g}s"
                )
            except self.retry_on as exc:
                error = exc
            if started:
                raise error
            attempt = await self._retry_or_raise(error, attempt)

    async def _retry_or_raise(self, error: Exception, attempt: int) -> int:
        attempt += 1
        if attempt >= self.attempts:
            raise error
        wait = self._wait(attempt - 1)
        get_logger(__name__, engine=self.name).warning(
            "retrying", attempt=attempt + 1, of=self.attempts, wait=round(wait, 3), error=str(error)
        )
        await anyio.sleep(wait)
        return attempt

    @property
    def context_window(self) -> int | None:
        """The inner engine's context window."""
        return self.inner.context_window

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """The inner engine's count."""
        return self.inner.count_tokens(messages)

    def text_tokens(self, text: str) -> list[int]:
        """The inner engine's tokens."""
        return self.inner.text_tokens(text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The inner engine's text."""
        return self.inner.detokenize(tokens)

    def check_adapter(self, name: str) -> None:
        """The inner engine's adapters."""
        self.inner.check_adapter(name)

    async def start(self) -> None:
        """Start the inner engine (counted, like any entry)."""
        await self.inner.__aenter__()

    async def aclose(self) -> None:
        """Leave the inner engine."""
        await self.inner.__aexit__(None, None, None)
