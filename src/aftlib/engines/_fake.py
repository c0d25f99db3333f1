"""A scripted engine for tests and dry runs."""

from __future__ import annotations

import hashlib
import inspect
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, get_args

import anyio
import anyio.lowlevel
from attrs import define, field, frozen

from .._errors import AftError, ConfigError, EngineError, RateLimitError, ServerError
from .._streams import iterate
from .._tools import CallReader
from .._types import ChatRequest, Completion, Delta, Message, Sample, TokenLogprob, Usage
from ._base import Engine, EngineStream, StreamItem

__all__ = ("FakeEngine", "Fault", "FaultPlan", "FaultScript", "Handler", "LogprobScript")

Handler = Callable[[ChatRequest, int], "str | Awaitable[str]"]
"""``handler(request, index)`` returns (or awaits) the text of sample ``index`` of ``request``."""

Fault = Literal["raise", "hang", "mid_stream", "rate_limit", "server_error"]
"""A failure :class:`FakeEngine` can inject into a request (see its fault modes)."""

_FAULTS: tuple[Fault, ...] = get_args(Fault)
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """SplitMix64's finalizer: a well-spread 64-bit hash of an integer, cheap and the same everywhere."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def draw(seed: int, number: int, rate: float, choices: int) -> int | None:
    """Whether request ``number`` fails (with probability ``rate``) and, if so, which of ``choices`` kinds.

    A pure function of its arguments: the same seed gives the same draws in any order, from any thread.
    """
    if rate <= 0:
        return None
    h = _mix(_mix(seed & _MASK) ^ (number & _MASK))
    if (h >> 11) * 2.0**-53 >= rate:
        return None
    return _mix(h) % choices


def _check_rate(_: object, attribute: Any, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"rate must be between 0 and 1, got {value}", path="rate")


def _check_kinds(_: object, attribute: Any, value: tuple[str, ...]) -> None:
    if not value:
        raise ConfigError("kinds must name at least one fault", path="kinds")
    for kind in value:
        if kind not in _FAULTS:
            raise ConfigError(f"unknown fault {kind!r}; choose from {', '.join(_FAULTS)}", path="kinds")


def _kinds_tuple(value: Iterable[Fault]) -> tuple[Fault, ...]:
    return (value,) if isinstance(value, str) else tuple(value)  # type: ignore[return-value]


@frozen
class FaultPlan:
    """Inject faults into a random share of requests, reproducibly.

    Whether request number ``k`` (in an engine's arrival order, from 0) fails, and how, depends only on
    ``seed`` and ``k``: the same plan gives the same faults on every run.

    Attributes:
        rate: The share of requests that fail, from 0 to 1.
        kinds: The faults to choose from, uniformly, for a failing request.
        seed: Seeds the choice of requests and faults.

    Example:
        >>> plan = FaultPlan(0.1, kinds=("rate_limit", "server_error"), seed=7)
        >>> plan.pick(19), plan.pick(20)
        ('rate_limit', None)
        >>> sum(plan.pick(k) is not None for k in range(10_000))
        1019
    """

    rate: float = field(converter=float, validator=_check_rate)
    kinds: tuple[Fault, ...] = field(default=_FAULTS, converter=_kinds_tuple, validator=_check_kinds)
    seed: int = 0

    def pick(self, number: int) -> Fault | None:
        """The fault for request ``number`` (0-based arrival order), or None for a normal answer."""
        choice = draw(self.seed, number, self.rate, len(self.kinds))
        return None if choice is None else self.kinds[choice]


FaultScript = Callable[[int, ChatRequest], "Fault | None"]
"""``faults(number, request)`` returns the fault for the engine's request ``number``, or None."""

LogprobScript = Callable[[ChatRequest, int, str], Sequence[TokenLogprob]]
"""``logprobs(request, index, text)`` gives the log probabilities of sample ``index`` (text ``text``).

When the engine streams, each word's delta carries the entry at its position; the last word carries any
entries left over."""


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


def _reader(request: ChatRequest) -> CallReader:
    """Reads a scripted text's tool calls (``<tool_call>{...}</tool_call>``); nothing is constrained."""
    return CallReader(request.tools, request.tool_choice)


def _count_tokens(text: str) -> int:
    return len(text.split())


@define(eq=False)
class FakeEngine(Engine):
    """An engine that answers from a handler instead of a model.

    Without a handler every sample gets a deterministic text that differs per request and per sample.
    Every request received is recorded in :attr:`requests`, in arrival order. Text streams word by word.
    When a request offers tools, a handler calls them as models do, ``<tool_call>{"name": ...,
    "arguments": {...}}</tool_call>`` after any text; the calls come out on the sample
    (:attr:`Sample.tool_calls <aftlib.Sample.tool_calls>`), not in its text. A fake engine cannot
    constrain decoding: what the handler writes is what the sample is.

    Fault modes: with ``faults``, chosen requests fail the way real engines do, to test retries,
    timeouts, cancellation and partial results. Request number ``k`` counts arrivals from 0 (a
    ``generate`` or ``stream`` call; faulty requests are recorded too). The faults:

    - ``"raise"``: an :class:`~aftlib.EngineError` (not transient: retrying wrappers give up at once).
    - ``"rate_limit"``: a :class:`~aftlib.RateLimitError`.
    - ``"server_error"``: a :class:`~aftlib.ServerError`.
    - ``"hang"``: the request never answers; it waits until it is cancelled (a timeout, a deadline, a
      cancelled task group).
    - ``"mid_stream"``: :meth:`stream` gives about half of the first sample's words, then raises
      :class:`~aftlib.ServerError` ("connection dropped mid-stream"); :meth:`generate` raises the
      ``ServerError`` without text.

    Errors come after the engine's ``latency``. :attr:`injected` counts the faults by kind;
    :attr:`in_flight` and :attr:`peak_in_flight` count requests under way (generations and open
    streams), so a test can check that nothing is left running after a cancellation.

    Args:
        handler: ``handler(request, index) -> str`` (sync or async) giving the text of each sample. An
            exception it raises reaches the caller as an :class:`~aftlib.EngineError` (an ``AftError`` it
            raises passes unchanged), as an engine failure would.
        latency: Seconds to wait before answering each request.
        context_window: A context size in tokens (one token per word) for prompt budgeting, or None.
        faults: A :class:`FaultPlan` (a seeded share of requests fail), or ``faults(number, request)``
            returning the :data:`Fault` for each request or None, or None for no faults.
        logprobs: ``logprobs(request, index, text)`` giving the :class:`~aftlib.TokenLogprob` entries of
            sample ``index`` when a request asks for log probabilities; by default each word is a token
            with log probability 0 and itself as the only alternative.
        name: A label for logs and results.

    Example:
        >>> engine = FakeEngine(handler=lambda request, index: f"draft {index}")
        >>> flaky = FakeEngine(faults=FaultPlan(0.2, kinds=("rate_limit", "server_error"), seed=1))
        >>> scripted = FakeEngine(faults=lambda number, request: "hang" if request.lora == "slow" else None)
    """

    handler: Handler | None = None
    latency: float = 0.0
    context_window: int | None = None
    faults: FaultPlan | FaultScript | None = None
    logprobs: LogprobScript | None = None
    requests: list[ChatRequest] = field(factory=list, init=False)
    injected: Counter[str] = field(factory=Counter, init=False)
    """The faults injected so far, by kind."""
    arrivals: int = field(default=0, init=False)
    """Requests received so far (the next request's number); unlike :attr:`requests`, never cleared."""
    in_flight: int = field(default=0, init=False)
    """Requests started and not yet finished, failed or cancelled (generations and open streams)."""
    peak_in_flight: int = field(default=0, init=False)
    """The most requests in flight at once so far."""
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
        fault = self._arrive(request)
        try:
            await self._wait(fault)
            if fault is not None:
                raise self._error(fault)
            return self._completion(
                request, [await self._text(request, i) for i in range(request.sampling.n)]
            )
        finally:
            self.in_flight -= 1

    def stream(self, request: ChatRequest) -> EngineStream:
        """Answer ``request``, giving its samples' words in turn, then the completion."""
        return iterate(self._stream(request))

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        fault = self._arrive(request)
        try:
            await self._wait(fault)
            if fault is not None and fault != "mid_stream":
                raise self._error(fault)
            texts = [await self._text(request, i) for i in range(request.sampling.n)]
            pieces = [_words(t) for t in texts]
            if fault == "mid_stream":
                first = pieces[0] if pieces else []
                for word in first[: max(1, len(first) // 2)]:
                    yield Delta(0, word)
                    await anyio.lowlevel.checkpoint()
                raise self._error(fault)
            entries = [self._logprobs(request, i, t) or () for i, t in enumerate(texts)]
            readers = [_reader(request) for _ in texts]  # tool calls are held back from the text
            for step in range(max((len(p) for p in pieces), default=0)):
                for index, words in enumerate(pieces):
                    if step < len(words):  # the last word carries any entries left over
                        last = step == len(words) - 1
                        got = entries[index][step:] if last else entries[index][step : step + 1]
                        yield Delta(index, readers[index].feed(words[step]), got)
                await anyio.lowlevel.checkpoint()
            yield self._completion(request, texts)
        finally:
            self.in_flight -= 1

    def _arrive(self, request: ChatRequest) -> Fault | None:
        """Record ``request``, count it in flight, and pick its fault."""
        number, self.arrivals = self.arrivals, self.arrivals + 1
        self.requests.append(request)
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        if self.faults is None:
            return None
        try:
            if isinstance(self.faults, FaultPlan):
                fault = self.faults.pick(number)
            else:
                fault = self.faults(number, request)
                if fault is not None and fault not in _FAULTS:
                    raise ConfigError(
                        f"FakeEngine faults returned {fault!r}; expected one of {', '.join(_FAULTS)} or None"
                    )
        except BaseException:
            self.in_flight -= 1
            raise
        if fault is not None:
            self.injected[fault] += 1
        return fault

    async def _wait(self, fault: Fault | None) -> None:
        if fault == "hang":
            await anyio.sleep_forever()
        if self.latency:
            await anyio.sleep(self.latency)
        else:
            await anyio.lowlevel.checkpoint()

    def _error(self, fault: Fault) -> EngineError:
        where = f"engine {self.name!r}"
        if fault == "rate_limit":
            return RateLimitError(f"{where}: rate limited (injected fault)")
        if fault == "server_error":
            return ServerError(f"{where}: HTTP 500 (injected fault)")
        if fault == "mid_stream":
            return ServerError(f"{where}: connection dropped mid-stream (injected fault)")
        return EngineError(f"{where}: failed (injected fault)")

    @property
    def supports_logprobs(self) -> bool:
        """True: scripted, or one entry per word."""
        return True

    def _logprobs(self, request: ChatRequest, index: int, text: str) -> tuple[TokenLogprob, ...] | None:
        k = request.sampling.logprobs
        if k is None:
            return None
        if self.logprobs is not None:
            return tuple(self.logprobs(request, index, text))
        return tuple(TokenLogprob(word, 0.0, [(word, 0.0)][:k]) for word in _words(text))

    def _completion(self, request: ChatRequest, texts: list[str]) -> Completion:
        samples = []
        for i, t in enumerate(texts):
            content, calls, error = _reader(request).read(t)
            samples.append(
                Sample(i, content, "stop", _count_tokens(t), self._logprobs(request, i, t), calls, error)
            )
        prompt_tokens = sum(_count_tokens(m.content) for m in request.messages)
        return Completion(samples, Usage(prompt_tokens, sum(s.completion_tokens for s in samples), 0, 1))

    async def _text(self, request: ChatRequest, index: int) -> str:
        if self.handler is None:
            what = (request.messages, request.sampling, request.lora)  # not the priority: a place in line
            digest = hashlib.sha256(repr(what).encode()).hexdigest()[:8]
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
