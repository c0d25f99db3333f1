"""Streams that own their tasks, and timeouts that count only the producer's own time.

Two pieces every streaming layer of aftlib is built from:

- :func:`producer_stream`: an async context manager that runs a producer in a task group it owns and
  yields an async iterator over what the producer sends, through a bounded buffer (a slow consumer
  slows the producer down; memory does not grow with the stream's length). Leaving the block cancels
  the producer. An error of the producer is raised by the iterator, after the items sent before it,
  so the consumer sees the same error whatever its speed. This is the anyio/httpx pattern; an async
  generator must never ``yield`` inside a task group or cancel scope.
- :class:`Clock`: a timeout that can be paused while its owner waits for someone else (a consumer that
  has not taken the last item yet), so engine timeouts and layer timeouts measure engine time only.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._util import unwrap_group

__all__ = ("Clock", "iterate", "move_on_after", "producer_stream", "fail_after")

T = TypeVar("T")

DEFAULT_BUFFER = 64
"""Items a stream holds for a consumer that has not taken them yet."""


class _Items(Generic[T]):
    """What :func:`producer_stream` yields: the items, then the producer's error if it failed."""

    def __init__(self, receive: MemoryObjectReceiveStream[T], failure: list[BaseException]) -> None:
        self._receive = receive
        self._failure = failure

    def __aiter__(self) -> _Items[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        if self._failure:  # raised outside the except block: its own __cause__ is kept, no context added
            raise self._failure.pop()
        raise StopAsyncIteration


@asynccontextmanager
async def producer_stream(
    produce: Callable[[MemoryObjectSendStream[T]], Awaitable[None]], *, buffer: int = DEFAULT_BUFFER
) -> AsyncIterator[AsyncIterator[T]]:
    """Run ``produce(send)`` in a task owned by the block and yield an iterator over what it sends.

    Args:
        produce: Sends items with ``await send.send(item)``; it must not close ``send`` itself.
        buffer: Items held for the consumer before ``send`` waits for it.

    Yields:
        The items, in order; when the producer fails, its error is raised after the items it sent.
    """
    send, receive = anyio.create_memory_object_stream[T](buffer)
    failure: list[BaseException] = []

    async def run() -> None:
        async with send:
            try:
                await produce(send)
            except Exception as exc:  # handed to the consumer; cancellation passes through
                failure.append(exc)

    with unwrap_group():
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                async with receive:
                    yield _Items(receive, failure)
            finally:
                tg.cancel_scope.cancel()


@asynccontextmanager
async def iterate(generator: AsyncGenerator[T, None]) -> AsyncIterator[AsyncIterator[T]]:
    """Yield an async generator that needs no task of its own, and close it when the block ends."""
    async with aclosing(generator):
        yield generator


class Clock:
    """A cancel scope whose deadline stops running while the owner waits on someone else.

    Use :func:`fail_after` or :func:`move_on_after` to make one, and :meth:`paused` around waits that
    are not the owner's own work (handing an item to a slow consumer). Pauses nest and may overlap
    across tasks: the clock runs again when the last one ends.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.scope = anyio.CancelScope(deadline=math.inf)
        self._paused = 0
        self._left = math.inf if seconds is None else seconds

    def _start(self) -> None:
        if self.seconds is not None:
            self.scope.deadline = anyio.current_time() + self.seconds

    @property
    def expired(self) -> bool:
        """True when the clock ran out (and cancelled what it timed)."""
        return self.seconds is not None and self.scope.cancelled_caught

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the clock for the block."""
        if self.seconds is None:
            yield
            return
        if self._paused == 0:
            self._left = self.scope.deadline - anyio.current_time()
            self.scope.deadline = math.inf
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            if self._paused == 0:
                self.scope.deadline = anyio.current_time() + self._left


@contextmanager
def move_on_after(seconds: float | None) -> Iterator[Clock]:
    """Like :func:`anyio.move_on_after`, with a clock that can be paused (see :class:`Clock`)."""
    clock = Clock(seconds)
    with clock.scope:
        clock._start()
        yield clock


@contextmanager
def fail_after(seconds: float | None) -> Iterator[Clock]:
    """Like :func:`anyio.fail_after` (raises :class:`TimeoutError`), with a pausable clock."""
    with move_on_after(seconds) as clock:
        yield clock
    if clock.expired:
        raise TimeoutError
