"""The playground page in a real browser: Debian's Chromium, driven by playwright, against the server.

The server (``aftlib.serve.create_app`` over FakeEngine topologies whose words arrive with a small delay)
runs under uvicorn on a loopback port in a background thread; the page is opened in headless Chromium at a
laptop's screen size. Set ``AFTLIB_UPDATE_SCREENSHOT=1`` to refresh the screenshot in the docs.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from attrs import define

from aftlib import Aggregator, ChatRequest, Delta, Layer, Proposer, Result, SamplingParams, Topology
from aftlib.engines import WrapperEngine
from aftlib.testing import FakeEngine

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "sk-playground-test"
PROMPT = "What is six times seven?"
ANSWER = (
    "Six times seven is 42. Both proposers agree: alpha multiplies directly (6 x 7 = 42) and beta "
    "adds seven six times (7 + 7 + 7 + 7 + 7 + 7 = 42), and each of their samples reaches the same total."
)
DRAFTS = {
    "alpha": "Multiply directly: 6 x 7 = 42. As a check, 6 x 7 is 6 x 5 + 6 x 2 = 30 + 12 = 42. "
    "So the answer is 42.",
    "beta": "Add seven six times: 7 + 7 = 14, 14 + 7 = 21, 21 + 7 = 28, 28 + 7 = 35, 35 + 7 = 42. "
    "Six sevens make 42.",
}


@define(eq=False)
class Typing(WrapperEngine):
    """The inner engine's stream, each text delta after ``delay`` seconds, as a model writes."""

    delay: float = 0.03

    def stream(self, request: ChatRequest) -> Any:
        """The inner stream, slowed down."""

        @asynccontextmanager
        async def slowed() -> AsyncIterator[AsyncIterator[Any]]:
            async def items() -> AsyncIterator[Any]:
                async with self.inner.stream(request) as inner:
                    async for item in inner:
                        if isinstance(item, Delta):
                            await anyio.sleep(self.delay)
                        yield item

            async with aclosing(items()) as gen:  # type: ignore[type-var]
                yield gen

        return slowed()


def draft(name: str) -> FakeEngine:
    """An engine whose sample ``i`` is the agent's draft, numbered."""
    return FakeEngine(handler=lambda request, i: f"({name} #{i}) {DRAFTS.get(name, DRAFTS['alpha'])}")


def moa(delay: float) -> tuple[Topology, list[FakeEngine]]:
    """Two proposers with n=2 and an aggregator, each on its own FakeEngine, words ``delay`` s apart."""
    engines = [draft("alpha"), draft("beta"), FakeEngine(handler=lambda request, i: ANSWER)]
    alpha, beta, final = (Typing(e, delay=delay) for e in engines)
    two = SamplingParams(n=2, temperature=0.7)
    layer = Layer([Proposer(alpha, name="alpha", sampling=two), Proposer(beta, name="beta", sampling=two)])
    return Topology([layer], Aggregator(final, name="judge")), engines


@define
class Served:
    """The server under test: its base URL and what the tests compare the page with."""

    url: str
    expected: Result
    slow_engines: list[FakeEngine]


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """The app with a quick ``moa`` model (and a ``slow`` one) under uvicorn on a free loopback port."""
    try:
        import uvicorn
    except ImportError:
        pytest.fail("the playground test needs the `serve` extra: pip install -e '.[dev]'", pytrace=False)
    from aftlib.serve import create_app

    quick, _ = moa(0.02)
    with ThreadPoolExecutor(1) as pool:  # its own thread: playwright's sync API holds this one's loop
        expected = pool.submit(anyio.run, Topology.run, moa(0)[0], PROMPT).result()
    slow, slow_engines = moa(0.5)
    failing = FakeEngine(faults=lambda number, request: "raise")
    broken = Topology(quick.layers, Aggregator(failing, name="judge"))
    app = create_app(
        {"moa": quick, "slow": slow, "broken": broken}, aliases={"default": "moa"}, api_keys=[KEY]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start within 20 s"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}/", expected, slow_engines)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium; a missing browser fails the test with how to install it."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"the playground test needs Debian's Chromium at {CHROMIUM}: install it with "
            "`apt-get update && apt-get install -y chromium` as root "
            "(`bash scripts/bootstrap cpu,dev` does it)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playground test needs playwright: pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page at a laptop's screen size (1366x768), its console errors collected."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()


def open_with_key(page: Any, served: Served, key: str = KEY) -> None:
    """Open the playground, enter the API key and wait for the models to be listed."""
    page.goto(served.url)
    page.fill("#key", key)
    page.dispatch_event("#key", "change")
    if key == KEY:
        page.wait_for_function("document.querySelectorAll('#model option[value]').length >= 2")


FIRST_DRAFT = """() => {
  const boxes = [...document.querySelectorAll('.layer[data-layer="0"] .sample .text')];
  const texts = boxes.map((b) => b.textContent);
  if (!texts.some((t) => t.length > 0)) return false;
  return {texts, answer: document.getElementById('answer').textContent, state: document.body.dataset.state};
}"""


def test_page_streams_drafts_into_agent_columns_then_shows_the_answer(
    page: Any, served: Served, tmp_path: Path
) -> None:
    """Drafts fill one column per agent while the run is under way; the answer and usage equal the run's."""
    open_with_key(page, served)
    assert page.title() == "aftlib playground"
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [
        "moa",
        "slow",
        "broken",
        "default",
    ]
    page.select_option("#model", "moa")
    page.fill("#prompt", PROMPT)
    page.press("#prompt", "Control+Enter")

    first = page.wait_for_function(FIRST_DRAFT, timeout=15_000).json_value()
    assert first["state"] == "running"
    assert first["answer"] == ""  # drafts appear before the answer is written

    page.wait_for_function("document.body.dataset.state !== 'running'", timeout=30_000)
    assert page.get_attribute("body", "data-state") == "done", page.inner_text("#error")
    expected = served.expected
    assert page.inner_text("#answer") == expected.text == ANSWER

    columns = page.eval_on_selector_all(
        '.layer[data-layer="0"] .agent',
        "cs => cs.map(c => [c.dataset.agent, [...c.querySelectorAll('.text')].map(t => t.textContent)])",
    )
    by_agent: dict[str, list[str]] = {}
    for candidate in expected.layers[0].candidates:
        by_agent.setdefault(candidate.agent, []).append(candidate.text)
    assert columns == [["alpha", by_agent["alpha"]], ["beta", by_agent["beta"]]]
    # the first look caught the drafts part-written: each box held the start of its final text
    finals = [text for _, texts in columns for text in texts]
    assert all(final.startswith(seen) for seen, final in zip(first["texts"], finals, strict=True))
    assert any(seen != final for seen, final in zip(first["texts"], finals, strict=True))

    assert "4 candidates" in page.inner_text('.layer[data-layer="0"] .layer-head')
    usage = expected.usage
    total = page.eval_on_selector_all("#usage tfoot td", "ts => ts.map(t => t.textContent)")
    assert total == [f"{usage.prompt_tokens:,}", f"{usage.cached_tokens:,}", f"{usage.completion_tokens:,}"]
    steps = page.eval_on_selector_all("#usage tbody th", "ts => ts.map(t => t.textContent)")
    assert steps == ["layer 0", "final (1)"]
    assert page.is_hidden("#error")
    assert page.errors == []

    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("AFTLIB_UPDATE_SCREENSHOT") == "1":
        target = ROOT / "docs" / "images" / "playground.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)


def test_page_shows_the_server_error_message(page: Any, served: Served) -> None:
    """A refused key shows the server's OpenAI error message (401) instead of a model list."""
    open_with_key(page, served, key="sk-wrong")
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.inner_text("#error")
    assert "API key" in page.inner_text("#error")
    assert page.errors == []


def test_page_shows_an_error_event_sent_after_the_stream_began(page: Any, served: Served) -> None:
    """A run whose aggregator fails mid-stream shows the error event's message; the drafts stay shown."""
    open_with_key(page, served)
    page.select_option("#model", "broken")
    page.fill("#prompt", PROMPT)
    page.click("#send")
    page.wait_for_function("document.body.dataset.state !== 'running'", timeout=30_000)
    assert page.get_attribute("body", "data-state") == "error"
    assert "the topology failed" in page.inner_text("#error")
    assert page.inner_text("#answer") == ""
    drafts = page.eval_on_selector_all(
        '.layer[data-layer="0"] .sample .text', "ts => ts.map(t => t.textContent)"
    )
    assert len(drafts) == 4
    assert all(drafts)
    assert page.errors == []


def test_stop_aborts_the_run_and_the_server_cancels_it(page: Any, served: Served) -> None:
    """Stop aborts the stream mid-draft: the page says stopped and no engine request is left running."""
    open_with_key(page, served)
    page.select_option("#model", "slow")
    page.fill("#prompt", PROMPT)
    page.click("#send")
    page.wait_for_function(FIRST_DRAFT, timeout=15_000)
    assert page.is_enabled("#stop")
    page.click("#stop")
    page.wait_for_function("document.body.dataset.state === 'stopped'", timeout=5_000)
    assert page.is_enabled("#send")
    assert page.inner_text("#answer") == ""
    deadline = time.monotonic() + 10
    while any(e.in_flight for e in served.slow_engines):
        assert time.monotonic() < deadline, [e.in_flight for e in served.slow_engines]
        time.sleep(0.05)
    assert sum(e.arrivals for e in served.slow_engines) >= 2
    assert served.slow_engines[2].arrivals == 0  # the aggregator never ran
