"""A wrapper that keeps at most K requests in flight to one engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
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
    server) is never sent more than it takes.

    Args:
        inner: The engine to wrap.
        max_in_flight: The most requests in flight at once.
    """

    max_in_flight: int = field(validator=_limit)
    _slots: anyio.Semaphore = field(init=False, repr=False)
    in_flight: int = field(default=0, init=False)
    """Requests sent to the inner engine and not yet finished."""
    waiting: int = field(default=0, init=False)
    """Requests waiting for a place."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._slots = anyio.Semaphore(self.max_in_flight)

    @asynccontextmanager
    async def _place(self) -> AsyncIterator[None]:
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def generate(self, request: ChatRequest) -> Completion:
        """Generate once a place is free."""
        async with self._place():
            return await self.inner.generate(request)

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[StreamItem]]:
        """Stream once a place is free; the place is held until the block ends."""
        async with self._place(), self.inner.stream(request) as items:
            yield items
