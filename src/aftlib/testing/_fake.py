"""A scripted engine for tests and dry runs."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

import anyio
import anyio.lowlevel
from attrs import define, field

from .._errors import AftError, EngineError
from .._types import ChatRequest, Completion, Delta, Message, Sample, Usage
from ..engines._base import Engine, StreamItem

__all__ = ("FakeEngine", "Handler")

Handler = Callable[[ChatRequest, int], "str | Awaitable[str]"]
"""``handler(request, index)`` returns (or awaits) the text of sample ``index`` of ``request``."""


def _words(text: str) -> list[str]:
    """Split text into word-sized pieces that join back to the text exactly."""
    pieces: list[str] = []
    start = 0
    for i in range(1, len(text)):
        if text[i] == " " and text[i - 1] != " ":
            pieces.append(text[start:i])
            start = i
    if text:
        pieces.append(text[start:])
    return pieces


def _count_tokens(text: str) -> int:
    return len(text.split())


@define(eq=False)
class FakeEngine(Engine):
    """An engine that answers from a handler instead of a model.

    Without a handler every sample gets a deterministic text that differs per request and per sample.
    Every request received is recorded in :attr:`requests`, in arrival order. Text streams word by word.

    Args:
        handler: ``handler(request, index) -> str`` (sync or async) giving the text of each sample. An
            exception it raises reaches the caller as an :class:`~aftlib.EngineError` (an ``AftError`` it
            raises passes unchanged), as an engine failure would.
        latency: Seconds to wait before answering each request.
        context_window: A context size in tokens (one token per word) for prompt budgeting, or None.
        name: A label for logs and results.

    Example:
        >>> engine = FakeEngine(handler=lambda request, index: f"draft {index}")
    """

    handler: Handler | None = None
    latency: float = 0.0
    context_window: int | None = None
    requests: list[ChatRequest] = field(factory=list, init=False)
    _vocab: dict[str, int] = field(factory=dict, init=False, repr=False)
    _words: list[str] = field(factory=list, init=False, repr=False)

    def check_adapter(self, name: str) -> None:
        """A fake engine accepts any LoRA adapter name (and records it on the request)."""

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Whitespace-separated words of every message, plus 4 per message for the chat format."""
        return sum(len(m.content.split()) + 4 for m in messages)

    def text_tokens(self, text: str) -> list[int]:
        """One token per whitespace-separated word."""
        ids = []
        for word in text.split():
            if word not in self._vocab:
                self._vocab[word] = len(self._words)
                self._words.append(word)
            ids.append(self._vocab[word])
        return ids

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The words of ``tokens``, joined by spaces."""
        return " ".join(self._words[t] for t in tokens)

    async def generate(self, request: ChatRequest) -> Completion:
        """Answer ``request`` with ``request.sampling.n`` samples."""
        self.requests.append(request)
        if self.latency:
            await anyio.sleep(self.latency)
        else:
            await anyio.lowlevel.checkpoint()
        return self._completion(request, [await self._text(request, i) for i in range(request.sampling.n)])

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """Answer ``request``, yielding its samples' words in turn, then the completion."""
        self.requests.append(request)
        if self.latency:
            await anyio.sleep(self.latency)
        texts = [await self._text(request, i) for i in range(request.sampling.n)]
        pieces = [_words(t) for t in texts]
        for step in range(max((len(p) for p in pieces), default=0)):
            for index, words in enumerate(pieces):
                if step < len(words):
                    yield Delta(index, words[step])
            await anyio.lowlevel.checkpoint()
        yield self._completion(request, texts)

    @staticmethod
    def _completion(request: ChatRequest, texts: list[str]) -> Completion:
        samples = tuple(Sample(i, t, "stop", _count_tokens(t)) for i, t in enumerate(texts))
        prompt_tokens = sum(_count_tokens(m.content) for m in request.messages)
        return Completion(samples, Usage(prompt_tokens, sum(s.completion_tokens for s in samples), 0, 1))

    async def _text(self, request: ChatRequest, index: int) -> str:
        if self.handler is None:
            digest = hashlib.sha256(repr(request).encode()).hexdigest()[:8]
            return f"{self.name} answer {digest} sample {index}"
        try:
            text = self.handler(request, index)
            if inspect.isawaitable(text):
                text = await text
        except AftError:
            raise
        except Exception as exc:
            raise EngineError(f"engine {self.name!r} failed: {exc!r}") from exc
        if not isinstance(text, str):
            raise TypeError(f"FakeEngine handler returned {type(text).__name__}, expected str")
        return text
