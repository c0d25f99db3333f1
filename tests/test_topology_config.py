"""Topology config files: named engines, agents and layers, with errors that name the key path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aftlib import Aggregator, ConfigError, Proposer, SequentialAggregator, config
from aftlib.engines import OpenAIEngine, VLLMEngine
from aftlib.testing import FakeEngine

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"

pytestmark = pytest.mark.anyio

TOPOLOGY = {
    "engines": {
        "a": {"type": "fake"},
        "b": {"type": "fake", "latency": 0.0},
        "api": {"type": "openai", "model": "m", "base_url": ["http://x.test/v1", "http://y.test/v1"]},
    },
    "agents": {
        "p1": {"engine": "a", "template": "passthrough", "sampling": {"n": 2, "temperature": 0.5}},
        "p2": {"engine": "b"},
        "agg": {"role": "aggregator", "engine": "a", "template": "moa_aggregate", "shuffle": 1},
        "seq": {"role": "sequential_aggregator", "engine": "b", "window": 3},
    },
    "layers": [["p1", "p2"], ["agg"]],
    "final": "seq",
}


def test_topology_file_builds_agents_and_shared_engines() -> None:
    """Agents get their engine, role, template and sampling; agents naming one engine share it."""
    topology = config.parse(TOPOLOGY)
    (p1, p2), (agg,) = (layer.agents for layer in topology.layers)
    assert isinstance(p1, Proposer)
    assert isinstance(agg, Aggregator)
    assert isinstance(topology.final, SequentialAggregator)
    assert topology.final.window == 3
    assert (p1.sampling.n, p1.sampling.temperature, p1.template.name) == (2, 0.5, "passthrough")
    assert p2.template.name == "aft_propose"
    assert p1.engine is agg.engine
    assert isinstance(p1.engine, FakeEngine)
    assert [e.name for e in topology.engines] == ["a", "b"], "the unused engine is not started"


async def test_a_fake_topology_runs() -> None:
    """A topology file on fake engines runs end to end."""
    async with config.parse(TOPOLOGY) as topology:
        result = await topology.run("q")
    assert len(result.layers[0].candidates) == 3


def broken(path: tuple[str, ...], value: object) -> dict[str, object]:
    data = json.loads(json.dumps(TOPOLOGY))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "where", "message"),
    [
        (("agents", "p2", "engine"), "nope", "agents.p2.engine", "unknown engine 'nope'; defined: a, b, api"),
        (("layers",), [["p1"], []], "layers[1]", "a layer with no agents"),
        (("layers",), [["p1", "ghost"]], "layers[0][1]", "unknown agent 'ghost'"),
        (("final",), "ghost", "final", "unknown agent 'ghost'"),
        (("agents", "p1", "role"), "critic", "agents.p1.role", "unknown role 'critic'"),
        (("agents", "p1", "sampling", "n"), 0, "agents.p1.sampling.n", "at least 1"),
        (("agents", "p1", "sampling", "top_k"), 5, "agents.p1.sampling", "top_k"),
        (("engines", "a", "type"), "tgi", "engines.a.type", "unknown engine type 'tgi'"),
        (("engines", "api", "base_url"), KeyError, "engines.api.base_url", "needs 'base_url'"),
        (
            ("engines", "api", "api_kee"),
            "X",
            "engines.api.api_kee",
            "unknown key for an engine of type openai",
        ),
        (("layers",), [["agg"]], "layers", "aggregator in the first layer"),
        (("agents", "p1", "template"), "nope", "agents.p1.template", "template 'nope' is not a built-in"),
        (("agents", "seq", "window"), 0, "agents.seq", "window must be at least 2"),
        (("agents", "seq", "window"), KeyError, "agents.seq.window", "only with, role sequential_aggregator"),
        (("agents", "p1", "shuffle"), 3, "agents.p1.shuffle", "a proposer reads no references"),
    ],
)
def test_errors_name_the_key_path(path: tuple[str, ...], value: object, where: str, message: str) -> None:
    """Undefined names, empty layers, unknown keys and bad values: ConfigError with the key path."""
    with pytest.raises(ConfigError, match=message) as info:
        config.parse(broken(path, value), source="topology.yaml")
    assert info.value.path is not None
    assert info.value.path.startswith(where)
    assert str(info.value).startswith("topology.yaml: ")


def test_an_adapter_the_engine_cannot_serve_names_the_lora_key() -> None:
    """LoRA on an engine that serves no adapters fails while the config is read, at agents.NAME.lora."""
    data = broken(("agents", "p1", "engine"), "api")
    data["agents"]["p1"]["lora"] = "style"  # type: ignore[index]
    with pytest.raises(ConfigError, match="engine 'api' serves no LoRA adapters") as info:
        config.parse(data)
    assert info.value.path == "agents.p1.lora"


def test_explicit_gpu_shares_are_respected() -> None:
    """Several vLLM engines: what none claims explicitly (of 0.9) is split among the others."""
    engines = {
        "a": {"type": "vllm", "model": "x", "gpu_memory_utilization": 0.5},
        "b": {"type": "vllm", "model": "y"},
        "c": {"type": "vllm", "model": "z"},
    }
    agents = {n: {"engine": n} for n in engines} | {"f": {"role": "aggregator", "engine": "a"}}
    topology = config.parse({"engines": engines, "agents": agents, "layers": [["a", "b", "c"]], "final": "f"})
    shares = [e.engine_args["gpu_memory_utilization"] for e in topology.engines]  # type: ignore[attr-defined]
    assert shares == [0.5, 0.2, 0.2]
    engines["a"]["gpu_memory_utilization"] = 0.88
    with pytest.raises(ConfigError, match="leaving too little"):
        config.parse({"engines": engines, "agents": agents, "layers": [["a", "b", "c"]], "final": "f"})


def test_example_configs_load() -> None:
    """Every config in examples/configs builds (engines are not started)."""
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 5
    for file in files:
        topology = config.load(file)
        assert topology.generations_per_query >= 2, file.name
    moa = config.load(EXAMPLES / "moa.yaml")
    kinds = {type(e) for e in moa.engines}
    assert kinds == {VLLMEngine, OpenAIEngine}
    shares = [e.engine_args["gpu_memory_utilization"] for e in moa.engines if isinstance(e, VLLMEngine)]
    assert shares == [0.45, 0.45], "two vLLM engines split the GPU explicitly"


def test_cli_dry_run_on_a_fake_topology(tmp_path: Path) -> None:
    """`aftlib run` with a fake-engine topology file runs a dataset without any model."""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(5)))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aftlib",
            "run",
            "--config",
            EXAMPLES / "dry_run.yaml",
            "--input",
            source,
            "--output",
            out,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [1, 2, 3, 4, 5]
    assert "5 done" in done.stderr


def test_a_layer_mapping_sets_quorum_and_deadline_and_retry_wraps_the_engine() -> None:
    """A layer written as a mapping carries min_candidates and deadline; an engine's retry key wraps it."""
    from aftlib.engines import RetryingEngine

    data = {
        "engines": {"f": {"type": "fake", "retry": {"attempts": 3, "timeout": 5}}},
        "agents": {"a": {"engine": "f"}, "b": {"engine": "f"}, "j": {"engine": "f", "role": "aggregator"}},
        "layers": [{"agents": ["a", "b"], "min_candidates": 1, "deadline": 2.5}, ["j"]],
        "final": "j",
    }
    topology = config.parse(data)
    first, second = topology.layers
    assert (first.min_candidates, first.deadline) == (1, 2.5)
    assert (second.min_candidates, second.deadline) == (None, None)
    engine = topology.final.engine
    assert isinstance(engine, RetryingEngine)
    assert (engine.attempts, engine.timeout, engine.backoff) == (3, 5.0, 0.5)
    assert isinstance(engine.inner, FakeEngine)


@pytest.mark.parametrize(
    ("layers", "engine", "path", "message"),
    [
        ([{"agents": ["a"], "min_candidates": 3}], {}, "layers[0].min_candidates", "between 1 and the 1"),
        ([{"agents": ["a"], "quorum": 3}], {}, "layers[0]", "quorum"),
        ([{"agents": ["zz"]}], {}, "layers[0].agents[0]", "unknown agent 'zz'"),
        ([{"agents": ["a"], "deadline": "soon"}], {}, "layers[0].deadline", "expected float"),
        ([["a"]], {"retry": {"attempt": 3}}, "engines.f.retry", "attempt"),
    ],
)
def test_layer_and_retry_mistakes_name_the_key(
    layers: list[object], engine: dict[str, object], path: str, message: str
) -> None:
    """Bad quorum, deadline and retry settings are ConfigErrors naming the file and key path."""
    data = {
        "engines": {"f": {"type": "fake", **engine}},
        "agents": {"a": {"engine": "f"}, "j": {"engine": "f", "role": "aggregator"}},
        "layers": layers,
        "final": "j",
    }
    with pytest.raises(ConfigError, match=message) as info:
        config.parse(data, source="mix.yaml")
    assert (info.value.path, info.value.source) == (path, "mix.yaml")


def test_user_templates_come_only_from_the_template_directories(tmp_path: Path) -> None:
    """A config's template is a built-in or a .j2 file inside template_dirs; other paths are refused.

    So a config file cannot pull other files into prompts.
    """
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "mine.j2").write_text("Be brief.")
    (tmp_path / "outside.j2").write_text("{{ 'read me' }}")
    (tmp_path / "notes.txt").write_text("private")

    def write(template: str, dirs: list[str] | None) -> Path:
        data: dict[str, object] = {
            "engines": {"f": {"type": "fake"}},
            "agents": {
                "a": {"engine": "f", "template": template},
                "j": {"engine": "f", "role": "aggregator"},
            },
            "layers": [["a"]],
            "final": "j",
        }
        if dirs is not None:
            data["template_dirs"] = dirs
        path = tmp_path / "mix.yaml"
        path.write_text(json.dumps(data))
        return path

    agent = config.load(write("mine", ["prompts"])).layers[0].agents[0]
    assert agent.template.render(system=None, references=[]) == "Be brief."
    assert config.load(write("prompts/mine.j2", None)).layers[0].agents[0].template.name.endswith("mine.j2")
    for refused, dirs in [
        ("../outside.j2", ["prompts"]),
        (str(tmp_path / "outside.j2"), ["prompts"]),
        ("notes.txt", None),
        ("/etc/passwd", None),
    ]:
        with pytest.raises(ConfigError, match="not a built-in template") as info:
            config.load(write(refused, dirs))
        assert info.value.path == "agents.a.template"
