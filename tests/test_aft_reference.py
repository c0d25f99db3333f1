"""The AFT preset sends exactly the requests of the AFT reference inference."""

from __future__ import annotations

import pytest

from aftlib import presets
from aftlib.testing import FakeEngine

from .conftest import REFERENCE_AGGREGATOR, TWO_TURNS, reference_aggregation_system

pytestmark = pytest.mark.anyio


async def test_aft_defaults_send_the_reference_requests() -> None:
    """aft(n=5, num_aggregation=2): proposals, one intermediate aggregation, one final; 11 samples."""
    engine = FakeEngine()
    topology = presets.aft(engine, n=5, num_aggregation=2)
    result = await topology.run(TWO_TURNS)

    assert len(engine.requests) == 3
    propose, middle, final = engine.requests

    assert propose.messages == [{"role": "system", "content": "\n"}, *TWO_TURNS]
    assert (propose.sampling.n, propose.sampling.temperature, propose.sampling.top_p) == (5, 0.7, 0.95)
    assert propose.sampling.max_tokens == 4096

    proposals = [c.text for c in result.layers[0].candidates]
    assert len(set(proposals)) == 5
    assert middle.messages == [
        {"role": "system", "content": reference_aggregation_system(proposals)},
        *TWO_TURNS,
    ]
    assert (middle.sampling.n, middle.sampling.temperature, middle.sampling.top_p) == (5, 0.7, 0.95)

    intermediate = [c.text for c in result.layers[1].candidates]
    assert final.messages == [
        {"role": "system", "content": reference_aggregation_system(intermediate)},
        *TWO_TURNS,
    ]
    assert (final.sampling.n, final.sampling.temperature, final.sampling.top_p) == (1, 0.7, 1.0)

    assert sum(r.sampling.n for r in engine.requests) == 11 == topology.generations_per_query
    assert result.text == result.answer.text
    assert result.usage.requests == 3


async def test_num_aggregation_counts_the_final_layer() -> None:
    """num_aggregation=3 gives two intermediate aggregation layers, each over its predecessor in order."""
    engine = FakeEngine()
    result = await presets.aft(engine, n=3, num_aggregation=3, seed=7).run("q")
    assert [r.sampling.n for r in engine.requests] == [3, 3, 3, 1]
    assert [len(layer.candidates) for layer in result.layers] == [3, 3, 3]
    for request, layer in zip(engine.requests[1:], result.layers, strict=True):
        assert request.messages[0].content == reference_aggregation_system(layer.texts)
        assert request.sampling.seed == 7


async def test_single_aggregation_goes_straight_to_the_final_layer() -> None:
    """num_aggregation=1: n proposals, then one final aggregation over them."""
    engine = FakeEngine()
    await presets.aft(engine, n=2, num_aggregation=1).run("q")
    assert [r.sampling.n for r in engine.requests] == [2, 1]


async def test_template_syntax_in_text_is_data() -> None:
    """Jinja syntax in user turns and drafts reaches the engine literally, never rendered."""
    drafts = ["{{ 7 * 7 }}", "{% for x in range(3) %}x{% endfor %}", "{# hidden #}"]
    engine = FakeEngine(handler=lambda request, i: drafts[i] if request.sampling.n == 3 else "ok")
    await presets.aft(engine, n=3, num_aggregation=1).run(TWO_TURNS)
    system = engine.requests[1].messages[0].content
    assert system == reference_aggregation_system(drafts)
    assert "49" not in system
    assert engine.requests[1].messages[-1].content == "And one larger than {{ 100 }}?"


def test_reference_instruction_has_its_odd_indentation() -> None:
    """The instruction ends with newline, four spaces, newline, four spaces, then 'Responses from models:'."""
    assert REFERENCE_AGGREGATOR.endswith("reliability.\n    \n    Responses from models:")
