"""Topology files with votes, selections, best-of-n, reference subsets and early exit, and their errors."""

from __future__ import annotations

from typing import Any

import pytest

from aftlib import Aggregator, BestOfN, ConfigError, Select, Subset, Vote, config

pytestmark = pytest.mark.anyio


def mixed() -> dict[str, Any]:
    """Drafts from two engines, an RSA step over subsets of 3, then a vote; early exit on agreement."""
    return {
        "engines": {"a": {"type": "fake"}, "b": {"type": "fake"}},
        "agents": {
            "draft_a": {"engine": "a", "template": "passthrough", "sampling": {"n": 3}},
            "draft_b": {"engine": "b", "template": "passthrough", "sampling": {"n": 2}},
            "rsa": {
                "type": "aggregator",
                "engine": "a",
                "template": "rsa_aggregate",
                "sampling": {"n": 4},
                "references": {"subset": 3, "seed": 5},
            },
            "pick": {"type": "vote", "extractor": {"strategies": ["####", "last_number"]}},
        },
        "layers": [["draft_a", "draft_b"], ["rsa"]],
        "final": "pick",
        "early_exit": {"min_agreement": 0.8},
    }


async def test_a_file_with_an_rsa_step_and_a_vote_builds_and_runs() -> None:
    """The file builds a Subset aggregator and a Vote; the run reads 3 references per sample."""
    topology = config.parse(mixed())
    (rsa,) = topology.layers[1].agents
    assert isinstance(rsa, Aggregator)
    assert rsa.references == Subset(3, seed=5)
    assert isinstance(topology.final, Vote)
    assert topology.final.extractor.strategies == ("####", "last_number")
    assert topology.early_exit is not None
    assert topology.early_exit.min_agreement == 0.8
    data = mixed()
    del data["early_exit"]
    result = await config.parse(data).run("What is 2 + 2?")
    assert [len(c.read or ()) for c in result.layers[1].candidates] == [3, 3, 3, 3]
    assert result.answer.agent == "pick"
    assert sum(result.answer.details["votes"].values()) + result.answer.details["no_answer"] == 4


def test_select_and_best_of_n_from_a_file() -> None:
    """type: select and type: best_of_n build the selection agents with their settings."""
    data = mixed()
    data["agents"]["pick"] = {"type": "select", "engine": "b", "template": "genselect"}
    assert isinstance(config.parse(data).final, Select)
    data["agents"]["pick"] = {"type": "best_of_n", "engine": "b", "min_scores": 2}
    final = config.parse(data).final
    assert isinstance(final, BestOfN)
    assert final.min_scores == 2


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (("rsa", "references", {"subset": 9}), "layers[1].references.subset", "gives 5 candidates"),
        (
            ("pick", "extractor", {"strategies": ["regex"], "pattern": "(open"}),
            "agents.pick.extractor",
            "not a valid regular expression",
        ),
        (("pick", "type", "voet"), "agents.pick.type", "did you mean 'vote'"),
        (("pick", "engine", "a"), "agents.pick.engine", "a vote asks no model"),
        (("draft_a", "references", {"subset": 2}), "agents.draft_a.references", "for aggregators"),
        (("draft_a", "min_scores", 2), "agents.draft_a.min_scores", "best_of_n"),
        (("pick", "on_no_answer", "maybe"), "agents.pick.on_no_answer", "'error' or 'first'"),
        (("rsa", "references", {"subset": 0}), "agents.rsa.references.subset", "at least 1"),
        (("rsa", "references", {"subset": 2, "drop": 1.5}), "agents.rsa.references.drop", r"\[0, 1\)"),
    ],
)
def test_strategy_mistakes_name_the_key(change: tuple[str, str, Any], where: str, message: str) -> None:
    """Each mistake is a ConfigError whose path names the key in the file."""
    data = mixed()
    agent, key, value = change
    data["agents"][agent][key] = value
    with pytest.raises(ConfigError, match=message) as info:
        config.parse(data, source="mix.yaml")
    assert info.value.path is not None
    assert info.value.path.startswith(where), info.value.path
    assert info.value.source == "mix.yaml"


def test_early_exit_mistakes_name_the_key() -> None:
    """A share out of range and an unknown key in early_exit name their key paths."""
    data = mixed()
    data["early_exit"] = {"min_agreement": 1.5}
    with pytest.raises(ConfigError, match=r"\(0, 1\]") as info:
        config.parse(data)
    assert info.value.path == "early_exit.min_agreement"
    data["early_exit"] = {"min_agrement": 0.5}
    with pytest.raises(ConfigError, match="did you mean 'min_agreement'") as info:
        config.parse(data)
    assert info.value.path == "early_exit.min_agrement"
