"""The Starlette app: topologies served as OpenAI-compatible chat models."""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from attrs import define, evolve, field

from .._agents import ModelAgent
from .._errors import (
    AftError,
    ConfigError,
    ContextLengthError,
    EngineTimeoutError,
    InputError,
    RateLimitError,
    ServerError,
)
from .._logging import get_logger
from .._results import AnswerDone, Result, TokenDelta
from .._topology import Topology
from .._types import Message, as_conversation
from ..engines._pool import EnginePool
from ._protocol import (
    DONE,
    KEEPALIVE,
    ApiError,
    ChatCall,
    Chunks,
    call_deltas,
    completion_body,
    extension_event,
    models_body,
    new_id,
    parse_chat,
    sse,
    topology_event,
    usage_body,
)

__all__ = ("DEFAULT_MAX_BODY", "create_app")

DEFAULT_MAX_BODY = 1 << 20
"""The largest request body accepted, in bytes (1 MiB)."""

PLAYGROUND = Path(__file__).parent / "_playground"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def with_sampling(topology: Topology, overrides: Mapping[str, Any]) -> Topology:
    """A copy of ``topology`` whose final agent samples with ``overrides`` (the shared one is untouched).

    A final agent that asks no engine (a vote) has no sampling to change; it is left as it is, unless a
    ``response_format`` is asked for, which it could not honour.

    Raises:
        ConfigError: An override is out of range (names the field as ``path``), or a response format is
            asked of a final agent that no model writes.
    """
    final = topology.final
    if overrides.get("response_format") is not None and not isinstance(final, ModelAgent):
        raise ConfigError(
            f"the topology's final agent {final.name!r} is a {type(final).__name__}, which picks an answer "
            "and writes none: it cannot honour response_format",
            path="response_format",
        )
    if not overrides or not isinstance(final, ModelAgent):
        return topology
    return evolve(topology, final=evolve(final, sampling=evolve(final.sampling, **overrides)))


def _engine_error(exc: BaseException) -> ApiError:
    """The HTTP error of a run that failed before its answer began."""
    no_retry = {"x-should-retry": "false"}
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InputError):
        return ApiError(400, str(exc), param="messages")
    if isinstance(exc, ContextLengthError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, (ServerError, RateLimitError, EngineTimeoutError)):
        return ApiError(503, f"an engine is unavailable: {exc}", type="server_error", headers=no_retry)
    if isinstance(exc, AftError):
        return ApiError(500, f"the topology failed: {exc}", type="server_error", headers=no_retry)
    return ApiError(500, "internal server error", type="server_error", headers=no_retry)


def _log_failure(log: Any, event: str, exc: BaseException, error: ApiError) -> None:
    """A runtime failure is a warning; anything else is a bug, logged with its traceback."""
    if not isinstance(exc, AftError | ApiError):
        log.error(event, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
    elif error.status >= 500:
        log.warning(event, error=f"{type(exc).__name__}: {exc}")


@define(eq=False)
class _Gate:
    """Topology runs in flight, at most ``limit``, with at most ``queue`` waiting for a slot.

    ``peak`` is the most runs ever in flight at once.
    """

    limit: int
    queue: int
    in_flight: int = 0
    waiting: int = 0
    peak: int = 0
    _semaphore: anyio.Semaphore | None = field(default=None, init=False)

    def full(self) -> bool:
        """Whether a new request would have neither a slot nor a place in the queue."""
        return self.in_flight + self.waiting >= self.limit + self.queue

    async def acquire(self) -> None:
        """Wait for a slot (the caller checked :meth:`full` first)."""
        if self._semaphore is None:
            self._semaphore = anyio.Semaphore(self.limit)
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def release(self) -> None:
        """Give the slot back."""
        self.in_flight -= 1
        assert self._semaphore is not None
        self._semaphore.release()


async def _send_json(send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _send_error(send: Send, error: ApiError, request_id: str) -> None:
    await _send_json(send, error.status, error.body(), {**error.headers, "x-request-id": request_id})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


@define(eq=False)
class _Server:
    """What every route shares: the models, the keys, the gate and the settings."""

    topologies: dict[str, Topology]
    aliases: dict[str, str]
    api_keys: tuple[bytes, ...] | None
    gate: _Gate
    keepalive: float
    max_body: int
    retry_after: int

    @property
    def names(self) -> list[str]:
        return [*self.topologies, *self.aliases]

    def authorized(self, scope: Scope) -> bool:
        """Whether the request carries one of the keys (always, when the server has none); constant time."""
        if self.api_keys is None:
            return True
        given = _header(scope, b"authorization") or ""
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        ok = False
        for key in self.api_keys:
            ok |= hmac.compare_digest(key, token.encode())
        return ok

    def resolve(self, model: str) -> Topology:
        name = self.aliases.get(model, model)
        topology = self.topologies.get(name)
        if topology is None:
            known = ", ".join(self.names)
            raise ApiError(
                404, f"model {model!r} does not exist; this server serves {known}", param="model",
                code="model_not_found",
            )  # fmt: skip
        return topology


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when the client left; 413 when it is larger than ``limit``."""
    too_big = ApiError(
        413, f"the request body is larger than the limit of {limit} bytes", code="body_too_large"
    )
    length = _header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise too_big
        chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


@define(eq=False)
class _Watch:
    """Whether the client left before its answer was complete."""

    left: bool = False
    done: bool = False


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope, watch: _Watch) -> None:
    """Cancel ``scope`` when the client disconnects (the ASGI ``http.disconnect`` message).

    The server also says ``http.disconnect`` once the response is complete; that is not a client leaving.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not watch.done:
                watch.left = True
                scope.cancel()
            return


@define(eq=False)
class _Chat:
    """``POST /v1/chat/completions`` as a raw ASGI app (so a stream is written without a generator)."""

    server: _Server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.setdefault("state", {})
        request_id = state.get("request_id") or _header(scope, b"x-request-id") or uuid.uuid4().hex
        state["request_id"] = request_id
        try:
            prepared = await self._prepare(scope, receive)
        except ApiError as refused:
            get_logger(__name__, request_id=request_id).info(
                "request refused", status=refused.status, error=refused.message
            )
            await _send_error(send, refused, request_id)
            return
        except Exception:  # the HTTP boundary: a bug is logged with its traceback, the client gets JSON
            get_logger(__name__, request_id=request_id).exception("request failed before its run")
            failed = ApiError(500, "the server failed to read the request", type="server_error")
            await _send_error(send, failed, request_id)
            return
        if prepared is None:
            return  # the client left while sending the body
        call, topology, conversation = prepared
        gate = self.server.gate
        if gate.full():
            retry = str(self.server.retry_after)
            busy = ApiError(
                429,
                f"the server is busy: {gate.in_flight} runs in flight, {gate.waiting} waiting; retry later",
                type="rate_limit_error", code="server_busy", headers={"retry-after": retry},
            )  # fmt: skip
            get_logger(__name__, request_id=request_id).info("request refused", status=429, error="busy")
            await _send_error(send, busy, request_id)
            return
        left = _Watch()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_disconnect, receive, tg.cancel_scope, left)
            try:
                await gate.acquire()
                try:
                    await self._run(call, topology, conversation, send, request_id, left)
                finally:
                    gate.release()
            finally:
                tg.cancel_scope.cancel()

    async def _prepare(
        self, scope: Scope, receive: Receive
    ) -> tuple[ChatCall, Topology, tuple[Message, ...]] | None:
        server = self.server
        if not server.authorized(scope):
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                type="authentication_error", code="invalid_api_key",
            )  # fmt: skip
        raw = await _read_body(scope, receive, server.max_body)
        if raw is None:
            return None
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        except RecursionError:
            raise ApiError(
                400, "the request body is nested too deeply to read", code="invalid_json"
            ) from None
        call = parse_chat(body)
        topology = server.resolve(call.model)
        try:
            topology = with_sampling(topology, call.sampling)
            conversation = as_conversation(
                call.messages, tools=call.tools, tool_choice=call.tool_choice, path="messages"
            )
        except ConfigError as exc:
            raise ApiError(400, exc.message, param=exc.path) from None
        except InputError as exc:
            raise ApiError(400, str(exc), param=exc.where or "messages") from None
        return call, topology, conversation

    async def _run(
        self,
        call: ChatCall,
        topology: Topology,
        conversation: tuple[Message, ...],
        send: Send,
        request_id: str,
        left: _Watch,
    ) -> None:
        run_id = uuid.uuid4().hex[:12]
        log = get_logger(__name__, request_id=request_id, run_id=run_id, model=call.model)
        start = time.perf_counter()
        timing: dict[str, float] = {}
        status = 200
        result: Result | None = None
        try:
            if call.stream:
                result = await self._stream(call, topology, conversation, send, request_id, timing, left)
            else:
                try:
                    result = await topology.run(conversation)
                except Exception as exc:  # the HTTP boundary: the client gets the OpenAI error shape
                    left.done = True
                    error = _engine_error(exc)
                    status = error.status
                    _log_failure(log, "run failed", exc, error)
                    await _send_error(send, error, request_id)
                else:
                    left.done = True
                    timing["first_token"] = time.perf_counter()
                    body = completion_body(result, call.model, new_id())
                    await _send_json(send, 200, body, {"x-request-id": request_id})
        finally:
            elapsed = time.perf_counter() - start
            first = timing.get("first_token")
            log.info(
                "completion",
                status=499 if left.left else status,
                stream=call.stream,
                disconnected=left.left,
                time_to_first_token_s=None if first is None else round(first - start, 4),
                time_to_answer_s=round(elapsed, 4),
                prompt_tokens=None if result is None else result.usage.prompt_tokens,
                completion_tokens=None if result is None else result.usage.completion_tokens,
            )

    async def _stream(
        self,
        call: ChatCall,
        topology: Topology,
        conversation: tuple[Message, ...],
        send: Send,
        request_id: str,
        timing: dict[str, float],
        left: _Watch,
    ) -> Result | None:
        chunks = Chunks(new_id(), call.model, int(time.time()))
        lock = anyio.Lock()
        last = [time.monotonic()]

        async def write(data: bytes) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                last[0] = time.monotonic()

        async def keepalive() -> None:
            while True:
                await anyio.sleep(max(self.server.keepalive - (time.monotonic() - last[0]), 0.01))
                if time.monotonic() - last[0] >= self.server.keepalive:
                    await write(KEEPALIVE)

        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-request-id", request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        result: Result | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(keepalive)
            try:
                await write(sse(chunks.delta({"role": "assistant", "content": ""})))
                if call.events:
                    await write(sse(chunks.event(topology_event(topology))))
                async with topology.stream(conversation) as events:
                    async for event in events:
                        if call.events:
                            extension = extension_event(event)
                            if extension is not None:
                                await write(sse(chunks.event(extension)))
                        if isinstance(event, TokenDelta) and event.is_answer:
                            timing.setdefault("first_token", time.perf_counter())
                            await write(sse(chunks.delta({"content": event.text})))
                        elif isinstance(event, AnswerDone):
                            result = event.result
                if result is None:
                    raise RuntimeError("the run ended without an answer")
                left.done = True
                for delta in call_deltas(result):
                    await write(sse(chunks.delta(delta)))
                await write(sse(chunks.delta({}, result.finish_reason or "stop")))
                if call.include_usage:
                    await write(sse(chunks.chunk([], usage=usage_body(result))))
                await write(DONE)
            except Exception as exc:  # after the stream began: an error event, then the stream closes
                left.done = True
                error = _engine_error(exc)
                _log_failure(get_logger(__name__, request_id=request_id), "run failed mid-stream", exc, error)
                body = error.body()
                body["error"]["status"] = error.status
                await write(sse(body))
                result = None
            finally:
                tg.cancel_scope.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return result


def _access_log(app: Any) -> Any:
    """Wrap ``app`` so every HTTP request gets one structured access line (method, path, status, time)."""

    async def logged(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status: list[int] = []
        state = scope.setdefault("state", {})
        state["request_id"] = _header(scope, b"x-request-id") or uuid.uuid4().hex

        async def watched(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await app(scope, receive, watched)
        finally:
            get_logger("aftlib.serve.access").info(
                "access",
                request_id=state.get("request_id"),
                method=scope.get("method"),
                path=scope.get("path"),
                status=status[0] if status else None,
                elapsed_s=round(time.perf_counter() - start, 4),
            )

    return logged


def create_app(
    topologies: Mapping[str, Topology],
    *,
    aliases: Mapping[str, str] | None = None,
    api_keys: Collection[str] | None = None,
    max_in_flight: int = 8,
    max_queue: int = 32,
    keepalive: float = 5.0,
    max_body: int = DEFAULT_MAX_BODY,
    retry_after: int = 1,
) -> Any:
    """The ASGI app serving ``topologies`` as OpenAI-compatible chat models.

    Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``, ``GET /`` (the
    playground) and ``/static/...`` (its files). The engines of every topology start once when the app
    starts (its lifespan) and close when it stops; engines already started by the caller stay started.

    Args:
        topologies: The models, by name.
        aliases: Other names for them: ``{alias: name}``.
        api_keys: Keys a request must send as ``Authorization: Bearer <key>`` to ``/v1/...``; None (or
            empty) serves everyone.
        max_in_flight: Topology runs at once.
        max_queue: Requests that may wait for a run slot; beyond that the server answers 429.
        keepalive: Seconds of silence on a stream before a ``: keep-alive`` comment is sent.
        max_body: The largest request body, in bytes (larger: 413).
        retry_after: The ``retry-after`` seconds of a 429.

    Returns:
        The ASGI app: a Starlette app inside a structured access log (serve it with uvicorn, or
        :func:`aftlib.serve.serve`).

    Raises:
        ConfigError: No topologies, an alias naming no topology, or a limit out of range.
    """
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import FileResponse, JSONResponse, Response
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles
    except ImportError as exc:
        from .._errors import MissingExtraError

        raise MissingExtraError("aftlib serve", "serve", exc.name) from exc

    if not topologies:
        raise ConfigError("the server needs at least one topology to serve")
    aliases = dict(aliases or {})
    for alias, name in aliases.items():
        if name not in topologies:
            raise ConfigError(
                f"alias {alias!r} names {name!r}, which is not a model", path=f"aliases.{alias}"
            )
    if max_in_flight < 1 or max_queue < 0:
        raise ConfigError(f"max_in_flight must be >= 1 and max_queue >= 0, got {max_in_flight}, {max_queue}")
    if not keepalive > 0:
        raise ConfigError(f"keepalive must be a positive number of seconds, got {keepalive}")
    keys = tuple(k.encode() for k in api_keys) if api_keys else None
    server = _Server(
        dict(topologies), aliases, keys, _Gate(max_in_flight, max_queue), keepalive, max_body, retry_after
    )
    created = int(time.time())

    def refuse(error: ApiError) -> Response:
        return JSONResponse(error.body(), error.status, headers=error.headers)

    async def models(request: Request) -> Response:
        if not server.authorized(request.scope):
            return refuse(ApiError(401, "missing or wrong API key", type="authentication_error",
                                   code="invalid_api_key"))  # fmt: skip
        return JSONResponse(models_body(server.names, created))

    async def health(request: Request) -> Response:
        gate = server.gate
        return JSONResponse(
            {
                "status": "ok",
                "models": server.names,
                "in_flight": gate.in_flight,
                "queued": gate.waiting,
                "peak_in_flight": gate.peak,
            }
        )

    async def playground(request: Request) -> Response:
        page = PLAYGROUND / "index.html"
        if not page.is_file():
            return refuse(ApiError(404, "the playground page is not installed", code="not_found"))
        return FileResponse(page, media_type="text/html")

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        engines = [engine for topology in server.topologies.values() for engine in topology.engines]
        async with EnginePool(engines):
            yield

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _Chat(server), methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/", playground, methods=["GET"]),
            Mount("/static", StaticFiles(directory=PLAYGROUND, check_dir=False), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.server = server
    return _access_log(app)
