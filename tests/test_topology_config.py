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
            "unknown key 'api_kee'; did you mean 'api_key_env'",
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


def test_config_passes_only_the_gpu_shares_the_user_wrote() -> None:
    """Several vLLM engines: config adds no gpu_memory_utilization (the engine pool splits the GPU).

    An engine that sets a share keeps it unchanged; the others get none from config, so the Python API
    and YAML build the same engines.
    """
    engines = {
        "a": {"type": "vllm", "model": "x", "gpu_memory_utilization": 0.5},
        "b": {"type": "vllm", "model": "y"},
        "c": {"type": "vllm", "model": "z", "max_model_len": 512},
    }
    agents = {n: {"engine": n} for n in engines} | {"f": {"role": "aggregator", "engine": "a"}}
    topology = config.parse({"engines": engines, "agents": agents, "layers": [["a", "b", "c"]], "final": "f"})
    args = [e.engine_args for e in topology.engines]  # type: ignore[attr-defined]
    assert args == [{"gpu_memory_utilization": 0.5}, {}, {"max_model_len": 512}]


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
    args = [e.engine_args for e in moa.engines if isinstance(e, VLLMEngine)]
    assert args == [{"max_model_len": 16384}] * 2, "config adds no GPU share: the engine pool splits the GPU"


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


def test_a_layer_mapping_sets_quorum_and_timeout_and_retry_wraps_the_engine() -> None:
    """A layer written as a mapping carries min_candidates and timeout; an engine's retry key wraps it."""
    from aftlib.engines import RetryingEngine

    data = {
        "engines": {"f": {"type": "fake", "retry": {"attempts": 3, "timeout": 5}}},
        "agents": {"a": {"engine": "f"}, "b": {"engine": "f"}, "j": {"engine": "f", "role": "aggregator"}},
        "layers": [{"agents": ["a", "b"], "min_candidates": 1, "timeout": 2.5}, ["j"]],
        "final": "j",
    }
    topology = config.parse(data)
    first, second = topology.layers
    assert (first.min_candidates, first.timeout) == (1, 2.5)
    assert (second.min_candidates, second.timeout) == (None, None)
    engine = topology.final.engine
    assert isinstance(engine, RetryingEngine)
    assert (engine.attempts, engine.timeout, engine.backoff) == (3, 5.0, 0.5)
    assert isinstance(engine.inner, FakeEngine)


@pytest.mark.parametrize(
    ("layers", "engine", "path", "message"),
    [
        ([{"agents": ["a"], "min_candidates": 3}], {}, "layers[0].min_candidates", "between 1 and the 1"),
        ([{"agents": ["a"], "quorum": 3}], {}, "layers[0].quorum", "quorum"),
        ([{"agents": ["zz"]}], {}, "layers[0].agents[0]", "unknown agent 'zz'"),
        ([{"agents": ["a"], "timeout": "soon"}], {}, "layers[0].timeout", "expected float"),
        ([["a"]], {"retry": {"attempt": 3}}, "engines.f.retry.attempt", "attempt"),
    ],
)
def test_layer_and_retry_mistakes_name_the_key(
    layers: list[object], engine: dict[str, object], path: str, message: str
) -> None:
    """Bad quorum, timeout and retry settings are ConfigErrors naming the file and key path."""
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


def fake_topology(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "engines": {"f": {"type": "fake"}},
        "agents": {"a": {"engine": "f"}, "j": {"engine": "f", "role": "aggregator"}},
        "layers": [["a"]],
        "final": "j",
    }
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("data", "path", "suggestion"),
    [
        ({("engins" if k == "engines" else k): v for k, v in TOPOLOGY.items()}, "engins", "engines"),
        (broken(("engines", "a", "latncy"), 1), "engines.a.latncy", "latency"),
        (broken(("engines", "api", "max_in_flite"), 4), "engines.api.max_in_flite", "max_in_flight"),
        (broken(("agents", "p2", "templat"), "passthrough"), "agents.p2.templat", "template"),
        (
            broken(("agents", "p1", "sampling", "temprature"), 1),
            "agents.p1.sampling.temprature",
            "temperature",
        ),
        (fake_topology(layers=[{"agents": ["a"], "deadline": 3}]), "layers[0].deadline", "timeout"),
        (
            fake_topology(engines={"f": {"type": "fake", "retry": {"atempts": 2}}}),
            "engines.f.retry.atempts",
            "attempts",
        ),
        (
            fake_topology(engines={"f": {"type": "vllm", "model": "m", "retri": {}}}),
            "engines.f.retri",
            "retry",
        ),
        (fake_topology(engines={"f": {"type": "vlm", "model": "m"}}), "engines.f.type", "vllm"),
    ],
)
def test_a_misspelt_key_at_any_level_names_its_path_and_the_closest_key(
    data: dict[str, object], path: str, suggestion: str
) -> None:
    """A misspelt key (top level, engine, retry, agent, sampling, layer) is named with its path and a hint.

    The message says the path in words and suggests the closest known key; ``deadline`` points to
    ``timeout``, its name since layers take a duration.
    """
    with pytest.raises(ConfigError) as info:
        config.parse(data, source="topo.yaml")
    assert info.value.path == path
    assert f"did you mean {suggestion!r}?" in info.value.message
    assert "@ $" not in str(info.value)
    assert str(info.value).startswith(f"topo.yaml: {path}: ")


def test_a_misspelt_top_level_key_says_which_keys_are_known() -> None:
    """The top-level message names the key, the closest known one and all the known keys."""
    data = {("engins" if k == "engines" else k): v for k, v in TOPOLOGY.items()}
    with pytest.raises(ConfigError) as info:
        config.parse(data, source="topo.yaml")
    assert str(info.value) == (
        "topo.yaml: engins: unknown key 'engins'; did you mean 'engines'? "
        "known keys: engines, agents, layers, final, template_dirs, early_exit, budget"
    )


def test_a_list_of_base_urls_builds_replicas_named_by_index() -> None:
    """An openai engine with a list of base URLs is Replicas of one OpenAIEngine per URL, NAME[i]."""
    from aftlib.engines import Replicas

    topology = config.parse(broken(("agents", "p2", "engine"), "api"))
    engine = topology.layers[0].agents[1].engine
    assert isinstance(engine, Replicas)
    assert engine.name == "api"
    assert [(r.name, type(r)) for r in engine.replicas] == [
        ("api[0]", OpenAIEngine),
        ("api[1]", OpenAIEngine),
    ]
    assert [r.base_url for r in engine.replicas] == ["http://x.test/v1", "http://y.test/v1"]  # type: ignore[attr-defined]


def test_one_base_url_builds_one_openai_engine_with_its_settings() -> None:
    """A single base URL is one OpenAIEngine; model, key variable, timeout and supports_n reach it."""
    spec = {
        "type": "openai",
        "model": "m",
        "base_url": "http://x.test/v1",
        "api_key_env": "KEY",
        "timeout": 9,
        "supports_n": False,
    }
    topology = config.parse(fake_topology(engines={"f": spec}))
    engine = topology.final.engine
    assert isinstance(engine, OpenAIEngine)
    assert (engine.name, engine.model, engine.api_key_env, engine.timeout) == ("f", "m", "KEY", 9.0)
    assert engine.supports_n is False


def test_max_in_flight_limits_the_engine_inside_its_retries() -> None:
    """max_in_flight wraps the engine in LimitedEngine; retry wraps that, so each retry waits its turn."""
    from aftlib.engines import LimitedEngine, RetryingEngine

    spec = {"type": "fake", "latency": 0.01, "max_in_flight": 2, "retry": {"attempts": 2}}
    engine = config.parse(fake_topology(engines={"f": spec})).final.engine
    assert isinstance(engine, RetryingEngine)
    assert engine.attempts == 2
    assert isinstance(engine.inner, LimitedEngine)
    assert engine.inner.max_in_flight == 2
    assert isinstance(engine.inner.inner, FakeEngine)
    assert engine.inner.inner.latency == 0.01
    alone = config.parse(fake_topology(engines={"f": {"type": "fake", "max_in_flight": 1}})).final.engine
    assert isinstance(alone, LimitedEngine)
    assert alone.name == "f"


async def test_max_in_flight_from_a_file_holds_requests_back() -> None:
    """With max_in_flight: 1, a layer of three agents on one fake engine sends one request at a time."""
    spec = {"type": "fake", "latency": 0.01, "max_in_flight": 1}
    data = fake_topology(
        engines={"f": spec},
        agents={n: {"engine": "f"} for n in ("a", "b", "c")} | {"j": {"engine": "f", "role": "aggregator"}},
        layers=[["a", "b", "c"]],
    )
    async with config.parse(data) as topology:
        await topology.run("q")
    fake = topology.final.engine.inner  # type: ignore[attr-defined]
    assert isinstance(fake, FakeEngine)
    assert (len(fake.requests), fake.peak_in_flight) == (4, 1)


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"type": "fake", "latency": "slow"}, "engines.f.latency", "expected float, got str 'slow'"),
        ({"type": "fake", "context_window": 0}, "engines.f.context_window", "must be >= 1"),
        ({"type": "fake", "max_in_flight": 0}, "engines.f.max_in_flight", "must be >= 1"),
        ({"type": "fake", "max_in_flight": True}, "engines.f.max_in_flight", "expected int, got bool"),
        ({"type": "fake", "retry": {"attempts": "3"}}, "engines.f.retry.attempts", "expected int, got str"),
        ({"type": "fake", "retry": 3}, "engines.f.retry", "expected a mapping"),
        ({"type": "openai", "model": "m", "base_url": []}, "engines.f.base_url", "non-empty list of URLs"),
        ({"type": "openai", "model": "m", "base_url": ["u", 3]}, "engines.f.base_url[1]", "expected str"),
        (
            {"type": "openai", "model": "m", "base_url": "u", "supports_n": "no"},
            "engines.f.supports_n",
            "bool",
        ),
        ({"type": "openai", "base_url": "u"}, "engines.f.model", "an openai engine needs 'model'"),
        ({"type": "vllm"}, "engines.f.model", "a vllm engine needs 'model'"),
        ({"type": "vllm", "model": 3}, "engines.f.model", "expected str, got int 3"),
        (
            {"type": "vllm", "model": "m", "lora_adapters": ["a"]},
            "engines.f.lora_adapters",
            "expected a mapping",
        ),
        ({"type": "vllm", "model": "m", "name": "x"}, "engines.f.name", "its key under 'engines'"),
        ({"model": "m"}, "engines.f.type", "needs a 'type'"),
        ("fake", "engines.f", "an engine is a mapping"),
    ],
)
def test_engine_spec_errors_name_the_engine_and_key(spec: object, path: str, message: str) -> None:
    """Each engine type's keys are typed: a wrong value or a missing key names engines.NAME.KEY."""
    with pytest.raises(ConfigError) as info:
        config.parse(fake_topology(engines={"f": spec}), source="topo.yaml")
    assert (info.value.path, info.value.source) == (path, "topo.yaml")
    assert message in info.value.message


def test_vllm_engine_keys_of_its_own_are_typed_and_the_rest_reach_vllm() -> None:
    """A vllm entry's own keys build the engine; every other key is passed to vLLM as an engine argument."""
    spec = {
        "type": "vllm",
        "model": "/models/m",
        "lora_adapters": {"style": "/adapters/style"},
        "max_model_len": 2048,
        "enforce_eager": True,
    }
    engine = config.parse(fake_topology(engines={"f": spec})).final.engine
    assert isinstance(engine, VLLMEngine)
    assert (engine.name, engine.model, engine.lora_adapters) == (
        "f",
        "/models/m",
        {"style": "/adapters/style"},
    )
    assert engine.engine_args == {
        "max_model_len": 2048,
        "enforce_eager": True,
        "enable_lora": True,
        "max_loras": 1,
    }
    assert config.VLLMEngineSpec("/models/m", engine_args={"dtype": "half"}).engine_args == {"dtype": "half"}


def test_an_agents_sampling_is_sampling_params_with_its_defaults() -> None:
    """An agent's sampling mapping becomes aftlib.SamplingParams; keys left out keep its defaults."""
    from aftlib import SamplingParams

    topology = config.parse(
        fake_topology(
            agents={
                "a": {"engine": "f", "sampling": {"max_tokens": 7, "stop": "END"}},
                "j": {"engine": "f", "role": "aggregator"},
            }
        )
    )
    assert topology.layers[0].agents[0].sampling == SamplingParams(max_tokens=7, stop=("END",))
    assert topology.final.sampling == SamplingParams()
