"""``aftlib serve`` over HTTP on FakeEngine topologies: routes, streaming, usage, limits, keys, bad input.

Each app is served by uvicorn on a free loopback port, in a thread with its own event loop, and is
talked to with httpx as a client would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from aftlib import Aggregator, Proposer, SamplingParams, Topology
from aftlib.cli import main
from aftlib.serve import create_app
from aftlib.testing import FakeEngine

from .conftest import run_fresh

QUESTION = [{"role": "user", "content": "Name a prime number."}]


def fake_topology(latency: float = 0.0, final_faults: Any = None) -> Topology:
    """Two proposers (one with two samples) and an aggregator, on FakeEngines: deterministic texts."""
    engine = FakeEngine(name="fake", latency=latency)
    final = engine if final_faults is None else FakeEngine(name="judge", faults=final_faults)
    return Topology(
        [[Proposer(engine, name="a", sampling=SamplingParams(n=2)), Proposer(engine, name="b")]],
        Aggregator(final, name="final"),
    )


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL (``.../v1``)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def events(response: httpx.Response) -> list[Any]:
    """The data payloads of a server-sent event stream, decoded (``[DONE]`` kept as the string)."""
    out: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One server for the module over the fake topology, as model 'fake-moa' (alias 'moa')."""
    with served(create_app({"fake-moa": fake_topology()}, aliases={"moa": "fake-moa"})) as base:
        yield base


def post(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", json=body, timeout=30, **kwargs)


def in_process(topology: Topology | None = None) -> Any:
    """The same question through the same topology, in this process."""
    return run_fresh((topology or fake_topology()).run, QUESTION)


def test_models_lists_topologies_and_aliases(url: str) -> None:
    """GET /v1/models lists each topology by name, then the aliases, in the OpenAI shape."""
    body = httpx.get(f"{url}/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["fake-moa", "moa"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])


def test_health_and_playground_routes(url: str) -> None:
    """GET /health says ok with the models; GET / is routed (the page, or a 404 in the OpenAI shape)."""
    root = url.removesuffix("/v1")
    health = httpx.get(f"{root}/health").json()
    assert health["status"] == "ok"
    assert health["models"] == ["fake-moa", "moa"]
    page = httpx.get(f"{root}/")
    assert page.status_code in (200, 404)
    if page.status_code == 200:
        assert "html" in page.headers["content-type"]
        for name in ("app.css", "app.js"):
            if f"static/{name}" in page.text:
                assert httpx.get(f"{root}/static/{name}").status_code == 200
    else:
        assert "playground" in page.json()["error"]["message"]


def test_non_streamed_answer_and_usage_equal_the_topology_run(url: str) -> None:
    """A plain request answers the topology's answer with its usage, and a per-layer breakdown."""
    expected = in_process()
    response = post(url, {"model": "fake-moa", "messages": QUESTION})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == expected.usage.prompt_tokens
    assert usage["completion_tokens"] == expected.usage.completion_tokens
    assert usage["total_tokens"] == expected.usage.total_tokens
    assert [layer["layer"] for layer in usage["aftlib_layers"]] == [0, 1]
    assert sum(layer["completion_tokens"] for layer in usage["aftlib_layers"]) == usage["completion_tokens"]


def test_an_alias_and_text_parts_and_developer_role_are_accepted(url: str) -> None:
    """An alias serves its topology; text-part content and a developer (system) turn are read as text."""
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "prime."}],
        },
    ]
    body = post(url, {"model": "moa", "messages": messages, "user": "x", "some_extra": 1}).json()
    expected = run_fresh(
        fake_topology().run,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}],
    )
    assert body["choices"][0]["message"]["content"] == expected.text
    assert body["model"] == "moa"


def test_stream_follows_the_spec_and_concatenates_to_the_answer(url: str) -> None:
    """A stream: role chunk, content deltas, finish chunk, usage chunk when asked, then [DONE]."""
    expected = in_process()
    body = {
        "model": "fake-moa",
        "messages": QUESTION,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = events(response)
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert len({c["created"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("aftlib" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-2])
    assert text == expected.text
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-2]["usage"] is None
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == expected.usage.completion_tokens
    assert chunks[-1]["usage"]["prompt_tokens"] == expected.usage.prompt_tokens


def test_without_include_usage_no_usage_chunk(url: str) -> None:
    """Without stream_options.include_usage, no chunk has choices [] and every usage is null."""
    body = {"model": "fake-moa", "messages": QUESTION, "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=30) as response:
        chunks = events(response)[:-1]
    assert all(c["choices"] and c["usage"] is None for c in chunks)


def test_draft_events_come_only_when_asked(url: str) -> None:
    """stream_options.aftlib_events adds tagged extension chunks (topology first); the answer streams too."""
    expected = in_process()
    options = {"include_usage": True, "aftlib_events": True}
    body = {"model": "fake-moa", "messages": QUESTION, "stream": True, "stream_options": options}
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=30) as response:
        chunks = events(response)[:-1]
    extension = [c["aftlib"] for c in chunks if "aftlib" in c]
    assert all(c["choices"] == [] for c in chunks if "aftlib" in c)
    assert extension[0] == {
        "type": "topology",
        "layers": [{"layer": 0, "agents": [{"name": "a", "samples": 2}, {"name": "b", "samples": 1}]}],
        "final": "final",
    }
    drafts = {(e["agent"], e["index"]): "" for e in extension if e["type"] == "delta" and e["layer"] == 0}
    for e in extension:
        if e["type"] == "delta" and e["layer"] == 0:
            drafts[(e["agent"], e["index"])] += e["text"]
    assert sorted(drafts) == [("a", 0), ("a", 1), ("b", 0)]
    assert sorted(drafts.values()) == sorted(expected.layers[0].texts)
    candidates = [e for e in extension if e["type"] == "candidate"]
    assert len(candidates) == 4  # three drafts and the answer
    layer = next(e for e in extension if e["type"] == "layer")
    assert layer["candidates"] == 3
    assert layer["usage"]["completion_tokens"] == expected.layers[0].usage.completion_tokens
    answer = "".join(e["text"] for e in extension if e["type"] == "delta" and e["is_answer"])
    standard = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert answer == standard == expected.text


def test_keepalive_comments_while_drafts_are_written() -> None:
    """With a short keep-alive interval and slow drafts, ': keep-alive' comments come before the answer."""
    app = create_app({"slow": fake_topology(latency=0.6)}, keepalive=0.1)
    with served(app) as base:
        body = {"model": "slow", "messages": QUESTION, "stream": True}
        with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=30) as response:
            lines = list(response.iter_lines())
    first_content = next(i for i, line in enumerate(lines) if '"content":"' in line and '"role"' not in line)
    assert lines.count(": keep-alive") >= 3
    assert ": keep-alive" in lines[:first_content]
    assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"


def test_a_full_queue_answers_429_with_retry_after_and_the_limit_holds() -> None:
    """With 1 run in flight and no queue, a second request gets 429 with retry-after; the first completes."""
    topology = fake_topology(latency=0.5)
    app = create_app({"slow": topology}, max_in_flight=1, max_queue=0, retry_after=3)
    with served(app) as base:
        body = {"model": "slow", "messages": QUESTION, "stream": True}
        with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=30) as first:
            assert first.status_code == 200
            busy = post(base, {"model": "slow", "messages": QUESTION})
            assert busy.status_code == 429
            assert busy.headers["retry-after"] == "3"
            assert busy.json()["error"]["type"] == "rate_limit_error"
            assert events(first)[-1] == "[DONE]"
        assert post(base, {"model": "slow", "messages": QUESTION}).status_code == 200


def wait_for_health(base: str, **wanted: int) -> None:
    """Poll ``/health`` until its counts are ``wanted`` (the server's own word, not a guess of time)."""
    deadline = time.monotonic() + 30
    while True:
        health = httpx.get(f"{base.removesuffix('/v1')}/health").json()
        if all(health[key] == value for key, value in wanted.items()):
            return
        assert time.monotonic() < deadline, f"the server never reached {wanted}: {health}"
        time.sleep(0.01)


def test_a_queued_request_waits_for_a_slot() -> None:
    """With 1 run in flight and a queue of 1, a second request waits and completes; a third gets 429.

    Each request is sent once the server says the one before is in flight (or queued).
    """
    app = create_app({"slow": fake_topology(latency=1.0)}, max_in_flight=1, max_queue=1)
    results: dict[str, int] = {}

    def one(key: str, base: str) -> None:
        results[key] = post(base, {"model": "slow", "messages": QUESTION}).status_code

    with served(app) as base:
        threads = [threading.Thread(target=one, args=(k, base)) for k in ("a", "b")]
        threads[0].start()
        wait_for_health(base, in_flight=1)
        threads[1].start()
        wait_for_health(base, in_flight=1, queued=1)
        one("c", base)
        for t in threads:
            t.join()
    assert sorted(results.values()) == [200, 200, 429]
    assert results["c"] == 429


def test_a_client_that_leaves_mid_stream_cancels_its_run() -> None:
    """Closing a stream after the first draft delta cancels the run: no engine request stays in flight."""
    engine = FakeEngine(name="fake", latency=0.3)
    topology = Topology(
        [[Proposer(engine, name="a"), Proposer(FakeEngine(name="slow", latency=30), name="b")]],
        Aggregator(engine, name="final"),
    )
    with served(create_app({"m": topology})) as base:
        body = {"model": "m", "messages": QUESTION, "stream": True, "stream_options": {"aftlib_events": True}}
        with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if '"type":"delta"' in line:
                    break
        slow = topology.layers[0].agents[1].engine
        deadline = time.monotonic() + 5
        while (engine.in_flight or slow.in_flight) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.in_flight == 0
        assert slow.in_flight == 0
        assert slow.arrivals == 1
        assert httpx.get(f"{base.removesuffix('/v1')}/health").json()["in_flight"] == 0


def test_an_error_after_the_stream_began_is_an_error_event() -> None:
    """The final agent failing mid-answer: its first deltas, then a data: {"error"} event, and no [DONE]."""
    topology = fake_topology(final_faults=lambda number, request: "mid_stream")
    with served(create_app({"m": topology})) as base:
        body = {"model": "m", "messages": QUESTION, "stream": True}
        with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            chunks = events(response)
        assert "[DONE]" not in chunks
        assert chunks[-1]["error"]["type"] == "server_error"
        assert "mid-stream" in chunks[-1]["error"]["message"]
        assert any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in chunks[:-1])
        plain = post(base, {"model": "m", "messages": QUESTION})
        assert plain.status_code == 503
        assert plain.headers["x-should-retry"] == "false"
        assert plain.json()["error"]["type"] == "server_error"


def test_sampling_fields_reach_the_final_agent_only() -> None:
    """temperature, top_p, seed, max_completion_tokens and stop change the final agent's request only."""
    engine = FakeEngine(name="fake")
    judge = FakeEngine(name="judge")
    topology = Topology([[Proposer(engine, name="a")]], Aggregator(judge, name="final"))
    with served(create_app({"m": topology})) as base:
        body = {
            "model": "m", "messages": QUESTION, "temperature": 0.25, "top_p": 0.5, "seed": 7,
            "max_completion_tokens": 33, "max_tokens": 99, "stop": "END",
        }  # fmt: skip
        assert post(base, body).status_code == 200
        bad = post(base, {"model": "m", "messages": QUESTION, "temperature": -1})
    sampling = judge.requests[-1].sampling
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.25, 0.5, 7)
    assert sampling.max_tokens == 33
    assert sampling.stop == ("END",)
    assert engine.requests[-1].sampling == SamplingParams()
    assert topology.final.sampling == SamplingParams()
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "temperature"


# --- API keys ---------------------------------------------------------------------------------------


def test_api_keys_are_required_when_set() -> None:
    """With keys, /v1/... needs one as a bearer token (401 otherwise); /health stays open."""
    app = create_app({"m": fake_topology()}, api_keys=["k1", "k2"])
    with served(app) as base:
        good = {"model": "m", "messages": QUESTION}
        missing = post(base, good)
        wrong = post(base, good, headers={"Authorization": "Bearer nope"})
        for response in (missing, wrong):
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
            assert "API key" in response.json()["error"]["message"]
        assert httpx.get(f"{base}/models").status_code == 401
        assert post(base, good, headers={"Authorization": "Bearer k2"}).status_code == 200
        assert httpx.get(f"{base}/models", headers={"Authorization": "Bearer k1"}).status_code == 200
        assert httpx.get(f"{base.removesuffix('/v1')}/health").status_code == 200


# --- bad input ---------------------------------------------------------------------------------------


BAD_INPUT = [
    ("malformed JSON", b'{"model": "fake-moa", "messages": [', 400, "not valid JSON"),
    ("missing messages", {"model": "fake-moa"}, 400, "'messages' is required"),
    ("empty conversation", {"model": "fake-moa", "messages": []}, 400, "'messages' is empty"),
    (
        "not ending with a user turn",
        {"model": "fake-moa", "messages": [*QUESTION, {"role": "assistant", "content": "7"}]},
        400,
        "must end with a user turn",
    ),
    (
        "unknown model",
        {"model": "gpt-9", "messages": QUESTION},
        404,
        "'gpt-9' does not exist; this server serves fake-moa, moa",
    ),
    (
        "image part",
        {
            "model": "fake-moa",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        },
        400,
        "messages[0].content[0] has type 'image_url'; only text parts",
    ),
    (
        "a tool without its function",
        {"model": "fake-moa", "messages": QUESTION, "tools": [{"type": "function"}]},
        400,
        "tools[0].function: 'function' is an object with 'name' and 'parameters'",
    ),
    (
        "functions (deprecated)",
        {"model": "fake-moa", "messages": QUESTION, "functions": [{"name": "f"}]},
        400,
        "'functions' is not supported",
    ),
    (
        "response_format of an unknown type",
        {"model": "fake-moa", "messages": QUESTION, "response_format": {"type": "xml"}},
        400,
        "response_format.type is 'text', 'json_object' or 'json_schema'",
    ),
    (
        "a json_schema that is not a schema",
        {
            "model": "fake-moa",
            "messages": QUESTION,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nope"}},
            },
        },
        400,
        "not a JSON schema",
    ),
    ("n > 1", {"model": "fake-moa", "messages": QUESTION, "n": 2}, 400, "'n' must be 1"),
    (
        "presence_penalty",
        {"model": "fake-moa", "messages": QUESTION, "presence_penalty": 0.5, "frequency_penalty": 0},
        400,
        "'presence_penalty' is not supported",
    ),
    (
        "logprobs",
        {"model": "fake-moa", "messages": QUESTION, "logprobs": True},
        400,
        "'logprobs' is not supported",
    ),
    (
        "JSON nested 1,000 levels deep",
        b'{"model": "fake-moa", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        400,
        "nested too deeply",
    ),
    (
        "temperature 1e999",
        b'{"model": "fake-moa", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}',
        400,
        "temperature must be a finite number",
    ),
    (
        "top_p NaN",
        b'{"model": "fake-moa", "messages": [{"role": "user", "content": "hi"}], "top_p": NaN}',
        400,
        "top_p must be a finite number",
    ),
    ("n true", {"model": "fake-moa", "messages": QUESTION, "n": True}, 400, "'n' must be an integer"),
    (
        "include_usage a string",
        {"model": "fake-moa", "messages": QUESTION, "stream": True, "stream_options": {"include_usage": "y"}},
        400,
        "'stream_options.include_usage' must be true or false",
    ),
    (
        "body too large",
        {"model": "fake-moa", "messages": [{"role": "user", "content": "x" * (1 << 20)}]},
        413,
        "larger than the limit",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "message"), [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT]
)
def test_bad_input_is_an_openai_error_and_the_server_keeps_serving(
    url: str, body: Any, status: int, message: str
) -> None:
    """Each bad request: the OpenAI error shape, its status, a message naming it, a request id.

    The next request on the same keep-alive connection is answered.
    """
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{url}/chat/completions", **kwargs)
        assert response.status_code == status
        assert response.headers["x-request-id"]
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert message in error["message"]
        good = client.post(f"{url}/chat/completions", json={"model": "fake-moa", "messages": QUESTION})
        assert good.status_code == 200


def test_access_logs_carry_request_and_run_ids_and_timings() -> None:
    """Each completion logs its request id, run id, time to first answer token and time to answer."""
    with structlog.testing.capture_logs() as logs, served(create_app({"m": fake_topology()})) as base:
        response = post(base, {"model": "m", "messages": QUESTION}, headers={"x-request-id": "req-1"})
        assert response.headers["x-request-id"] == "req-1"
        deadline = time.monotonic() + 30  # the access line is written once the response is sent
        while not any(e["event"] == "access" and e.get("request_id") == "req-1" for e in logs):
            assert time.monotonic() < deadline, "no access log line"
            time.sleep(0.01)
    done = [e for e in logs if e["event"] == "completion" and e["request_id"] == "req-1"]
    assert len(done) == 1
    assert done[0]["run_id"]
    assert done[0]["time_to_first_token_s"] is not None
    assert done[0]["time_to_answer_s"] > 0
    access = [e for e in logs if e["event"] == "access" and e["request_id"] == "req-1"]
    assert len(access) == 1
    assert access[0]["status"] == 200
    assert access[0]["path"] == "/v1/chat/completions"


# --- the command -------------------------------------------------------------------------------------

FAKE_CONFIG = """\
engines:
  fake: {type: fake}
agents:
  a: {engine: fake}
  j: {engine: fake, role: aggregator}
layers: [[a]]
final: j
"""


def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Aftlib serve with an invalid config prints one error line naming the file and exits 2."""
    config = tmp_path / "bad.yaml"
    config.write_text(FAKE_CONFIG.replace("final: j", "final: nobody"))
    assert main(["serve", "--config", str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1
    assert err[0].startswith("aftlib: error:")
    assert "bad.yaml" in err[0]


def test_a_missing_key_variable_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--api-key-env naming an unset variable is a usage mistake: exit 2 naming the variable."""
    config = tmp_path / "m.yaml"
    config.write_text(FAKE_CONFIG)
    os.environ.pop("AFTLIB_TEST_NO_SUCH_KEY", None)
    assert main(["serve", "--config", str(config), "--api-key-env", "AFTLIB_TEST_NO_SUCH_KEY"]) == 2
    assert "AFTLIB_TEST_NO_SUCH_KEY" in capsys.readouterr().err


def test_the_command_serves_a_models_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    """Aftlib serve over a models file prints the URL and models, serves them, and exits 143 on SIGTERM."""
    (tmp_path / "one.yaml").write_text(FAKE_CONFIG)
    (tmp_path / "models.yaml").write_text("models: {one: one.yaml, two: one.yaml}\naliases: {default: one}\n")
    (tmp_path / "keys.txt").write_text("# keys\nsecret\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "aftlib", "serve", "--config", str(tmp_path / "models.yaml"),
               "--port", str(port), "--api-key-file", str(tmp_path / "keys.txt"), "--grace", "1"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        first = process.stderr.readline() + process.stderr.readline()
        assert f"http://localhost:{port}/v1" in first
        assert "models: one, two, default" in first
        auth = {"Authorization": "Bearer secret"}
        deadline = time.monotonic() + 30
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=auth, timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert [m["id"] for m in models.json()["data"]] == ["one", "two", "default"]
        answer = post(f"http://127.0.0.1:{port}/v1", {"model": "default", "messages": QUESTION}, headers=auth)
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 143
        rest = process.stderr.read()
        assert "secret" not in rest
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_lets_short_runs_finish_and_cancels_the_rest_after_the_grace(tmp_path: Path) -> None:
    """On SIGTERM a run that ends within --grace completes ([DONE]); one that does not is cut off."""
    (tmp_path / "quick.yaml").write_text(FAKE_CONFIG.replace("{type: fake}", "{type: fake, latency: 0.4}"))
    (tmp_path / "slow.yaml").write_text(FAKE_CONFIG.replace("{type: fake}", "{type: fake, latency: 60}"))
    (tmp_path / "models.yaml").write_text("models: {quick: quick.yaml, slow: slow.yaml}\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "aftlib", "serve", "--config", str(tmp_path / "models.yaml"),
               "--port", str(port), "--grace", "2"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    ends: dict[str, str] = {}

    def stream(model: str) -> None:
        body = {"model": model, "messages": QUESTION, "stream": True}
        try:
            with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=30) as response:
                lines = list(response.iter_lines())
            ends[model] = "done" if "data: [DONE]" in lines else "cut"
        except httpx.HTTPError:
            ends[model] = "cut"

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/models", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        threads = [threading.Thread(target=stream, args=(m,)) for m in ("quick", "slow")]
        for t in threads:
            t.start()
        wait_for_health(base, in_flight=2)  # both runs have started
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 143
        assert time.monotonic() - start < 10
        for t in threads:
            t.join(10)
        assert ends == {"quick": "done", "slow": "cut"}
    finally:
        if process.poll() is None:
            process.kill()


def test_a_bug_in_a_custom_agent_is_a_json_500_and_an_error_log_with_its_traceback() -> None:
    """A TypeError in a custom agent: the client gets the OpenAI error shape; the log keeps the traceback."""

    class Buggy(Proposer):
        async def run(self, conversation: Any, references: Any, **kwargs: Any) -> Any:
            return len(None)  # type: ignore[arg-type]  # the programming error under test

    topology = Topology([], Buggy(FakeEngine(name="fake"), name="final"))
    with structlog.testing.capture_logs() as logs, served(create_app({"m": topology})) as base:
        response = post(base, {"model": "m", "messages": QUESTION})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    failed = [e for e in logs if e["event"] == "run failed"]
    assert failed[0]["log_level"] == "error"
    assert isinstance(failed[0]["exc_info"], TypeError)


def test_a_response_format_the_engine_cannot_enforce_is_checked_never_passed_as_free_text() -> None:
    """json_object on a fake engine, which cannot constrain decoding: the answer is checked.

    A JSON answer is served; a free-text answer is a JSON 500 naming the mismatch, not a 200 with text.
    """

    def answer(request: Any, index: int) -> str:
        return '{"answer": 7}' if "JSON" in request.messages[-1].content else "seven"

    engine = FakeEngine(handler=answer, name="fake")
    final = Aggregator(engine, template="passthrough")
    topology = Topology([Proposer(engine, template="passthrough")], final)
    fmt = {"type": "json_object"}
    with served(create_app({"json": topology})) as base:
        asked = [{"role": "user", "content": "Give JSON."}]
        ok = post(base, {"model": "json", "messages": asked, "response_format": fmt})
        assert ok.status_code == 200, ok.text
        assert json.loads(ok.json()["choices"][0]["message"]["content"]) == {"answer": 7}
        bad_answer = post(base, {"model": "json", "messages": QUESTION, "response_format": fmt})
    assert bad_answer.status_code == 500
    message = bad_answer.json()["error"]["message"]
    assert "is not JSON" in message
    assert "engine 'fake' cannot constrain decoding" in message


def test_a_response_format_on_a_vote_is_refused() -> None:
    """A topology whose final agent is a vote writes no answer of its own: response_format is a 400."""
    from aftlib import Vote

    topology = Topology([Proposer(FakeEngine(), sampling=SamplingParams(n=2))], Vote(on_no_answer="first"))
    body = {"model": "vote", "messages": QUESTION, "response_format": {"type": "json_object"}}
    with served(create_app({"vote": topology})) as base:
        response = post(base, body)
    assert response.status_code == 400
    assert "cannot honour response_format" in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "response_format"
