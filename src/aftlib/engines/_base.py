"""The engine base class."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType

import anyio.abc
from attrs import define, field

from .._errors import ConfigError
from .._streams import iterate
from .._types import ChatRequest, Completion, Delta, Message

__all__ = ("Engine", "EngineStream", "StreamItem", "collect")

StreamItem = Delta | Completion
"""What an engine stream gives: text deltas, then exactly one :class:`Completion`."""

EngineStream = AbstractAsyncContextManager[AsyncIterator[StreamItem]]
"""What :meth:`Engine.stream` returns: ``async with engine.stream(request) as items``."""


@define(eq=False)
class Engine(anyio.abc.AsyncResource):
    """Something that answers :class:`~aftlib.ChatRequest` objects.

    Subclasses implement :meth:`generate`; streaming engines also override :meth:`stream`, which
    otherwise falls back to ``generate`` and gives each sample's whole text as one delta. Engines that
    know their context window and tokenizer (:attr:`context_window`, :meth:`count_tokens`,
    :meth:`text_tokens`, :meth:`detokenize`) get their aggregation prompts fitted to it. Engines are
    async context managers: ``async with engine:`` starts it and closes it. Entering is counted, so
    many topologies can share one engine and the last one out closes it.

    Attributes:
        name: A label for logs and results.
    """

    name: str = field(default="engine", kw_only=True)
    _entered: int = field(default=0, init=False, repr=False)
    _entry: anyio.Lock | None = field(default=None, init=False, repr=False)

    @abc.abstractmethod
    async def generate(self, request: ChatRequest) -> Completion:
        """Generate ``request.sampling.n`` samples for ``request``."""

    def stream(self, request: ChatRequest) -> EngineStream:
        """Generate ``request``, giving text deltas as they come, then the :class:`Completion`.

        Use it as ``async with engine.stream(request) as items: async for item in items: ...``. Deltas of
        the ``n`` samples may interleave; each carries its sample index. Leaving the block early (or
        cancelling it) aborts the request.
        """
        return iterate(self._whole(request))

    async def _whole(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        completion = await self.generate(request)
        for sample in completion.samples:
            yield Delta(sample.index, sample.text, sample.logprobs or ())
        yield completion

    @property
    def model(self) -> str | None:
        """The model this engine serves (a path or a served name), or None when it serves none.

        Wrappers and :class:`~aftlib.engines.Replicas` give the model of the engines they wrap, so
        pricing, cache keys, fingerprints and the GPU split agree on an engine's identity.
        """
        return None

    def leaves(self) -> tuple[Engine, ...]:
        """The engines that do the work: this one, or those under a wrapper or a set of replicas."""
        return (self,)

    @property
    def supports_n(self) -> bool:
        """True when one call to the model can ask for ``n`` samples.

        Agents always send one request of ``n`` samples; an engine whose backend takes one sample per call
        (``OpenAIEngine(supports_n=False)``) sends ``n`` calls itself and merges them.
        """
        return True

    @property
    def supports_logprobs(self) -> bool:
        """True when the engine returns log probabilities for requests that ask for them."""
        return False

    @property
    def capacity(self) -> int | None:
        """The sequences the engine runs in one batch (vLLM's ``max_num_seqs``), or None when unknown.

        The runner keeps about this many sequences in an engine (:attr:`load`) when it chooses how many
        records to have in flight.
        """
        return None

    @property
    def load(self) -> int:
        """The sequences the engine holds now, running or waiting (0 when the engine cannot tell)."""
        return 0

    @property
    def supports_structured_outputs(self) -> bool:
        """True when the engine constrains decoding to a request's ``response_format``.

        Answers are checked against the format after generation either way
        (:class:`~aftlib.ResponseFormat`); an engine that cannot constrain only produces more mismatches.
        """
        return False

    @property
    def supports_priority(self) -> bool:
        """True when the engine runs requests in :attr:`~aftlib.ChatRequest.priority` order.

        An engine that does not ignores the priority (it runs requests first come, first served).
        """
        return False

    def check_logprobs(self, what: str) -> None:
        """Raise :class:`~aftlib.ConfigError` naming this engine unless it gives log probabilities.

        Args:
            what: What needs them, for the message (``"the AlpacaEval judge"``).
        """
        if not self.supports_logprobs:
            raise ConfigError(
                f"{what} needs log probabilities, and engine {self.name!r} ({type(self).__name__}) cannot "
                "give them; use a VLLMEngine, or an OpenAIEngine on a server that returns logprobs"
            )

    @property
    def context_window(self) -> int | None:
        """The model's context in tokens, or None when unknown (then prompts are not budgeted)."""
        return None

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Prompt tokens of ``messages`` as this engine would send them (chat template included)."""
        raise NotImplementedError(f"{type(self).__name__} cannot count tokens")

    def text_tokens(self, text: str) -> list[int]:
        """Token ids of a piece of text, without special tokens."""
        raise NotImplementedError(f"{type(self).__name__} cannot tokenize")

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of token ids (the inverse of :meth:`text_tokens`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot detokenize")

    def check_adapter(self, name: str) -> None:
        """Raise :class:`~aftlib.ConfigError` unless this engine serves the LoRA adapter ``name``."""
        raise ConfigError(f"engine {self.name!r} serves no LoRA adapters; an agent asks for {name!r}")

    async def start(self) -> None:
        """Acquire what the engine needs (load a model, open a connection). Called once."""

    async def aclose(self) -> None:
        """Release everything :meth:`start` acquired."""

    def _entry_lock(self) -> anyio.Lock:
        # made on first entry, in the event loop that uses the engine
        if self._entry is None:
            self._entry = anyio.Lock()
        return self._entry

    async def __aenter__(self) -> Engine:
        # Counted under a lock: a second task entering while the first is still starting waits for
        # that start instead of starting the engine again.
        async with self._entry_lock():
            if self._entered == 0:
                await self.start()
            self._entered += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        # A cancelled run (Ctrl-C, a closed stream) still closes its engines all the way.
        with anyio.CancelScope(shield=True):
            async with self._entry_lock():
                self._entered -= 1
                if self._entered == 0:
                    await self.aclose()


async def collect(stream: EngineStream) -> Completion:
    """Drain an engine stream and return its completion."""
    completion: Completion | None = None
    async with stream as items:
        async for item in items:
            if isinstance(item, Completion):
                completion = item
    if completion is None:
        raise RuntimeError("the engine stream ended without a completion")
    return completion
