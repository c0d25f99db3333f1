"""Usage per agent, layer, record and run; prices and cost; the summary file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aftlib import ConfigError, Layer, Price, PriceTable, Proposer, Runner, Topology, Usage, presets
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio


def prompts(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}"}) + "\n" for i in range(count)))
    return path


def test_price_charges_cached_prompt_tokens_at_their_own_rate() -> None:
    """Fresh prompt, cached prompt and completion tokens are each charged their price per million."""
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=400_000, requests=3)
    assert Price(2.0, 8.0, cached=0.5).cost(usage) == pytest.approx(0.6 * 2 + 0.4 * 0.5 + 0.5 * 8)
    assert Price(2.0, 8.0).cost(usage) == pytest.approx(1.0 * 2 + 0.5 * 8)


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("m: {prompt: 1}", "m.completion", "missing key 'completion'"),
        ("m: {prompt: 1, completion: 2, cache: 1}", "m.cache", "unknown key 'cache'; did you mean 'cached'?"),
        ("m: {prompt: true, completion: 2}", "m", "could not convert prompt True"),
        ("m: 3", "m", "expected a mapping"),
        ("m: {prompt: -1, completion: 2}", "m.prompt", "a price is a number >= 0"),
        ("m: {prompt: free, completion: 2}", "m", "could not convert"),
        ("- m", None, "maps model names to prices"),
    ],
)
def test_price_table_mistakes_name_the_model_and_key(
    tmp_path: Path, text: str, path: str, message: str
) -> None:
    """A malformed price table is a ConfigError naming the file, the model and the key."""
    file = tmp_path / "prices.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        PriceTable.load(file)
    assert (info.value.path, info.value.source) == (path, str(file))


def test_a_model_is_priced_by_engine_name_then_by_model() -> None:
    """The engine's name is looked up first, then the model the engine (or the engine it wraps) serves."""
    from aftlib.engines import OpenAIEngine, RetryingEngine

    table = PriceTable({"judge": Price(1, 1), "gpt-x": Price(2, 2)})
    assert table.find(FakeEngine(name="judge")) == Price(1, 1)
    wrapped = RetryingEngine(OpenAIEngine("gpt-x", "http://127.0.0.1:9/v1", name="remote"))
    assert table.find(wrapped) == Price(2, 2)
    assert table.find(FakeEngine(name="other")) is None


async def test_usage_and_cost_add_up_per_agent_layer_record_and_run(tmp_path: Path) -> None:
    """Per-record usage and cost sum to the run's totals.

    The summary file breaks them down per layer, agent and engine, and the parts add up to the whole.
    """
    cheap, dear = FakeEngine(name="cheap"), FakeEngine(name="dear")
    topology = Topology(
        [Layer([Proposer(cheap, name="a"), Proposer(dear, name="b")])],
        presets.aft(dear, n=1).final,
    )
    prices = PriceTable({"cheap": Price(1.0, 2.0), "dear": Price(10.0, 30.0, cached=1.0)})
    out = tmp_path / "out.jsonl"
    summary = await Runner(topology, prompts(tmp_path / "in.jsonl", 4), out, prices=prices).run()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.usage.requests == 4 * 3
    assert summary.usage.prompt_tokens == sum(line["usage"]["prompt_tokens"] for line in lines)
    assert summary.cost == pytest.approx(sum(line["usage"]["cost"] for line in lines))
    report = json.loads((tmp_path / "out.jsonl.summary.json").read_text())
    assert report["records"] == {"read": 4, "done": 4, "resumed": 0, "failed": 0, "bad": 0}
    assert report["interrupted"] is False
    assert report["run_id"] == summary.run_id
    layer0, final = report["layers"]
    assert set(layer0["agents"]) == {"a", "b"}
    assert layer0["usage"]["completion_tokens"] == sum(
        a["completion_tokens"] for a in layer0["agents"].values()
    )
    total_cost = layer0["usage"]["cost"] + final["usage"]["cost"]
    assert report["usage"]["cost"] == pytest.approx(total_cost)
    assert report["engines"]["cheap"]["requests"] == 4
    assert report["engines"]["dear"]["requests"] == 8
    expected_cheap = Price(1.0, 2.0).cost(
        Usage(layer0["agents"]["a"]["prompt_tokens"], layer0["agents"]["a"]["completion_tokens"])
    )
    assert report["engines"]["cheap"]["cost"] == pytest.approx(expected_cheap)


async def test_a_model_without_a_price_leaves_the_cost_unknown(tmp_path: Path) -> None:
    """A cost that cannot be known in full is None (not a partial sum that looks complete)."""
    topology = presets.aft(FakeEngine(name="unpriced"), n=2)
    summary = await Runner(
        topology,
        prompts(tmp_path / "in.jsonl", 2),
        tmp_path / "o.jsonl",
        prices=PriceTable({"x": Price(1, 1)}),
    ).run()
    assert summary.cost is None
    assert "cost" not in json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])["usage"]


async def test_agents_of_failed_records_are_counted_and_their_cost_is_unknown(tmp_path: Path) -> None:
    """A record failed by its layer's quorum names the agent in the summary's failed agents.

    Its line has no cost: nothing was answered to price.
    """
    down = FakeEngine(name="down", faults=lambda number, request: "raise")
    topology = Topology(
        [[Proposer(FakeEngine(name="up"), name="up"), Proposer(down, name="down")]], presets.aft(down).final
    )
    out = tmp_path / "out.jsonl"
    prices = PriceTable({"up": Price(1, 1), "down": Price(1, 1)})
    summary = await Runner(topology, prompts(tmp_path / "in.jsonl", 3), out, prices=prices).run()
    assert summary.failed == 3
    failed = summary.usage_report.failed_agents
    assert [(f.layer, f.agent, f.records) for f in failed] == [(0, "down", 3)]
    for text in out.read_text().splitlines():
        line = json.loads(text)
        assert line["status"] == "error"
        assert "cost" not in line["usage"]
        assert [f["agent"] for f in line["failures"] if f["reason"] == "error"] == ["down"]
