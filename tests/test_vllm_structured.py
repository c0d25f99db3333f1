"""Structured output on the real vLLM CPU engine: even the random tiny model answers valid JSON."""

from __future__ import annotations

import json

import pytest

from aftlib import Aggregator, Proposer, ResponseFormat, SamplingParams, Topology
from aftlib.engines import VLLMEngine

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}


async def test_a_json_schema_answer_validates_on_the_real_engine(vllm_engine: VLLMEngine) -> None:
    """The final aggregator of an AFT-shaped topology answers JSON that matches the schema, drafts are free.

    The tiny model has random weights: without the constraint its answers are gibberish, with it each
    answer (three runs) parses and validates.
    """
    import jsonschema

    fmt = ResponseFormat.json_schema(SCHEMA, name="verdict")
    drafts = Proposer(
        vllm_engine, template="passthrough", sampling=SamplingParams(n=2, max_tokens=16, seed=1)
    )
    final = Aggregator(vllm_engine, sampling=SamplingParams(max_tokens=48, response_format=fmt, seed=2))
    topology = Topology([drafts], final)
    free = await Topology(
        [drafts], Aggregator(vllm_engine, sampling=SamplingParams(max_tokens=48, seed=2))
    ).run("How many apples? Answer in JSON.")
    assert fmt.problem(free.text) is not None  # unconstrained, the random model writes no such JSON
    for question in ("How many apples?", "How many pears?", "Is seven odd?"):
        result = await topology.run(question)
        value = json.loads(result.text)
        jsonschema.validate(value, SCHEMA)
        assert result.answer.finish_reason == "stop"


async def test_a_json_schema_answer_validates_through_an_openai_compatible_server(openai_server: str) -> None:
    """OpenAIEngine sends the response_format to vLLM's server, which constrains decoding to it."""
    import jsonschema

    from aftlib import ChatRequest, Message
    from aftlib.engines import OpenAIEngine

    fmt = ResponseFormat.json_schema(SCHEMA, name="verdict")
    engine = OpenAIEngine("tiny-served", openai_server)
    async with engine:
        completion = await engine.generate(
            ChatRequest(
                [Message("user", "How many apples?")], SamplingParams(max_tokens=48, response_format=fmt)
            )
        )
    jsonschema.validate(json.loads(completion.samples[0].text), SCHEMA)


async def test_a_selection_retry_is_constrained_to_a_valid_index(vllm_engine: VLLMEngine) -> None:
    """A selection's retry names a candidate on the real engine: no fallback to the first one.

    The random tiny model names no candidate in its free first reply; the retry, constrained to a number
    from 1 to the candidates' count, always names one.
    """
    from aftlib import Select

    drafts = Proposer(vllm_engine, template="passthrough", sampling=SamplingParams(n=4, max_tokens=8, seed=1))
    judge = Select(vllm_engine, sampling=SamplingParams(temperature=0, max_tokens=24))
    for question in ("Which is best?", "Pick one."):
        result = await Topology([drafts], judge).run(question)
        details = result.answer.details
        assert details["attempts"] == 2  # the free reply named none
        assert details["fallback"] is False
        assert 1 <= int(details["raw"][-1]) <= 4
        assert result.text == result.layers[0].candidates[details["chosen"]].text
