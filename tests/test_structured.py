"""Structured output: response formats parsed from OpenAI's shape, schemas checked, answers checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aftlib import (
    Aggregator,
    ChatRequest,
    ConfigError,
    Message,
    Proposer,
    ResponseFormat,
    SamplingParams,
    StructuredOutputError,
    Topology,
    traced_requests,
)
from aftlib._trace import trace
from aftlib.engines import CachingEngine
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def test_openai_response_formats_become_response_formats() -> None:
    """Text is no format; json_object and json_schema are parsed, the schema kept as canonical JSON."""
    assert SamplingParams(response_format={"type": "text"}).response_format is None
    assert SamplingParams(response_format={"type": "json_object"}).response_format == ResponseFormat(
        "json_object"
    )
    fmt = SamplingParams(
        response_format={"type": "json_schema", "json_schema": {"name": "v", "schema": SCHEMA}}
    ).response_format
    assert fmt is not None
    assert (fmt.type, fmt.name, fmt.schema) == ("json_schema", "v", SCHEMA)
    assert fmt.to_openai() == {
        "type": "json_schema",
        "json_schema": {"name": "v", "schema": SCHEMA, "strict": True},
    }
    assert hash(SamplingParams(response_format=fmt)) == hash(SamplingParams(response_format=fmt))


@pytest.mark.parametrize(
    ("value", "message", "path"),
    [
        ({"type": "xml"}, "'text', 'json_object' or 'json_schema'", "response_format.type"),
        ("json", "is an object", "response_format"),
        ({"type": "json_schema"}, "needs 'json_schema'", "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": 3}}}, "not a JSON schema", None),
        ({"type": "json_schema", "json_schema": {"name": "", "schema": {}}}, "non-empty", None),
    ],
)
def test_malformed_response_formats_name_their_key(value: Any, message: str, path: str | None) -> None:
    """Each malformed response_format is a ConfigError naming the key that is wrong."""
    with pytest.raises(ConfigError, match=message) as info:
        SamplingParams(response_format=value)
    assert info.value.path is not None
    assert info.value.path.startswith(path or "response_format.json_schema")


def test_problems_say_what_is_wrong_and_where() -> None:
    """Not JSON, not an object, or not matching the schema: each is described; a match is None."""
    schema = ResponseFormat.json_schema(SCHEMA, name="v")
    assert schema.problem('{"answer": 7}') is None
    assert "not JSON" in (schema.problem("seven") or "")
    assert "at answer: 'seven' is not of type 'integer'" in (schema.problem('{"answer": "seven"}') or "")
    assert "not an object" in (ResponseFormat("json_object").problem("[1, 2]") or "")


async def test_an_answer_off_format_fails_the_run_with_the_reason() -> None:
    """A final agent on an engine that cannot constrain decoding: a non-JSON answer is an error, not text."""
    engine = FakeEngine(handler=lambda request, index: "seven", name="fake")
    final = Aggregator(engine, sampling=SamplingParams(response_format={"type": "json_object"}))
    with pytest.raises(StructuredOutputError, match="sample 0 is not JSON") as info:
        await Topology([Proposer(engine)], final).run("q")
    assert "engine 'fake' cannot constrain decoding" in str(info.value)


async def test_the_format_is_part_of_the_cache_key_and_of_the_trace(tmp_path: Path) -> None:
    """The same prompt with and without a format are two cache entries; a trace gives the format back."""
    calls: list[ChatRequest] = []

    def answer(request: ChatRequest, index: int) -> str:
        calls.append(request)
        return '{"answer": 1}'

    engine = CachingEngine(FakeEngine(handler=answer), tmp_path / "cache")
    ask = [Message("user", "q")]
    fmt = ResponseFormat.json_schema(SCHEMA)
    async with engine:
        await engine.generate(ChatRequest(ask, SamplingParams(seed=1)))
        await engine.generate(ChatRequest(ask, SamplingParams(seed=1, response_format=fmt)))
        await engine.generate(ChatRequest(ask, SamplingParams(seed=1, response_format=fmt)))
    assert len(calls) == 2
    final = Aggregator(FakeEngine(handler=answer), sampling=SamplingParams(response_format=fmt))
    result = await Topology([Proposer(FakeEngine())], final).run("q")
    (_, traced) = traced_requests(trace(result))
    assert traced.request.sampling.response_format == fmt
