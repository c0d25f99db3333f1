"""A wrapper that retries transient engine failures and bounds each attempt in time."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import anyio
import tenacity
from anyio.streams.memory import MemoryObjectSendStream
from attrs import define, field

from .._errors import ConfigError, EngineTimeoutError, RateLimitError, ServerError
from .._logging import get_logger
from .._streams import move_on_after, producer_stream
from .._types import ChatRequest, Completion, Delta
from ._base import EngineStream, StreamItem
from ._wrapper import WrapperEngine

__all__ = ("TRANSIENT", "RetryingEngine")

TRANSIENT: tuple[type[Exception], ...] = (RateLimitError, EngineTimeoutError, ServerError)
"""The errors :class:`RetryingEngine` retries by default."""


def _positive(_: object, attribute: object, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"must be a positive number, got {value!r}", path=getattr(attribute, "name", None))


def _not_negative(_: object, attribute: object, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"must be >= 0, got {value!r}", path=getattr(attribute, "name", None))


def _attempts(_: object, attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"must be an integer of at least 1, got {value!r}", path="attempts")


@define(eq=False)
class RetryingEngine(WrapperEngine):
    """Retry an engine's transient failures with exponential backoff and full jitter.

    A request that fails with one of ``retry_on`` (rate limits, timeouts, server errors and dropped
    connections by default) is sent again after a random wait of up to ``backoff x 2^attempt`` seconds
    (at most ``max_backoff``), up to ``attempts`` times in all. A :class:`~aftlib.RateLimitError` that
    carries the server's ``retry_after`` waits that long instead. With ``timeout``, an attempt whose
    engine work takes longer is cancelled (and aborted inside the engine) and counts as an
    :class:`~aftlib.EngineTimeoutError`; the time a stream waits for its consumer to take the text is
    not counted. A stream is retried only before its first token: text already delivered cannot be
    taken back.

    The retry loop is tenacity's (``AsyncRetrying``, full-jitter exponential waits), sleeping through
    anyio, so it runs on asyncio and trio alike.

    Args:
        inner: The engine to wrap; entering the wrapper enters it.
        attempts: Tries per request, the first included.
        backoff: The first wait's upper bound, in seconds (0 retries at once).
        max_backoff: The largest wait's upper bound.
        timeout: Seconds of engine work allowed per attempt, or None.
        retry_on: The errors worth another try.
    """

    attempts: int = field(default=4, validator=_attempts)
    backoff: float = field(default=0.5, validator=_not_negative)
    max_backoff: float = field(default=30.0, validator=_not_negative)
    timeout: float | None = field(default=None, validator=_positive)
    retry_on: tuple[type[Exception], ...] = TRANSIENT

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, RateLimitError) and error.retry_after is not None:
            return max(error.retry_after, 0.0)
        jitter = tenacity.wait_random_exponential(multiplier=self.backoff, max=self.max_backoff)
        return float(jitter(state))

    def _log(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        get_logger(__name__, engine=self.name).warning(
            "retrying",
            attempt=state.attempt_number + 1,
            of=self.attempts,
            wait=round(wait, 3),
            error=str(error),
        )

    def _retrying(self, retryable: Callable[[BaseException], bool]) -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(retryable),
            before_sleep=self._log,
            sleep=anyio.sleep,
            reraise=True,
        )

    def _transient(self, error: BaseException) -> bool:
        return isinstance(error, self.retry_on)

    def _timed_out(self) -> EngineTimeoutError:
        return EngineTimeoutError(f"engine {self.name!r}: no answer within {self.timeout:g}s")

    async def generate(self, request: ChatRequest) -> Completion:
        """Generate, retrying transient failures."""
        async for attempt in self._retrying(self._transient):
            with attempt:
                with move_on_after(self.timeout):
                    return await self.inner.generate(request)
                raise self._timed_out()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def stream(self, request: ChatRequest) -> EngineStream:
        """Stream, retrying transient failures that happen before the first token."""
        return producer_stream(partial(self._produce, request))

    async def _produce(self, request: ChatRequest, send: MemoryObjectSendStream[StreamItem]) -> None:
        started = False

        def retryable(error: BaseException) -> bool:
            return not started and self._transient(error)

        async for attempt in self._retrying(retryable):
            with attempt:
                with move_on_after(self.timeout) as clock:
                    async with self.inner.stream(request) as items:
                        async for item in items:
                            started = started or isinstance(item, Delta)
                            with clock.paused():  # the consumer's time is not the engine's
                                await send.send(item)
                    return
                raise self._timed_out()
