"""Topologies on the FakeEngine: streaming, events, concurrency, errors and bad input."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from aftlib import (
    AftError,
    AgentFailure,
    Aggregator,
    AnswerDone,
    CandidateDone,
    ChatRequest,
    ConfigError,
    EngineError,
    Event,
    InputError,
    Layer,
    LayerDone,
    Proposer,
    QuorumError,
    SamplingParams,
    TokenDelta,
    Topology,
    presets,
)
from aftlib.testing import FakeEngine

from .conftest import TWO_TURNS

pytestmark = pytest.mark.anyio


async def test_answer_deltas_concatenate_to_the_answer() -> None:
    """on_event sees every token delta; the answer's deltas join to result.text, in order."""
    events: list[Event] = []
    engine = FakeEngine(handler=lambda r, i: f"sample {i} says hello to the world")
    result = await presets.aft(engine, n=3).run(TWO_TURNS, on_event=events.append)
    answer = "".join(e.text for e in events if isinstance(e, TokenDelta) and e.is_answer)
    assert answer == result.text
    drafts = [e for e in events if isinstance(e, TokenDelta) and not e.is_answer]
    assert {(e.layer, e.index) for e in drafts} == {(layer, i) for layer in (0, 1) for i in range(3)}
    for candidate in result.layers[0].candidates:
        pieces = [e.text for e in drafts if e.layer == 0 and e.index == candidate.index]
        assert "".join(pieces) == candidate.text
    kinds = [type(e).__name__ for e in events if not isinstance(e, TokenDelta)]
    assert kinds == ["CandidateDone"] * 3 + ["LayerDone"] + ["CandidateDone"] * 3 + ["LayerDone"] + [
        "CandidateDone",
        "AnswerDone",
    ]
    assert isinstance(events[-1], AnswerDone)
    assert events[-1].result == result


async def test_async_callbacks_are_awaited() -> None:
    """An async on_event callback is awaited for each event before the run goes on."""
    seen: list[str] = []

    async def on_event(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(type(event).__name__)

    await presets.aft(FakeEngine(), n=2).run("q", on_event=on_event)
    assert seen[-1] == "AnswerDone"
    assert seen.count("LayerDone") == 2


async def test_stream_yields_the_same_events_as_callbacks() -> None:
    """topology.stream() yields what on_event would see, ending with AnswerDone."""
    topology = presets.aft(FakeEngine(), n=2)
    via_callback: list[Event] = []
    expected = await topology.run(TWO_TURNS, on_event=via_callback.append)
    async with topology.stream(TWO_TURNS) as events:
        streamed = [e async for e in events]
    assert streamed == via_callback
    last = streamed[-1]
    assert isinstance(last, AnswerDone)
    assert last.result.text == expected.text


async def test_closing_a_stream_cancels_the_engine_requests() -> None:
    """Leaving a stream early cancels the generations still running; nothing keeps running."""
    finished: list[int] = []
    cancelled: list[int] = []

    async def slow(request: ChatRequest, index: int) -> str:
        try:
            await anyio.sleep(30 if request.sampling.temperature == 1.0 else 0)
        except anyio.get_cancelled_exc_class():
            cancelled.append(index)
            raise
        finished.append(index)
        return f"draft {index}"

    engine = FakeEngine(handler=slow)
    hanging = SamplingParams(temperature=1.0)
    layer = Layer([Proposer(engine, name="quick"), Proposer(engine, name="hangs", sampling=hanging)])
    topology = Topology([layer], Aggregator(engine))
    with anyio.fail_after(5):
        async with topology.stream("q") as events:
            async for _ in events:
                break
    assert cancelled == [0], "the hanging generation was not cancelled"
    assert finished == [0]


async def test_agents_of_a_layer_run_concurrently() -> None:
    """Three agents with 0.2 s latency each finish a layer in well under 0.6 s."""
    engine = FakeEngine(latency=0.2)
    layer = Layer([Proposer(engine, name=f"p{i}") for i in range(3)])
    topology = Topology([layer], Aggregator(engine))
    start = anyio.current_time()
    result = await topology.run("q")
    assert anyio.current_time() - start < 0.55
    assert [c.agent for c in result.layers[0].candidates] == ["p0", "p1", "p2"]


async def test_candidates_keep_agent_then_sample_order() -> None:
    """Candidates come in agent order, then sample index, whatever order they finish in."""

    async def handler(request, index):  # type: ignore[no-untyped-def]
        await anyio.sleep(0.01 * (3 - index))
        return f"{request.sampling.temperature}-{index}"

    engine = FakeEngine(handler=handler)
    layer = Layer(
        [
            Proposer(engine, name="hot", sampling=SamplingParams(temperature=1.0, n=3)),
            Proposer(engine, name="cold", sampling=SamplingParams(temperature=0.0, n=2)),
        ]
    )
    result = await Topology([layer], Aggregator(engine)).run("q")
    assert [(c.agent, c.index) for c in result.layers[0].candidates] == [
        ("hot", 0),
        ("hot", 1),
        ("hot", 2),
        ("cold", 0),
        ("cold", 1),
    ]
    assert result.layers[0].texts == ["1.0-0", "1.0-1", "1.0-2", "0.0-0", "0.0-1"]


async def test_an_engine_failure_is_an_engine_error_not_a_group() -> None:
    """A failing agent surfaces as one QuorumError (an EngineError, not an ExceptionGroup).

    It names the layer and agent, and chains the engine's error and that error's own cause.
    """

    def handler(request, index):  # type: ignore[no-untyped-def]
        raise ConnectionError("boom")

    with pytest.raises(QuorumError, match=r"layer 0 got 0 of the 2 .*proposer EngineError: .*boom") as info:
        await presets.aft(FakeEngine(handler=handler), n=2).run("q")
    assert isinstance(info.value, EngineError)
    assert info.value.failures == (AgentFailure(0, "proposer", "error", info.value.failures[0].error),)
    assert isinstance(info.value.__cause__, EngineError)
    assert isinstance(info.value.__cause__.__cause__, ConnectionError)


async def test_usage_adds_up_over_requests() -> None:
    """Result.usage is the sum of every request's usage; candidates carry their token counts."""
    engine = FakeEngine(handler=lambda r, i: "one two three")
    result = await presets.aft(engine, n=2).run("q")
    assert result.usage.requests == 3
    assert result.usage.completion_tokens == 3 * 5
    assert all(c.completion_tokens == 3 for layer in result.layers for c in layer.candidates)
    assert result.usage.prompt_tokens == sum(layer.usage.prompt_tokens for layer in result.layers) + (
        result.answer.prompt_tokens
    )


async def test_logs_carry_layer_and_agent() -> None:
    """Each request is logged with its layer and agent bound."""
    with capture_logs() as logs:
        await presets.aft(FakeEngine(), n=2).run("q")
    requests = [entry for entry in logs if entry["event"] == "request"]
    assert [(e["layer"], e["agent"]) for e in requests] == [(0, "proposer"), (1, "aggregator"), (2, "final")]


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_runs_on_trio() -> None:
    """Everything but the vLLM engine is backend-neutral: the AFT topology runs on trio."""
    events: list[Event] = []
    result = await presets.aft(FakeEngine(latency=0.01), n=3).run(TWO_TURNS, on_event=events.append)
    assert isinstance(events[-1], AnswerDone)
    assert result.usage.requests == 3


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([], "no user turn"),
        ([{"role": "system", "content": "s"}], "no user turn"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "end with a user turn"),
        ([{"role": "robot", "content": "q"}], r"conversation\[0\]\.role: unknown role 'robot'"),
        ([{"role": "user", "content": 3}], r"conversation\[0\]\.content: content must be a string"),
        (
            [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}],
            "system turn may only come first",
        ),
        ({"role": "user", "content": "q"}, "a conversation is a list"),
        (["hello"], r"conversation\[0\]: a turn is a mapping"),
    ],
)
async def test_bad_conversations_are_input_errors(conversation: object, message: str) -> None:
    """A malformed conversation raises InputError naming the problem, before any request is sent."""
    engine = FakeEngine()
    with pytest.raises(InputError, match=message):
        await presets.aft(engine).run(conversation)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=message):
        async with presets.aft(engine).stream(conversation):  # type: ignore[arg-type]
            pass
    assert engine.requests == []


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda e: SamplingParams(n=0), "n must be at least 1"),
        (lambda e: SamplingParams(top_p=0), "top_p must be in"),
        (lambda e: SamplingParams(temperature=-1), "temperature must be >= 0"),
        (lambda e: presets.aft(e, num_aggregation=0), "num_aggregation"),
        (lambda e: Topology([[Aggregator(e)]], Aggregator(e)), "aggregator in the first layer"),
        (lambda e: Topology([], Aggregator(e)), "no layer before it"),
        (lambda e: Topology([[Proposer(e)]], Aggregator(e, sampling=SamplingParams(n=2))), "samples once"),
        (lambda e: Layer([Proposer(e), Proposer(e)]), "'proposer' repeats"),
        (lambda e: Layer([]), "at least one agent"),
        (lambda e: Proposer(e, template="no_such_template"), "not found"),
        (lambda e: Proposer("not an engine"), "must be an aftlib Engine"),
    ],
)
def test_bad_parameters_are_config_errors(build, message: str) -> None:  # type: ignore[no-untyped-def]
    """Bad sampling parameters, templates and wiring raise ConfigError (an AftError) naming the problem."""
    with pytest.raises(ConfigError, match=message) as info:
        build(FakeEngine())
    assert isinstance(info.value, AftError)


async def test_a_proposer_only_topology_answers_directly() -> None:
    """A topology with no layers and a final proposer is plain generation: one request, n=1."""
    engine = FakeEngine(handler=lambda r, i: "direct")
    result = await Topology([], Proposer(engine)).run("q")
    assert result.text == "direct"
    assert result.layers == ()
    assert len(engine.requests) == 1


async def test_engines_are_entered_once_and_closed_together() -> None:
    """Entering a topology starts each distinct engine once, even when agents share it."""
    starts: list[str] = []

    class Counting(FakeEngine):
        async def start(self) -> None:
            starts.append(self.name)

        async def aclose(self) -> None:
            starts.append(f"closed {self.name}")

    a, b = Counting(name="a"), Counting(name="b")
    topology = Topology(
        [[Proposer(a, name="x"), Proposer(b, name="y"), Proposer(a, name="z")]], Aggregator(a)
    )
    async with topology:
        assert starts == ["a", "b"]
        await topology.run("q")
    assert sorted(starts[2:]) == ["closed a", "closed b"]


async def test_candidate_done_events_name_their_agent() -> None:
    """CandidateDone and LayerDone carry the candidates the result ends up with."""
    events: list[Event] = []
    result = await presets.aft(FakeEngine(), n=2).run("q", on_event=events.append)
    done = [e.candidate for e in events if isinstance(e, CandidateDone)]
    assert done == [*result.layers[0].candidates, *result.layers[1].candidates, result.answer]
    layers = [e.layer for e in events if isinstance(e, LayerDone)]
    assert layers == list(result.layers)
