"""Several engines serving one model, as one engine that sends each request to the least loaded."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

from attrs import define, field

from .._errors import ConfigError
from .._types import ChatRequest, Completion, Message
from ._base import Engine, StreamItem

__all__ = ("Replicas",)


def _replicas(value: Iterable[Engine]) -> tuple[Engine, ...]:
    return tuple(value)


def _check(_: object, __: object, value: tuple[Engine, ...]) -> None:
    if not value:
        raise ConfigError("Replicas needs at least one engine", path="replicas")
    for engine in value:
        if not isinstance(engine, Engine):
            raise ConfigError(f"a replica is an aftlib Engine, got {type(engine).__name__}", path="replicas")


@define(eq=False)
class Replicas(Engine):
    """Replicas of one model (several servers, or data-parallel engines) used as one engine.

    Each request goes to the replica with the fewest requests in flight; among equally loaded ones,
    to the next in turn. Entering starts every replica (and closes those already started if one fails).
    Tokenizer, context window and adapters are the first replica's: replicas serve the same model.

    Args:
        replicas: The engines, at least one.
        name: A label for logs and results; the first replica's name by default.

    Example:
        >>> from aftlib.engines import OpenAIEngine
        >>> engine = Replicas([OpenAIEngine("qwen", f"http://gpu{i}:8000/v1") for i in (1, 2)], name="qwen")
    """

    replicas: tuple[Engine, ...] = field(converter=_replicas, validator=_check)
    name: str = field(default="", kw_only=True)
    in_flight: list[int] = field(init=False, factory=list)
    """Requests in flight, per replica."""
    sent: list[int] = field(init=False, factory=list)
    """Requests sent so far, per replica."""
    _turn: int = field(default=0, init=False, repr=False)
    _stack: AsyncExitStack | None = field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.name = self.name or self.replicas[0].name
        self.in_flight = [0] * len(self.replicas)
        self.sent = [0] * len(self.replicas)

    def _pick(self) -> int:
        count = len(self.replicas)
        order = [(self._turn + k) % count for k in range(count)]
        best = min(order, key=lambda i: self.in_flight[i])
        self._turn = (best + 1) % count
        self.in_flight[best] += 1
        self.sent[best] += 1
        return best

    async def generate(self, request: ChatRequest) -> Completion:
        """Generate on the least loaded replica."""
        index = self._pick()
        try:
            return await self.replicas[index].generate(request)
        finally:
            self.in_flight[index] -= 1

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[StreamItem]]:
        """Stream from the least loaded replica."""
        index = self._pick()
        try:
            async with self.replicas[index].stream(request) as items:
                yield items
        finally:
            self.in_flight[index] -= 1

    @property
    def supports_n(self) -> bool:
        """True when every replica takes ``n`` in one request."""
        return all(r.supports_n for r in self.replicas)

    @property
    def supports_logprobs(self) -> bool:
        """True when every replica gives log probabilities."""
        return all(r.supports_logprobs for r in self.replicas)

    @property
    def supports_structured_outputs(self) -> bool:
        """True when every replica constrains decoding to a ``response_format``."""
        return all(r.supports_structured_outputs for r in self.replicas)

    @property
    def supports_priority(self) -> bool:
        """True when every replica schedules by priority."""
        return all(r.supports_priority for r in self.replicas)

    @property
    def model(self) -> str | None:
        """The model the replicas serve (the first one's; they serve one model)."""
        return self.replicas[0].model

    def leaves(self) -> tuple[Engine, ...]:
        """Every replica's leaves."""
        return tuple(leaf for replica in self.replicas for leaf in replica.leaves())

    @property
    def capacity(self) -> int | None:
        """The replicas' batch sizes added up, or None when one of them is unknown."""
        sizes = [r.capacity for r in self.replicas]
        return None if None in sizes else sum(s for s in sizes if s is not None)

    @property
    def load(self) -> int:
        """The replicas' loads added up."""
        return sum(r.load for r in self.replicas)

    @property
    def context_window(self) -> int | None:
        """The first replica's context window."""
        return self.replicas[0].context_window

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """The first replica's count."""
        return self.replicas[0].count_tokens(messages)

    def text_tokens(self, text: str) -> list[int]:
        """The first replica's tokens."""
        return self.replicas[0].text_tokens(text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The first replica's text."""
        return self.replicas[0].detokenize(tokens)

    def check_adapter(self, name: str) -> None:
        """Every replica must serve the adapter; the error names the replicas as one engine."""
        for replica in self.replicas:
            try:
                replica.check_adapter(name)
            except ConfigError as exc:
                raise ConfigError(
                    exc.message.replace(repr(replica.name), repr(self.name)), path=exc.path
                ) from None

    async def start(self) -> None:
        """Start every replica."""
        async with AsyncExitStack() as stack:
            for replica in self.replicas:
                await stack.enter_async_context(replica)
            self._stack = stack.pop_all()

    async def aclose(self) -> None:
        """Close every replica."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
