"""A wrapper that keeps at most K requests in flight to one engine."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
from attrs import define, field

from .._errors import ConfigError
from .._types import ChatRequest, Completion
from ._base import StreamItem
from ._wrapper import WrapperEngine

__all__ = ("LimitedEngine",)


def _limit(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"max_in_flight must be an integer of at least 1, got {value!r}", path="max_in_flight"
        )


@define(eq=False)
class LimitedEngine(WrapperEngine):
    """Send at most ``max_in_flight`` requests to the inner engine at once; the others wait their turn.

    A request holds its place from the moment it is sent until its completion (for a stream, until the
    stream's block ends), so an engine with a request limit of its own (a hosted API tier, a small
    server) is never sent more than it takes. Waiting requests get a place in priority order
    (:attr:`~aftlib.ChatRequest.priority`, lower first; equal priorities in arrival order), so a
    topology's later steps go first even when the server itself serves first come, first served.

    Args:
        inner: The engine to wrap.
        max_in_flight: The most requests in flight at once.
    """

    max_in_flight: int = field(validator=_limit)
    _free: int = field(init=False, repr=False)
    _waiters: list[tuple[int, int, anyio.Event]] = field(factory=list, init=False, repr=False)
    _arrivals: Iterator[int] = field(factory=itertools.count, init=False, repr=False)
    in_flight: int = field(default=0, init=False)
    """Requests sent to the inner engine and not yet finished."""
    waiting: int = field(default=0, init=False)
    """Requests waiting for a place."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._free = self.max_in_flight

    @property
    def supports_priority(self) -> bool:
        """True: waiting requests get a place in priority order."""
        return True

    async def _acquire(self, priority: int) -> None:
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._free and not self._waiters:
            self._free -= 1
            return
        entry = (priority, next(self._arrivals), anyio.Event())
        heapq.heappush(self._waiters, entry)
        self.waiting += 1
        try:
            await entry[2].wait()
        except BaseException:
            if entry[2].is_set():  # given a place, then cancelled: hand the place on
                self._release()
            else:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise
        finally:
            self.waiting -= 1

    def _release(self) -> None:
        if self._waiters:
            heapq.heappop(self._waiters)[2].set()  # the place goes straight to the first in line
        else:
            self._free += 1

    @asynccontextmanager
    async def _place(self, request: ChatRequest) -> AsyncIterator[None]:
        await self._acquire(request.priority)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._release()

    async def generate(self, request: ChatRequest) -> Completion:
        """Generate once a place is free."""
        async with self._place(request):
            return await self.inner.generate(request)

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[StreamItem]]:
        """Stream once a place is free; the place is held until the block ends."""
        async with self._place(request), self.inner.stream(request) as items:
            yield items
