"""A loopback OpenAI-compatible server that fails at random, for testing clients against faults."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, get_args

from attrs import define, field

from .._errors import ConfigError
from ..engines._fake import draw

__all__ = ("ChaosFault", "ChaosScript", "ChaosServer", "chaos_server")

ChaosFault = Literal["rate_limit", "server_error", "drop", "drop_mid_stream"]
"""How :func:`chaos_server` fails a chat-completion request.

``"rate_limit"`` answers HTTP 429 with a ``retry-after`` header; ``"server_error"`` answers HTTP 500;
``"drop"`` closes the connection before sending anything; ``"drop_mid_stream"`` sends the headers and
about half of the answer (with text), then closes the connection.
"""

ChaosScript = Callable[[int, Mapping[str, Any]], "ChaosFault | None"]
"""``script(number, body)`` returns the fault for chat-completion request ``number`` (with JSON ``body``)."""

_KINDS: tuple[ChaosFault, ...] = get_args(ChaosFault)
_FILLER = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")


@define(eq=False)
class ChaosServer:
    """A running :func:`chaos_server`: where it listens and what it has served so far.

    The counters are read under a lock and may be read while the server runs.

    Attributes:
        base_url: The OpenAI base URL, ``http://127.0.0.1:PORT/v1``.
        model: The one model the server serves.
    """

    base_url: str
    model: str
    _lock: threading.Lock = field(factory=threading.Lock, repr=False)
    _requests: int = field(default=0, repr=False)
    _completed: int = field(default=0, repr=False)
    _model_lists: int = field(default=0, repr=False)
    _faults: Counter[str] = field(factory=Counter, repr=False)

    @property
    def requests(self) -> int:
        """Chat-completion requests received, faulty ones included."""
        with self._lock:
            return self._requests

    @property
    def completed(self) -> int:
        """Chat-completion requests answered in full."""
        with self._lock:
            return self._completed

    @property
    def model_lists(self) -> int:
        """``GET /v1/models`` requests answered (never faulty)."""
        with self._lock:
            return self._model_lists

    @property
    def faults(self) -> Counter[str]:
        """The faults served so far, by :data:`ChaosFault` kind (a copy)."""
        with self._lock:
            return Counter(self._faults)

    @staticmethod
    def text(content: str, index: int) -> str:
        """Sample ``index`` of the answer to a chat ending in ``content`` (before ``max_tokens`` cuts it)."""
        return f"sample {index} for {content}: " + " ".join(_FILLER)

    def _arrive(self) -> int:
        with self._lock:
            number = self._requests
            self._requests += 1
            return number

    def _count(self, what: str) -> None:
        with self._lock:
            if what == "completed":
                self._completed += 1
            elif what == "models":
                self._model_lists += 1
            else:
                self._faults[what] += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, state: ChaosServer, pick: Callable[[int, Mapping[str, Any]], ChaosFault | None]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self.pick = pick
        self.retry_after = "1"
        self.api_key: str | None = None
        self.open: set[socket.socket] = set()
        self.open_lock = threading.Lock()

    def drop_connections(self) -> None:
        """Shut every open connection so that its handler thread ends."""
        with self.open_lock:
            sockets = list(self.open)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.open_lock:
            self.server.open.add(self.connection)

    def finish(self) -> None:
        with self.server.open_lock:
            self.server.open.discard(self.connection)
        with suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a test server should not write to stderr."""

    def _json(self, status: int, payload: object, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str, headers: Mapping[str, str] | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _refused(self) -> bool:
        key = self.server.api_key
        if key is None or self.headers.get("authorization") == f"Bearer {key}":
            return False
        self._error(401, "invalid API key (chaos)", "AuthenticationError")
        return True

    def do_GET(self) -> None:
        if self._refused():
            return
        if self.path.rstrip("/") != "/v1/models":
            self._error(404, f"no route {self.path}", "NotFoundError")
            return
        model = {"id": self.server.state.model, "object": "model", "created": 0, "owned_by": "chaos"}
        self._json(200, {"object": "list", "data": [model]})
        self.server.state._count("models")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self._refused():
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}", "NotFoundError")
            return
        try:
            body = json.loads(raw)
            messages = body["messages"]
            n = int(body.get("n") or 1)
            max_tokens = body.get("max_tokens")
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"malformed request: {exc}", "BadRequestError")
            return
        state = self.server.state
        if body.get("model") != state.model:
            self._error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
            return
        fault = self.server.pick(state._arrive(), body)
        if fault is not None and fault not in _KINDS:
            self._error(500, f"the chaos script returned {fault!r}, not one of {_KINDS}", "ScriptError")
            return
        if fault == "rate_limit":
            headers = {"retry-after": self.server.retry_after}
            self._error(429, "rate limited (chaos)", "RateLimitError", headers)
        elif fault == "server_error":
            self._error(500, "internal server error (chaos)", "InternalServerError")
        elif fault == "drop":
            self.close_connection = True
        if fault is not None:
            state._count(fault)
            if fault != "drop_mid_stream":
                return
        texts = [state.text(str(messages[-1].get("content", "")), i) for i in range(n)]
        reasons = ["stop"] * n
        if isinstance(max_tokens, int):
            for i, text in enumerate(texts):
                words = text.split(" ")
                if len(words) > max_tokens:
                    texts[i], reasons[i] = " ".join(words[:max_tokens]), "length"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": sum(len(t.split()) for t in texts),
            "total_tokens": prompt_tokens + sum(len(t.split()) for t in texts),
        }
        try:
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                self._stream(texts, reasons, usage if include_usage else None, cut=fault is not None)
            else:
                self._whole(texts, reasons, usage, cut=fault is not None)
        except OSError:  # the client went away
            self.close_connection = True
            return
        if fault is None:
            state._count("completed")

    def _whole(self, texts: list[str], reasons: list[str], usage: dict[str, int], *, cut: bool) -> None:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            }
            for i, (text, reason) in enumerate(zip(texts, reasons, strict=True))
        ]
        payload = {
            "id": "chatcmpl-chaos",
            "object": "chat.completion",
            "created": 0,
            "model": self.server.state.model,
            "choices": choices,
            "usage": usage,
        }
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if cut:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        else:
            self.wfile.write(body)

    def _stream(
        self, texts: list[str], reasons: list[str], usage: dict[str, int] | None, *, cut: bool
    ) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        model = self.server.state.model

        def event(choices: list[dict[str, Any]], extra: Mapping[str, Any] | None = None) -> None:
            chunk = {
                "id": "chatcmpl-chaos",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": choices,
                **(extra or {}),
            }
            self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())

        def delta(index: int, content: str | None, reason: str | None = None, role: bool = False) -> None:
            message: dict[str, Any] = {"content": content}
            if role:
                message["role"] = "assistant"
            event([{"index": index, "delta": message, "finish_reason": reason, "logprobs": None}])

        pieces = [_pieces(text) for text in texts]
        for i in range(len(texts)):
            delta(i, "", role=True)
        cut_after = max(1, sum(len(p) for p in pieces) // 2) if cut else None
        sent = 0
        for step in range(max(len(p) for p in pieces)):
            for i, words in enumerate(pieces):
                if step < len(words):
                    delta(i, words[step])
                    sent += 1
                    if sent == cut_after:
                        self.close_connection = True
                        return
        for i, reason in enumerate(reasons):
            delta(i, None, reason)
        if usage is not None:
            event([], {"usage": usage})
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def _pieces(text: str) -> list[str]:
    """Word-sized pieces (a word and the space before it) that join back to ``text``."""
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])] if text else []


@contextmanager
def chaos_server(
    rate: float = 0.0,
    *,
    kinds: Iterable[ChaosFault] = _KINDS,
    seed: int = 0,
    script: ChaosScript | None = None,
    model: str = "chaos",
    retry_after: float = 1.0,
    api_key: str | None = None,
) -> Iterator[ChaosServer]:
    """Serve a small OpenAI-compatible chat API on 127.0.0.1 that fails a seeded share of requests.

    The server runs in threads of this process on a free port. It answers ``GET /v1/models`` (never
    faulty) and ``POST /v1/chat/completions`` with and without ``"stream": true``, with ``n`` samples,
    ``max_tokens`` (one token per word; longer answers stop with ``"length"``) and ``usage`` (in streams
    when ``stream_options.include_usage`` is set). Sample ``i`` of a chat whose last message is ``c``
    answers :meth:`ChaosServer.text` ``(c, i)``; streams send it word by word, as SSE over a chunked
    body. Chat-completion request number ``k`` (in arrival order, from 0) fails with probability
    ``rate``, with a kind drawn from ``kinds``, as a pure function of ``seed`` and ``k``; concurrent
    clients may arrive in any order, so which request gets number ``k`` is not fixed.

    Args:
        rate: The share of chat-completion requests that fail, from 0 to 1.
        kinds: The :data:`ChaosFault` kinds to choose from.
        seed: Seeds which requests fail and how.
        script: ``script(number, body) -> fault or None`` decides each request's fault instead of
            ``rate``, ``kinds`` and ``seed``.
        model: The model name the server serves; other names get HTTP 404.
        retry_after: The ``retry-after`` header of a 429 answer, in seconds.
        api_key: The key clients must send (``Authorization: Bearer KEY``; others get HTTP 401), or None
            to accept any.

    Yields:
        The running server: its ``base_url`` and counters of requests, completions and faults by kind.

    Example:
        >>> with chaos_server(0.3, seed=1) as server:  # doctest: +SKIP
        ...     engine = RetryingEngine(OpenAIEngine(server.model, server.base_url), backoff=0.01)
    """
    kinds = tuple(kinds)
    if not 0 <= rate <= 1:
        raise ConfigError(f"rate must be between 0 and 1, got {rate}", path="rate")
    if not kinds or any(kind not in _KINDS for kind in kinds):
        raise ConfigError(f"kinds must be some of {', '.join(_KINDS)}, got {kinds!r}", path="kinds")

    def planned(number: int, body: Mapping[str, Any]) -> ChaosFault | None:
        choice = draw(seed, number, rate, len(kinds))
        return None if choice is None else kinds[choice]

    state = ChaosServer("", model)
    server = _Server(state, planned if script is None else script)
    server.retry_after = f"{retry_after:g}"
    server.api_key = api_key
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="chaos-server", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.drop_connections()
        server.server_close()
        thread.join()
