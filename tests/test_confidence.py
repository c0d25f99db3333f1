"""Confidence-aware drafting on FakeEngine with scripted log probabilities.

Confidences on candidates, weighted and filtered votes, online stopping, adaptive sampling, the token
budget, topology files, sweeps, summaries and served usage.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from aftlib import (
    Aggregator,
    ChatRequest,
    Confidence,
    ConfidenceFilter,
    ConfigError,
    Consensus,
    Drafts,
    OnlineStop,
    Proposer,
    Runner,
    SamplingParams,
    TokenConfidences,
    TokenLogprob,
    Topology,
    Vote,
)
from aftlib._select import Select
from aftlib.config import load
from aftlib.run import summary_path
from aftlib.serve._protocol import usage_body
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio

SURE = "We add the numbers . The answer is 7"
UNSURE = "We guess the numbers . The answer is 9"
WORDS = len(SURE.split())


def _script(request: ChatRequest, index: int, text: str) -> list[TokenLogprob]:
    """Peaked distributions for the sure draft (confidence 4.505), flat ones for the unsure (0.7)."""
    top = [(-0.01, -9.0)] if "7" in text else [(-0.7, -0.7)]
    words = text.split()
    return [
        TokenLogprob(w, top[0][0], [(w, top[0][0]), ("x", top[0][1])][: request.sampling.logprobs or 1])
        for w in words
    ]


SURE_CONFIDENCE = (0.01 + 9.0) / 2
UNSURE_CONFIDENCE = 0.7


def _by_index(pattern: str) -> FakeEngine:
    """Sample ``index`` (or, for one-sample requests, ``seed``) is sure where ``pattern`` has an ``s``."""

    def handler(request: ChatRequest, index: int) -> str:
        position = index if request.sampling.n > 1 else (request.sampling.seed or 0)
        return SURE if pattern[position % len(pattern)] == "s" else UNSURE

    return FakeEngine(handler=handler, logprobs=_script, name="e")


def test_confidence_metrics_reduce_token_confidences() -> None:
    """Each metric reduces the token confidences as documented: means, sliding groups, bottom share, tail."""
    entries = [TokenLogprob("t", -c, [("t", -c), ("u", -c)]) for c in (1.0, 3.0, 2.0, 6.0, 4.0)]
    confidences = TokenConfidences.of(entries)
    assert confidences.tokens == (1.0, 3.0, 2.0, 6.0, 4.0)
    assert confidences.groups(2) == [2.0, 2.5, 4.0, 5.0]
    assert Confidence("mean").score(confidences) == pytest.approx(3.2)
    assert Confidence("lowest_group", window=2).score(confidences) == 2.0
    assert Confidence("lowest_group").score(confidences) == pytest.approx(3.2)  # shorter than a window
    assert Confidence("bottom_10", window=2).score(confidences) == 2.0
    assert Confidence("tail", tail=2).score(confidences) == 5.0
    assert Confidence("logprob").score(confidences) == pytest.approx(-3.2)
    assert Confidence("logprob").weight(confidences) == pytest.approx(math.exp(-3.2))
    assert Confidence().score(TokenConfidences((), ())) is None


async def test_confidence_weighted_vote_outweighs_a_less_confident_majority() -> None:
    """Three unsure drafts say 9, two sure ones say 7: a count vote picks 9, a confidence vote 7.

    The topology asks the proposer's engine for the top 20 log probabilities by itself, and the
    candidates carry their confidences.
    """
    engine = _by_index("ssuuu")
    proposer = Proposer(engine, sampling=SamplingParams(n=5))
    counted = await Topology([proposer], Vote()).run("q")
    weighted_topology = Topology([proposer], Vote(weight="confidence", confidence=Confidence("mean")))
    weighted = await weighted_topology.run("q")
    assert counted.answer.details["answer"] == "9"
    assert weighted.answer.details["answer"] == "7"
    assert weighted.answer.details["weights"] == {
        "7": pytest.approx(2 * SURE_CONFIDENCE),
        "9": pytest.approx(3 * UNSURE_CONFIDENCE),
    }
    assert engine.requests[0].sampling.logprobs is None  # the count vote needs none
    assert engine.requests[1].sampling.logprobs == 20
    assert proposer.sampling.logprobs is None  # the user's agent is left as it was
    drafts = weighted.layers[0].candidates
    assert drafts[0].confidence is not None
    assert drafts[0].confidence.tokens[0] == pytest.approx(SURE_CONFIDENCE)


async def test_filter_lets_the_aggregator_read_only_the_most_confident() -> None:
    """keep=0.4 of five drafts: the aggregator's prompt holds the two sure drafts alone, read at 1 and 3."""
    engine = _by_index("usuus")
    answers = FakeEngine(handler=lambda request, index: "The answer is 7", name="agg")
    topology = Topology(
        [Proposer(engine, sampling=SamplingParams(n=5))],
        ConfidenceFilter(Aggregator(answers), keep=0.4),
    )
    result = await topology.run("q")
    (request,) = answers.requests
    prompt = "\n".join(m.content for m in request.messages)
    assert prompt.count(SURE) == 2
    assert UNSURE not in prompt
    assert result.answer.read == (1, 4)


def test_confidence_needs_an_engine_with_logprobs_and_a_model_written_candidate() -> None:
    """A confidence vote after an engine without log probabilities, or after a selection, is refused."""

    class NoLogprobs(FakeEngine):
        @property
        def supports_logprobs(self) -> bool:
            return False

    plain = NoLogprobs(name="plain")
    with pytest.raises(ConfigError, match="engine 'plain'") as info:
        Topology([Proposer(plain, name="draft")], Vote(weight="confidence"))
    assert "agent 'draft'" in info.value.message
    assert info.value.path == "layers[0]"
    engine = FakeEngine()
    with pytest.raises(ConfigError, match="a Select gives none"):
        Topology(
            [Proposer(engine, sampling=SamplingParams(n=2)), Select(engine)],
            ConfidenceFilter(Vote(), keep=0.5),
        )


async def test_online_stop_aborts_unsure_drafts_and_counts_what_it_saved() -> None:
    """A fixed threshold stops the unsure drafts after one window of two tokens; their requests end.

    The finished drafts are the candidates; the stopped drafts' tokens count as generated, and the
    rest of their mean length as saved.
    """
    engine = _by_index("su")
    drafts = Drafts(
        Proposer(engine, sampling=SamplingParams(n=4, seed=0)), stop=OnlineStop(threshold=2.0, window=2)
    )
    result = await Topology([drafts], Vote()).run("q")
    candidates = result.layers[0].candidates
    assert [c.index for c in candidates] == [0, 2]
    assert [r.sampling.seed for r in engine.requests] == [0, 1, 2, 3]
    assert engine.in_flight == 0
    usage = result.layers[0].usage
    assert usage.requests == 4
    assert usage.completion_tokens == 2 * WORDS + 2 * 2
    assert usage.saved_tokens == 2 * (WORDS - 2)
    assert result.usage.saved_tokens == usage.saved_tokens  # counted once
    assert candidates[0].details["drafting"] == {"drawn": 4, "stopped": 2, "cancelled": 0, "threshold": 2.0}


async def test_online_stop_calibrates_its_threshold_on_warmup_drafts() -> None:
    """Warm-up drafts run whole; the threshold is the (1 - keep) quantile of their lowest groups."""
    engine = _by_index("sus")
    drafts = Drafts(
        Proposer(engine, sampling=SamplingParams(n=6, seed=0)),
        stop=OnlineStop(warmup=2, keep=0.5, window=3),
    )
    result = await Topology([drafts], Vote()).run("q")
    threshold = (SURE_CONFIDENCE + UNSURE_CONFIDENCE) / 2
    assert [c.index for c in result.layers[0].candidates] == [0, 1, 2, 3, 5]
    assert result.answer.details["answers"] == ["7", "9", "7", "7", "7"]
    (details,) = {json.dumps(c.details["drafting"]) for c in result.layers[0].candidates}
    assert json.loads(details) == {"drawn": 6, "stopped": 1, "cancelled": 0, "threshold": threshold}


async def test_consensus_stops_drawing_once_the_drafts_agree() -> None:
    """Waves of two, three agreeing drafts needed: of eight drafts at most four are drawn."""
    engine = _by_index("s")
    drafts = Drafts(
        Proposer(engine, sampling=SamplingParams(n=8, seed=0)),
        consensus=Consensus(agreement=1.0, min_drafts=3),
        wave=2,
    )
    result = await Topology([drafts], Vote()).run("q")
    assert 3 <= len(engine.requests) <= 4
    assert len(result.layers[0].candidates) >= 3
    assert result.usage.saved_tokens >= (8 - 4) * WORDS
    assert engine.in_flight == 0


async def test_budget_bounds_the_drafts_tokens_and_goes_on_with_what_fits() -> None:
    """A budget of 45 tokens, drafts of at most 20 (each writes 9): two start, then one more.

    The tokens the first two did not use pay for a third; the drafts stay within the budget and the vote
    answers.
    """
    engine = _by_index("s")
    topology = Topology([Proposer(engine, sampling=SamplingParams(n=8, max_tokens=20))], Vote(), budget=45)
    assert isinstance(topology.layers[0].agents[0], Drafts)
    result = await topology.run("q")
    assert len(engine.requests) == 3
    assert engine.peak_in_flight == 2
    assert result.layers[0].usage.completion_tokens == 3 * WORDS <= 45
    assert result.answer.details["answer"] == "7"
    assert result.usage.saved_tokens == 5 * WORDS


@pytest.mark.parametrize(
    ("build", "message", "path"),
    [
        (lambda e: OnlineStop(), "not neither", "threshold"),
        (lambda e: OnlineStop(threshold=1.0, warmup=2), "not both", "warmup"),
        (lambda e: OnlineStop(threshold=float("nan")), "finite", "threshold"),
        (lambda e: OnlineStop(warmup=2, keep=0), "share in", "keep"),
        (lambda e: OnlineStop(warmup=2, keep=1.5), "share in", "keep"),
        (lambda e: OnlineStop(warmup=2, window=0), "at least 1", "window"),
        (
            lambda e: Drafts(Proposer(e, sampling=SamplingParams(n=4)), stop=OnlineStop(warmup=4)),
            "warm-up drafts leave none",
            "stop.warmup",
        ),
        (
            lambda e: Drafts(Proposer(e, sampling=SamplingParams(n=2)), consensus=Consensus()),
            "needs 3 drafts",
            "consensus.min_drafts",
        ),
        (lambda e: Drafts(Aggregator(e)), "wraps a proposer", None),
        (lambda e: ConfidenceFilter(Vote(), keep=0), "share of the candidates", "keep"),
        (lambda e: ConfidenceFilter(Proposer(e)), "wraps an agent that reads", None),
        (lambda e: Confidence("surprise"), "unknown confidence metric", "metric"),
        (lambda e: Vote(weight="loudness"), "weight is", "weight"),  # type: ignore[arg-type]
        (
            lambda e: Topology([Proposer(e, sampling=SamplingParams(max_tokens=64))], Vote(), budget=63),
            "smaller than one draft",
            "budget",
        ),
        (lambda e: Topology([Proposer(e)], Vote(), budget=0), "at least 1", "budget"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(build: Any, message: str, path: str | None) -> None:
    """Thresholds, shares, warm-ups, budgets and metrics out of range are ConfigErrors naming the key."""
    engine = FakeEngine()
    with pytest.raises(ConfigError, match=message) as info:
        build(engine)
    assert info.value.path == path
    assert engine.requests == []


def _file(tmp_path: Path, **changes: Any) -> Path:
    data: dict[str, Any] = {
        "engines": {"e": {"type": "fake"}},
        "agents": {
            "draft": {"engine": "e", "sampling": {"n": 6, "max_tokens": 20, "seed": 1}},
            "vote": {"type": "vote"},
        },
        "layers": [["draft"]],
        "final": "vote",
    }
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    file = tmp_path / "topology.yaml"
    file.write_text(yaml.safe_dump(data))
    return file


async def test_topology_files_set_every_confidence_strategy(tmp_path: Path) -> None:
    """weight: confidence, filter, drafting (stop, consensus, wave) and budget build their objects."""
    file = _file(
        tmp_path,
        **{
            "agents.draft.drafting": {
                "wave": 2,
                "stop": {"warmup": 2, "keep": 0.5, "window": 4},
                "consensus": {"agreement": 0.8, "min_drafts": 3},
            },
            "agents.vote.weight": "confidence",
            "agents.vote.confidence": {"metric": "tail", "tail": 4},
            "agents.vote.filter": {"keep": 0.5, "confidence": {"metric": "mean"}},
            "budget": 60,
        },
    )
    topology = load(file)
    (drafts,) = topology.layers[0].agents
    assert isinstance(drafts, Drafts)
    assert drafts.wave == 2
    assert drafts.stop == OnlineStop(warmup=2, keep=0.5, window=4)
    assert drafts.consensus is not None
    assert drafts.consensus.agreement == 0.8
    assert drafts.agent.sampling.logprobs == 20
    final = topology.final
    assert isinstance(final, ConfidenceFilter)
    assert final.confidence == Confidence("mean")
    assert isinstance(final.agent, Vote)
    assert final.agent.confidence == Confidence("tail", tail=4)
    assert topology.budget == 60
    result = await topology.run("q")
    assert result.usage.completion_tokens <= 60


@pytest.mark.parametrize(
    ("changes", "message", "path"),
    [
        ({"agents.draft.weight": "confidence"}, "goes with type vote", "agents.draft.weight"),
        ({"agents.vote.weight": "loud"}, "weight is", "agents.vote.weight"),
        ({"agents.vote.confidence": {"metric": "mean"}}, "set it, or drop", "agents.vote.confidence"),
        (
            {"agents.vote.weight": "confidence", "agents.vote.confidence": {"metric": "x"}},
            "unknown confidence metric",
            "agents.vote.confidence.metric",
        ),
        ({"agents.draft.filter": {"keep": 0.5}}, "reads none", "agents.draft.filter"),
        ({"agents.vote.filter": {"keep": 2}}, "share of the candidates", "agents.vote.filter.keep"),
        ({"agents.vote.drafting": {"wave": 2}}, "goes with type proposer", "agents.vote.drafting"),
        (
            {"agents.draft.drafting": {"stop": {"warmup": 2, "keep": 1.5}}},
            "share in",
            "agents.draft.drafting.stop.keep",
        ),
        (
            {"agents.draft.drafting": {"stop": {"warmup": 6}}},
            "warm-up drafts leave none",
            "agents.draft.drafting.stop.warmup",
        ),
        (
            {"agents.draft.drafting": {"consensus": {"min_drafts": 9}}},
            "needs 9 drafts",
            "agents.draft.drafting.consensus.min_drafts",
        ),
        ({"agents.draft.drafting": {"wave": 0}}, "at least 1", "agents.draft.drafting.wave"),
        ({"budget": 10}, "smaller than one draft", "budget"),
    ],
)
def test_topology_file_errors_name_the_key(
    tmp_path: Path, changes: dict[str, Any], message: str, path: str
) -> None:
    """Each bad confidence setting in a topology file is a ConfigError at its key path."""
    with pytest.raises(ConfigError, match=message) as info:
        load(_file(tmp_path, **changes))
    assert info.value.path == path


async def test_saved_tokens_reach_the_served_usage() -> None:
    """The OpenAI usage object of a run carries the saved tokens, in all and per layer."""
    engine = _by_index("su")
    drafts = Drafts(
        Proposer(engine, sampling=SamplingParams(n=4, seed=0)), stop=OnlineStop(threshold=2.0, window=2)
    )
    body = usage_body(await Topology([drafts], Vote()).run("q"))
    assert body["aftlib_saved_tokens"] == 2 * (WORDS - 2)
    assert [layer["saved_tokens"] for layer in body["aftlib_layers"]] == [2 * (WORDS - 2), 0]


async def test_run_summary_reports_saved_tokens_and_traces_carry_confidence(tmp_path: Path) -> None:
    """OUT.summary.json has tokens.saved (0 without early stops); traces record drafts' confidences."""
    prompts = tmp_path / "in.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(3)))
    engine = _by_index("su")
    stopped = Drafts(
        Proposer(engine, sampling=SamplingParams(n=4, seed=0)), stop=OnlineStop(threshold=2.0, window=2)
    )
    summary = await Runner(Topology([stopped], Vote()), prompts, tmp_path / "out.jsonl", trace=True).run()
    written = json.loads(summary_path(tmp_path / "out.jsonl").read_text())
    assert written["tokens"] == {"saved": 3 * 2 * (WORDS - 2)} == {"saved": summary.usage.saved_tokens}
    record = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    assert record["usage"]["saved_tokens"] == 2 * (WORDS - 2)
    draft = record["trace"][0]["layers"][0][0]
    assert draft["confidence"]["mean"] == pytest.approx(SURE_CONFIDENCE)
    plain = Topology([Proposer(engine, sampling=SamplingParams(n=2))], Vote())
    await Runner(plain, prompts, tmp_path / "plain.jsonl").run()
    assert json.loads(summary_path(tmp_path / "plain.jsonl").read_text())["tokens"] == {"saved": 0}


async def test_sweeps_compare_confidence_strategies_and_name_bad_settings(tmp_path: Path) -> None:
    """A sweep's variants switch drafting and vote weighting; bad settings are named by key path.

    Every good cell runs and adaptive sampling's saved tokens reach the table; a bad weight fails its cell
    at its key path, and a variant naming no key is refused at load with its key path.
    """
    from aftlib.evaluate import Sweep

    _file(tmp_path, **{"agents.draft.drafting": {}, "agents.draft.sampling": {"n": 6, "seed": 0}})
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": i, "prompt": f"q{i}"}) + "\n" for i in range(4))
    )
    (tmp_path / "gold.jsonl").write_text(
        "".join(json.dumps({"id": i, "answer": "7"}) + "\n" for i in range(4))
    )
    variants = {
        "vote": {"final": "vote"},
        "weighted": {"agents.vote.weight": "confidence"},
        "adaptive": {"agents.draft.drafting": {"wave": 1, "consensus": {"agreement": 0.6, "min_drafts": 3}}},
        "bad": {"agents.vote.weight": "loud"},
    }
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "base": "topology.yaml",
                "variants": variants,
                "prompts": "prompts.jsonl",
                "judge": {"type": "math", "references": "gold.jsonl"},
            }
        )
    )
    engine = _by_index("suu")
    sweep = Sweep.load(sweep_file, engine_hook=lambda key, build: engine)
    report = await sweep.run(tmp_path / "out")
    by_name = {r.cell.values["variant"]: r for r in report.results}
    assert [by_name[v].status for v in ("vote", "weighted", "adaptive")] == ["done"] * 3
    assert by_name["bad"].status == "failed"
    assert "agents.vote.weight" in (by_name["bad"].error or "")
    assert by_name["vote"].saved_tokens_per_record == 0
    assert (by_name["adaptive"].saved_tokens_per_record or 0) > 0
    assert (by_name["vote"].value, by_name["weighted"].value) == (0.0, 1.0)  # two sure 7s outweigh four 9s
    assert "saved/record" in (tmp_path / "out" / "results.md").read_text()
    variants["bad"] = {"agents.draft.drafting.stopp": {"warmup": 2}}
    sweep_file.write_text(yaml.safe_dump({**yaml.safe_load(sweep_file.read_text()), "variants": variants}))
    with pytest.raises(ConfigError, match="unknown key 'stopp'") as info:
        Sweep.load(sweep_file)
    assert info.value.path == "variants.bad.agents.draft.drafting.stopp"


async def test_drafts_served_from_a_cache_count_as_drafted(tmp_path: Path) -> None:
    """Seeded drafts replayed by a CachingEngine agree and fill a budget as the generated ones did.

    The saved tokens and the drafts the budget admits are the same on the second run, all reused.
    """
    from aftlib.engines import CachingEngine

    engine = CachingEngine(_by_index("s"), tmp_path / "cache")
    proposer = Proposer(engine, sampling=SamplingParams(n=8, max_tokens=20, seed=0))
    adaptive = Drafts(proposer, consensus=Consensus(agreement=1.0, min_drafts=2), wave=1)
    runs = []
    for _ in range(2):
        async with engine:
            runs.append((await Topology([adaptive], Vote()).run("q")).usage)
            runs.append((await Topology([proposer], Vote(), budget=45).run("q")).usage)
    (first_adaptive, first_budget, adaptive_again, budget_again) = runs
    assert first_adaptive.saved_tokens == adaptive_again.saved_tokens == 6 * WORDS
    assert adaptive_again.completion_tokens == 0
    assert adaptive_again.reused_tokens == 2 * WORDS
    assert first_budget.requests == budget_again.requests == 3
    assert budget_again.reused_tokens == 3 * WORDS


async def test_a_budget_shared_by_two_proposers_goes_on_with_the_drafts_that_fit() -> None:
    """Two proposers share one run's budget of one draft: one draft is drawn, the other agent gives none.

    The layer goes on with the one draft: an agent left no budget is not a failure.
    """
    engine = _by_index("s")
    one, two = (Proposer(engine, sampling=SamplingParams(n=4, max_tokens=20), name=n) for n in ("a", "b"))
    result = await Topology([[one, two]], Vote(), budget=20).run("q")
    assert len(result.layers[0].candidates) == 1
    assert result.layers[0].failures == ()
    assert len(engine.requests) == 1
    assert result.answer.details["answer"] == "7"
