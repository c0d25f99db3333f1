"""The base of engines that wrap another engine and change one thing about it."""

from __future__ import annotations

from collections.abc import Sequence

from attrs import define, field

from .._types import ChatRequest, Completion, Message
from ._base import Engine, EngineStream

__all__ = ("WrapperEngine",)


@define(eq=False)
class WrapperEngine(Engine):
    """An engine that forwards everything to :attr:`inner`; subclasses override only what they change.

    Generation, streaming, ``n`` support, the context window and tokenizer, LoRA adapters, start and
    close all go to the inner engine (entering the wrapper enters it, counted like any entry), so a
    retrying, rate-limited or replicated engine budgets prompts and serves adapters as the engine it
    wraps does.

    Args:
        inner: The engine to wrap.
        name: A label for logs and results; the inner engine's name by default.
    """

    inner: Engine
    name: str = field(default="", kw_only=True)

    def __attrs_post_init__(self) -> None:
        self.name = self.name or self.inner.name

    async def generate(self, request: ChatRequest) -> Completion:
        """The inner engine's completion."""
        return await self.inner.generate(request)

    def stream(self, request: ChatRequest) -> EngineStream:
        """The inner engine's stream."""
        return self.inner.stream(request)

    @property
    def model(self) -> str | None:
        """The inner engine's model."""
        return self.inner.model

    def leaves(self) -> tuple[Engine, ...]:
        """The inner engine's leaves."""
        return self.inner.leaves()

    @property
    def supports_n(self) -> bool:
        """Whether the inner engine takes ``n`` samples in one request."""
        return self.inner.supports_n

    @property
    def supports_logprobs(self) -> bool:
        """Whether the inner engine gives log probabilities."""
        return self.inner.supports_logprobs

    @property
    def supports_structured_outputs(self) -> bool:
        """Whether the inner engine constrains decoding to a ``response_format``."""
        return self.inner.supports_structured_outputs

    @property
    def supports_priority(self) -> bool:
        """The inner engine's."""
        return self.inner.supports_priority

    @property
    def capacity(self) -> int | None:
        """The inner engine's batch size."""
        return self.inner.capacity

    @property
    def load(self) -> int:
        """The inner engine's load."""
        return self.inner.load

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
        """Enter the inner engine (counted, like any entry)."""
        await self.inner.__aenter__()

    async def aclose(self) -> None:
        """Leave the inner engine."""
        await self.inner.__aexit__(None, None, None)
