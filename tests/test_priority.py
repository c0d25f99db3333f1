"""Priority by depth: what priority each request of a topology carries, and the engines that honour it."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest
from structlog.testing import capture_logs

from aftlib import ChatRequest, ConfigError, Message, Runner, presets
from aftlib._priority import NEUTRAL, STEP
from aftlib.engines import FakeEngine, LimitedEngine, OpenAIEngine, VLLMEngine
from aftlib.evaluate import EvalItem, MTBenchJudge

from .test_openai_engine import Server, chunk, sse, usage_chunk

pytestmark = pytest.mark.anyio


def _step(request: ChatRequest) -> str:
    system = request.messages[0].content
    return "draft" if system.strip() == "" else "aggregate"


async def test_a_run_gives_later_steps_and_older_runs_lower_priorities() -> None:
    """Drafts get 2 steps, the aggregation 1, the final 0 (x STEP), plus the run's order within a step."""
    engine = FakeEngine()
    topology = presets.aft(engine, n=2, num_aggregation=2, max_tokens=8)
    await topology.run("first", order=7)
    await topology.run("second", order=3)
    by_run: dict[str, list[int]] = {}
    for request in engine.requests:
        by_run.setdefault(request.messages[-1].content, []).append(request.priority)
    assert by_run["first"] == [2 * STEP + 7, STEP + 7, 7]
    assert by_run["second"] == [2 * STEP + 3, STEP + 3, 3]
    # every final outranks every aggregation, which outranks every draft, whatever the runs' ages
    assert max(by_run["first"][2], by_run["second"][2]) < min(by_run["first"][1], by_run["second"][1])


async def test_runs_without_an_order_are_numbered_in_the_order_they_start() -> None:
    """Two runs with no order: the later one's requests rank after the earlier one's within each step."""
    engine = FakeEngine()
    topology = presets.aft(engine, n=1, num_aggregation=1, max_tokens=8)
    await topology.run("a")
    await topology.run("b")
    a = [r.priority for r in engine.requests if r.messages[-1].content == "a"]
    b = [r.priority for r in engine.requests if r.messages[-1].content == "b"]
    assert [x // STEP for x in a] == [x // STEP for x in b] == [1, 0]
    assert all(x < y for x, y in zip(a, b, strict=True))


async def test_the_runner_gives_every_turn_of_a_record_one_order(tmp_path: Path) -> None:
    """A two-turn record's requests share one age; records admitted later are younger."""
    source = tmp_path / "in.jsonl"
    rows = [{"id": "one", "turns": ["q1", "q1 again"]}, {"id": "two", "turns": ["q2"]}]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    engine = FakeEngine()
    topology = presets.aft(engine, n=1, num_aggregation=1, max_tokens=8)
    summary = await Runner(topology, source, tmp_path / "out.jsonl", concurrency=1).run()
    assert summary.done == 2
    ages: dict[str, set[int]] = {}
    for request in engine.requests:
        user = next(m.content for m in request.messages if m.role == "user")
        ages.setdefault(user[:2], set()).add(request.priority % STEP)
    assert len(ages["q1"]) == 1
    assert len(ages["q2"]) == 1
    assert ages["q1"].pop() < ages["q2"].pop()


async def test_each_run_of_a_runner_numbers_its_records_from_zero(tmp_path: Path) -> None:
    """Ages are per run: a second Runner run's first record is as old as the first run's first record."""
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "turns": ["q"]}) + "\n")
    engine = FakeEngine()
    topology = presets.aft(engine, n=1, num_aggregation=1, max_tokens=8)
    await Runner(topology, source, tmp_path / "one.jsonl", concurrency=1).run()
    await Runner(topology, source, tmp_path / "two.jsonl", concurrency=1).run()
    first, second = ({r.priority % STEP for r in engine.requests[i : i + 2]} for i in (0, 2))
    assert first == second == {0}


async def test_a_request_built_outside_a_topology_never_outranks_an_answer() -> None:
    """A judge's request (built outside any step) is NEUTRAL: behind every final answer, not 0."""
    engine = FakeEngine(handler=lambda request, index: "Rating: [[7]]")
    await MTBenchJudge(engine).judge(EvalItem("x", ["What is 1+1?"], ["2"], category="writing"))
    (request,) = engine.requests
    assert request.priority == NEUTRAL
    assert request.priority > STEP - 1  # the final answer of any run (age < STEP) goes first


async def test_a_limited_engine_gives_free_places_in_priority_order() -> None:
    """Waiting requests get the one place lowest priority first, equal priorities in arrival order."""
    gate = anyio.Event()
    served: list[str] = []

    async def handler(request: ChatRequest, index: int) -> str:
        served.append(request.messages[0].content)
        if request.messages[0].content == "holder":
            await gate.wait()
        return "ok"

    engine = LimitedEngine(FakeEngine(handler=handler), max_in_flight=1)
    assert engine.supports_priority

    async def ask(text: str, priority: int) -> None:
        await engine.generate(ChatRequest([Message("user", text)], priority=priority))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "holder", 0)
        await anyio.wait_all_tasks_blocked()
        for text, priority in [("late-draft", 9), ("final", 1), ("aggregate", 5), ("final-2", 1)]:
            tg.start_soon(ask, text, priority)
            await anyio.wait_all_tasks_blocked()
        assert engine.waiting == 4
        gate.set()
    assert served == ["holder", "final", "final-2", "aggregate", "late-draft"]
    assert (engine.in_flight, engine.waiting) == (0, 0)


async def test_a_cancelled_waiter_leaves_no_place_behind() -> None:
    """A request cancelled while waiting is dropped from the line; the place still goes to the next one."""
    gate = anyio.Event()

    async def handler(request: ChatRequest, index: int) -> str:
        if request.messages[0].content == "holder":
            await gate.wait()
        return request.messages[0].content

    engine = LimitedEngine(FakeEngine(handler=handler), max_in_flight=1)
    answers: list[str] = []

    async def ask(text: str, priority: int) -> None:
        completion = await engine.generate(ChatRequest([Message("user", text)], priority=priority))
        answers.append(completion.samples[0].text)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "holder", 0)
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as doomed:
            async with anyio.create_task_group() as inner:
                inner.start_soon(ask, "cancelled", 0)
                await anyio.wait_all_tasks_blocked()
                tg.start_soon(ask, "next", 5)
                await anyio.wait_all_tasks_blocked()
                doomed.cancel()
        gate.set()
    assert answers == ["holder", "next"]
    assert (engine.in_flight, engine.waiting) == (0, 0)
    await engine.generate(ChatRequest([Message("user", "after")]))  # the place came back


def _answer(body: dict[str, object]) -> httpx.Response:
    return sse([chunk(0, "fine", "stop"), usage_chunk(3, 1)])


async def test_an_openai_engine_sends_the_priority_in_the_body() -> None:
    """A non-zero priority (the neutral default too) goes in the request body; priority 0 adds nothing."""
    server = Server(_answer)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    async with OpenAIEngine("m", "http://one.test/v1", http_client=client) as engine:
        assert engine.supports_priority
        await engine.generate(ChatRequest([Message("user", "hi")], priority=42))
        await engine.generate(ChatRequest([Message("user", "hi")], priority=0))
        await engine.generate(ChatRequest([Message("user", "hi")]))
    assert server.bodies[0]["priority"] == 42
    assert "priority" not in server.bodies[1]
    assert server.bodies[2]["priority"] == NEUTRAL


async def test_a_server_that_refuses_priority_gets_requests_without_it() -> None:
    """HTTP 400 naming 'priority': one warning, the same request again without it, and none after."""

    def chat(body: dict[str, object]) -> httpx.Response:
        if "priority" in body:
            message = "Unrecognized request argument supplied: priority"
            return httpx.Response(400, json={"error": {"message": message, "type": "invalid_request_error"}})
        return _answer(body)

    server = Server(chat)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    async with OpenAIEngine("m", "http://one.test/v1", http_client=client) as engine:
        with capture_logs() as logs:
            first = await engine.generate(ChatRequest([Message("user", "hi")], priority=3))
            second = await engine.generate(ChatRequest([Message("user", "hi")], priority=4))
        assert not engine.supports_priority
    assert first.samples[0].text == second.samples[0].text == "fine"
    assert ["priority" in body for body in server.bodies] == [True, False, False]
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert "priority" in warnings[0]["event"]


async def test_other_bad_requests_are_not_taken_for_a_refused_priority() -> None:
    """A 400 about something else stays an error, and the engine keeps sending priorities."""

    def chat(body: dict[str, object]) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "temperature out of range"}})

    server = Server(chat)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    async with OpenAIEngine("m", "http://one.test/v1", http_client=client) as engine:
        with pytest.raises(Exception, match="temperature out of range"):
            await engine.generate(ChatRequest([Message("user", "hi")], priority=3))
        assert engine.supports_priority
    assert len(server.bodies) == 1


async def test_priority_false_never_sends_it() -> None:
    """OpenAIEngine(priority=False) (YAML: priority: false) sends no priority field at all."""
    server = Server(_answer)
    client = httpx.AsyncClient(transport=httpx.MockTransport(server))
    async with OpenAIEngine("m", "http://one.test/v1", http_client=client, priority=False) as engine:
        await engine.generate(ChatRequest([Message("user", "hi")], priority=42))
    assert "priority" not in server.bodies[0]


def test_a_vllm_engine_schedules_by_priority_unless_told_fcfs() -> None:
    """The default policy is priority; 'fcfs' turns it off; anything else is a ConfigError naming the key."""
    assert VLLMEngine("some/model").supports_priority
    fcfs = VLLMEngine("some/model", scheduling_policy="fcfs")
    assert not fcfs.supports_priority
    assert "scheduling_policy" not in fcfs.engine_args  # passed to vLLM at start, not kept twice
    with pytest.raises(ConfigError, match="scheduling_policy is 'priority' or 'fcfs', got 'lifo'"):
        VLLMEngine("some/model", scheduling_policy="lifo")


@pytest.mark.vllm
async def test_the_real_engine_schedules_by_priority_and_reports_its_load(vllm_engine: VLLMEngine) -> None:
    """The engine runs vLLM's priority policy; capacity is its max_num_seqs; load counts sequences."""
    assert vllm_engine.llm.vllm_config.scheduler_config.policy == "priority"
    assert vllm_engine.capacity == vllm_engine.llm.vllm_config.scheduler_config.max_num_seqs
    seen: list[int] = []
    topology = presets.aft(vllm_engine, n=3, num_aggregation=1, max_tokens=16)

    async def watch() -> None:
        while True:
            seen.append(vllm_engine.load)
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        result = await topology.run("Name a colour.")
        tg.cancel_scope.cancel()
    assert result.text
    assert max(seen) == 3  # the three drafts of one request, each a sequence
    assert vllm_engine.load == 0


@pytest.mark.vllm
async def test_a_real_server_started_with_the_priority_policy_takes_priorities(openai_server: str) -> None:
    """Through the loopback vLLM server: every request of an AFT run carries its priority and is answered."""
    bodies: list[dict[str, object]] = []

    async def capture(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            bodies.append(json.loads(request.content))

    client = httpx.AsyncClient(event_hooks={"request": [capture]})
    async with OpenAIEngine("tiny-served", openai_server, http_client=client) as engine:
        topology = presets.aft(engine, n=2, num_aggregation=1, max_tokens=8)
        result = await topology.run("Say hello.", order=5)
        assert engine.supports_priority
    await client.aclose()
    assert result.text
    assert [body.get("priority") for body in bodies] == [STEP + 5, 5]
