"""Tool calls through topologies, on FakeEngine.

Tools and tool choices are checked, calls read from the model's text, voted on as canonical JSON, shown
to aggregators as data, malformed drafts dropped.

The real vLLM engine's side (constrained calls, the SDK round trip through ``aftlib serve``) is in
``test_vllm_tools.py``; the HTTP side on FakeEngine in ``test_serve_tools.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from aftlib import (
    Aggregator,
    ChatRequest,
    InputError,
    Proposer,
    SamplingParams,
    TokenDelta,
    Tool,
    ToolCall,
    ToolCallError,
    ToolChoice,
    Topology,
    Vote,
)
from aftlib._tools import CallReader, calls_grammar
from aftlib._types import as_conversation
from aftlib.engines import CachingEngine
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOLS = [ADD, WEATHER]


def tagged(name: str, arguments: Any) -> str:
    """A call as a model writes it."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


# --- checking what a conversation offers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "choice", "where", "words"),
    [
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}], None,
         "tools[0].function.parameters.type", "not a JSON schema"),
        ([{"type": "function", "function": {"name": "bad name!"}}], None,
         "tools[0].function.name", "letters"),
        ([ADD, ADD], None, "tools[1].function.name", "given twice"),
        ([{"type": "retrieval"}], None, "tools[0]", "'type': 'function'"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}},
         "tool_choice", "'nope', which is not a tool"),
        ([], "required", "tool_choice", "no tools"),
        (TOOLS, "sometimes", "tool_choice", "tool_choice is 'auto'"),
    ],
)  # fmt: skip
def test_bad_tools_and_choices_name_their_place(tools: Any, choice: Any, where: str, words: str) -> None:
    """Invalid schemas, bad or repeated names, unknown named functions: an InputError at the key path."""
    with pytest.raises(InputError) as info:
        as_conversation("hi", tools=tools, tool_choice=choice)
    assert info.value.where == where
    assert words in info.value.message


def test_tool_results_must_answer_a_call_that_was_made() -> None:
    """A tool turn quoting an id no assistant turn made is refused; one that was made is accepted."""
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    good = [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]
    conversation = as_conversation(good, tools=TOOLS)
    assert conversation[1].tool_calls == (ToolCall.of("add", {"a": 1, "b": 2}),)
    assert conversation[1].tool_calls[0].id == "call_1"
    assert dict(conversation[2]) == {"role": "tool", "content": "3", "tool_call_id": "call_1"}
    with pytest.raises(InputError, match="call id 'call_9', which no assistant turn before it made") as info:
        as_conversation([*good, {"role": "tool", "tool_call_id": "call_9", "content": "x"}])
    assert info.value.where == "conversation[3].tool_call_id"
    bad_arguments = {**call, "function": {"name": "add", "arguments": "{not json"}}
    with pytest.raises(InputError, match="not JSON") as info:
        as_conversation([good[0], {"role": "assistant", "tool_calls": [bad_arguments]}, good[2]])
    assert info.value.where == "conversation[1].tool_calls[0].function.arguments"


# --- reading calls from a model's text ------------------------------------------------------------------


def test_reader_splits_text_and_calls_and_names_malformed_ones() -> None:
    """Tagged calls after text are read as calls; unclosed tags, bad JSON or text after are errors."""
    tools = as_conversation("x", tools=TOOLS).tools
    reader = CallReader(tools, ToolChoice())
    content, calls, error = reader.read(
        "Let me add. " + tagged("add", {"b": 2, "a": 1}) + "\n" + tagged("weather", {})
    )
    assert (content, error) == ("Let me add. ", None)
    assert [(c.name, c.arguments) for c in calls] == [("add", {"a": 1, "b": 2}), ("weather", {})]
    for broken, why in [
        ('<tool_call>{"name": "add"', "never closed"),
        ('<tool_call>{"name": add}</tool_call>', "Expecting value"),
        (tagged("add", {"a": 1, "b": 2}) + " and more", "text after the tool calls"),
        ("<tool_call>[1, 2]</tool_call>", "not a JSON object"),
    ]:
        text, calls, error = reader.read(broken)
        assert calls == ()
        assert error is not None
        assert why in error
        assert text == broken
    assert CallReader(tools, ToolChoice("none")).read(tagged("add", {})) == (
        tagged("add", {}), (), None
    )  # fmt: skip


def test_reader_holds_calls_back_while_streaming() -> None:
    """Streamed pieces give the text before the first tag, holding back what may begin one."""
    reader = CallReader((Tool.function("f"),), ToolChoice())
    pieces = ["The answer", " is <to", 'ol_call>{"name": "f", ', '"arguments": {}}</tool_call>']
    assert [reader.feed(p) for p in pieces] == ["The answer", " is ", "", ""]
    reader = CallReader((Tool.function("f"),), ToolChoice())
    assert [reader.feed(p) for p in ["a <", "b"]] == ["a ", "<b"]  # "<" was not the start of a tag


def test_a_required_call_is_constrained_to_the_tagged_format() -> None:
    """The grammar of a required call: free text, then tagged calls whose JSON fits the allowed tools."""
    tools = as_conversation("x", tools=TOOLS).tools
    grammar = calls_grammar(tools, ToolChoice("function", "add"))
    start, text, call, body = grammar.splitlines()
    assert start == 'start: TEXT call ("\\n" call){0,7}'
    assert text == "TEXT: /[^<]{0,256}/"
    assert call == 'call: "<tool_call>" body "</tool_call>"'
    schema = json.loads(body.removeprefix("body: %json "))
    assert schema["properties"]["name"] == {"const": "add"}  # a named choice allows that function only
    assert list(schema["properties"]) == ["arguments", "name"]  # as render_calls writes a call
    assert list(schema["properties"]["arguments"]["properties"]) == ["a", "b"]  # the tool's own order
    both = json.loads(
        calls_grammar(tools, ToolChoice("required")).splitlines()[3].removeprefix("body: %json ")
    )
    assert [c["properties"]["name"]["const"] for c in both["anyOf"]] == ["add", "weather"]


# --- through topologies ------------------------------------------------------------------------------------


def engine_writing(texts: list[str]) -> FakeEngine:
    """Sample ``i`` of a request with tools writes ``texts[i]``; without tools, a plain answer."""
    return FakeEngine(handler=lambda request, i: texts[i] if request.tools else f"plain {i}")


async def test_vote_counts_calls_as_canonical_json_and_drops_malformed_drafts() -> None:
    """Calls agree whatever their key order or spacing; a malformed draft is counted apart, never read."""
    texts = [
        tagged("add", {"a": 1, "b": 2}),
        '<tool_call>{"arguments": {"b": 2,   "a": 1}, "name": "add"}</tool_call>',
        tagged("weather", {"city": "Paris"}),
        "<tool_call>{broken",  # malformed
        tagged("add", {"a": 1}),  # arguments off the schema
    ]
    topology = Topology([Proposer(engine_writing(texts), sampling=SamplingParams(n=5))], Vote())
    result = await topology.run("What is 1 + 2?", tools=TOOLS, tool_choice="required")
    assert result.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("add", {"a": 1, "b": 2})]
    votes = result.answer.details["votes"]
    assert list(votes.values()) == [2, 1]
    assert result.answer.details["agreement"] == pytest.approx(2 / 3)
    (layer,) = result.layers
    assert len(layer.candidates) == 3
    assert [c.index for c in layer.malformed] == [3, 4]
    assert "never closed" in (layer.malformed[0].tool_error or "")
    assert "'b' is a required property" in (layer.malformed[1].tool_error or "")


async def test_text_answers_and_calls_vote_apart() -> None:
    """With ``auto``, drafts that answer in text and drafts that call vote as different answers."""
    texts = ["The answer is 3.", "The answer is 3.", tagged("add", {"a": 1, "b": 2})]
    topology = Topology([Proposer(engine_writing(texts), sampling=SamplingParams(n=3))], Vote())
    result = await topology.run("What is 1 + 2?", tools=TOOLS)
    assert result.text == "The answer is 3."
    assert result.tool_calls == ()
    assert result.finish_reason == "stop"


async def test_aggregator_sees_tools_and_proposed_calls_as_data() -> None:
    """Proposers and the aggregator send the tools; the aggregator's prompt shows each draft's calls."""
    engine = FakeEngine(handler=lambda request, i: tagged("add", {"a": 1, "b": 2}) if request.tools else "?")
    topology = Topology(
        [Proposer(engine, name="p", sampling=SamplingParams(n=2))], Aggregator(engine, name="agg")
    )
    result = await topology.run(
        "What is 1 + 2?", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "add"}}
    )
    assert result.tool_calls[0].arguments == {"a": 1, "b": 2}
    assert all(r.tools and r.tool_choice == ToolChoice("function", "add") for r in engine.requests)
    system = engine.requests[-1].messages[0].content
    assert system.count('<tool_call>{"arguments":{"a":1,"b":2},"name":"add"}</tool_call>') == 2


async def test_a_malformed_final_answer_fails_the_run() -> None:
    """The final agent's malformed or missing required call is a ToolCallError naming the agent."""
    engine = engine_writing(["<tool_call>{oops</tool_call>"])
    with pytest.raises(ToolCallError, match=r"agent 'proposer'.*malformed tool call"):
        await Topology([], Proposer(engine)).run("1 + 2?", tools=TOOLS)
    with pytest.raises(ToolCallError, match="no tool call, and tool_choice requires one"):
        await Topology([], Proposer(engine_writing(["just text"]))).run(
            "1 + 2?", tools=TOOLS, tool_choice="required"
        )


async def test_tool_round_trip_and_streamed_text_without_the_calls() -> None:
    """Call, tool result, final answer: the answer's deltas never carry the calls' tags."""

    def handler(request: ChatRequest, index: int) -> str:
        if request.messages[-1].role == "tool":
            return f"The sum is {request.messages[-1].content}."
        return "Calling add. " + tagged("add", {"a": 2, "b": 3})

    engine = FakeEngine(handler=handler)
    topology = Topology([Proposer(engine, sampling=SamplingParams(n=2))], Aggregator(engine))
    deltas: list[str] = []

    def on_event(event: object) -> None:
        if isinstance(event, TokenDelta) and event.is_answer:
            deltas.append(event.text)

    first = await topology.run("2 + 3?", tools=TOOLS, on_event=on_event)
    assert first.text == "Calling add. "
    assert "".join(deltas) == first.text
    (call,) = first.tool_calls
    conversation = [
        {"role": "user", "content": "2 + 3?"},
        {"role": "assistant", "content": first.text, "tool_calls": [call.to_openai()]},
        {"role": "tool", "tool_call_id": call.id, "content": "5"},
    ]
    second = await topology.run(conversation, tools=TOOLS)
    assert second.text == "The sum is 5."
    assert second.tool_calls == ()
    sent = engine.requests[-1].messages
    assert sent[-2].tool_calls == (call,)
    assert sent[-1].tool_call_id == call.id


async def test_tool_choice_none_hides_the_tools_and_keeps_tags_as_text() -> None:
    """With ``none`` the model is not shown the tools, and what it writes is text, whatever it looks like."""
    text = tagged("add", {"a": 1, "b": 2})
    engine = FakeEngine(handler=lambda request, index: text)
    result = await Topology([], Proposer(engine)).run("x", tools=TOOLS, tool_choice="none")
    assert result.text == text
    assert result.tool_calls == ()
    assert engine.requests[0].tools == ()


async def test_cache_keys_on_tools_and_replays_calls(tmp_path: Any) -> None:
    """The request cache keeps a sample's calls, and a request with other tools is another request."""
    inner = engine_writing([tagged("add", {"a": 1, "b": 2})])
    cache = CachingEngine(inner, tmp_path)
    agent = Topology([], Proposer(cache, sampling=SamplingParams(seed=1)))
    first = await agent.run("x", tools=TOOLS)
    again = await agent.run("x", tools=TOOLS)
    assert len(inner.requests) == 1
    assert again.tool_calls == first.tool_calls
    assert again.tool_calls[0].id == first.tool_calls[0].id
    await agent.run("x", tools=[ADD])
    assert len(inner.requests) == 2


async def test_dataset_records_carry_tools_and_the_output_their_calls(tmp_path: Any) -> None:
    """A dataset record's tools reach every agent, and its output line has the answer's ``tool_calls``.

    A ``messages`` record with ``tools`` and ``tool_choice`` runs with them; a record whose tool is
    malformed is a bad line, and the rest runs.
    """
    from aftlib import Runner

    good = {
        "id": "a",
        "messages": [{"role": "user", "content": "1 + 2?"}],
        "tools": TOOLS,
        "tool_choice": "required",
    }
    bad = {
        "id": "b",
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {}}],
    }
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    out = tmp_path / "out.jsonl"
    engine = engine_writing([tagged("add", {"a": 1, "b": 2})])
    summary = await Runner(Topology([], Proposer(engine)), source, out).run()
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["id"] == "a"
    assert [c["function"]["name"] for c in line["tool_calls"]] == ["add"]
    assert json.loads(line["tool_calls"][0]["function"]["arguments"]) == {"a": 1, "b": 2}
    assert engine.requests[0].tool_choice == ToolChoice("required")
    assert summary.bad == 1
