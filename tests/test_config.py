"""aftlib.config reads the AFT reference YAML unchanged and names bad keys precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from aftlib import Aggregator, ConfigError, Proposer, config
from aftlib.engines import VLLMEngine

REFERENCE_YAML = """\
model_name: /models/llama-aft # path to AFT model
generation_params:
    temperature: 0.7
    top_p: 0.95
    max_tokens: 4096
    n: 5
    final_layer_temperature: 0.7
    final_layer_top_p: 1.0
vllm_seed: 2025
num_aggregation: 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_reference_yaml_builds_the_aft_topology(tmp_path: Path) -> None:
    """The reference file gives proposer(n=5) -> aggregator(n=5) -> final(n=1) on one VLLMEngine."""
    topology = config.load(write(tmp_path, REFERENCE_YAML))
    (engine,) = topology.engines
    assert isinstance(engine, VLLMEngine)
    assert engine.model == "/models/llama-aft"
    assert engine.engine_args == {"seed": 2025}
    proposer, aggregator = (layer.agents[0] for layer in topology.layers)
    assert isinstance(proposer, Proposer)
    assert isinstance(aggregator, Aggregator)
    assert (proposer.sampling.n, proposer.sampling.temperature, proposer.sampling.top_p) == (5, 0.7, 0.95)
    assert (topology.final.sampling.n, topology.final.sampling.top_p) == (1, 1.0)
    assert topology.generations_per_query == 11


def test_engine_args_pass_through(tmp_path: Path) -> None:
    """engine_args (our one addition) reach vLLM unchanged; an explicit seed wins over vllm_seed."""
    text = REFERENCE_YAML + "engine_args:\n  max_model_len: 1024\n  seed: 1\n"
    (engine,) = config.load(write(tmp_path, text)).engines
    assert isinstance(engine, VLLMEngine)
    assert engine.engine_args == {"max_model_len": 1024, "seed": 1}


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        (("    n: 5\n", "    n: 5\n    beam: 3\n"), "generation_params", "beam"),
        (("    n: 5\n", ""), "generation_params.n", "required field missing"),
        (("    n: 5\n", "    n: five\n"), "generation_params.n", "expected int"),
        (("    n: 5\n", "    n: 2.5\n"), "generation_params.n", "expected int"),
        (("    n: 5\n", "    n: 0\n"), "generation_params.n", "at least 1"),
        (("    top_p: 0.95\n", "    top_p: 2\n"), "generation_params.top_p", "top_p must be in"),
        (("num_aggregation: 2\n", "num_aggregation: 0\n"), "num_aggregation", ">= 1"),
        (("num_aggregation: 2\n", ""), "num_aggregation", "required field missing"),
        (("vllm_seed: 2025\n", "vllm_seed: [1]\n"), "vllm_seed", "int"),
        (("model_name: /models/llama-aft # path to AFT model\n", ""), "model_name", "missing key"),
    ],
)
def test_bad_keys_name_the_file_and_key_path(
    tmp_path: Path, change: tuple[str, str], path: str, message: str
) -> None:
    """Unknown, missing and ill-typed keys raise ConfigError with the file and the key path."""
    source = write(tmp_path, REFERENCE_YAML.replace(*change))
    with pytest.raises(ConfigError, match=message) as info:
        config.load(source)
    assert info.value.path is not None
    assert info.value.path.startswith(path)
    assert str(source) in str(info.value)
    assert "Traceback" not in str(info.value)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    """A YAML syntax error is a ConfigError pointing at the file and line."""
    source = write(tmp_path, "model_name: x\ngeneration_params: [\n")
    with pytest.raises(ConfigError, match=rf"{source.name}:\d+: not valid YAML"):
        config.load(source)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    """A missing file and a config that is not a mapping are ConfigErrors."""
    with pytest.raises(ConfigError, match="cannot read the config"):
        config.load(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="a config is a mapping"):
        config.load(write(tmp_path, "- 1\n- 2\n"))


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    """Python object tags are refused, never constructed."""
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(write(tmp_path, "model_name: !!python/object/apply:os.system ['true']\n"))


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (
            ("    final_layer_top_p: 1.0\n", "    final_layer_top_p: 2\n"),
            "generation_params.final_layer_top_p",
        ),
        (
            ("    final_layer_temperature: 0.7\n", "    final_layer_temperature: -1\n"),
            "generation_params.final_layer_temperature",
        ),
        (("    max_tokens: 4096\n", "    max_tokens: 0\n"), "generation_params.max_tokens"),
    ],
)
def test_final_layer_values_are_named_by_their_own_key(
    tmp_path: Path, change: tuple[str, str], path: str
) -> None:
    """A bad final-layer value is reported under its final_layer_* key, not the proposal key."""
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, REFERENCE_YAML.replace(*change)))
    assert info.value.path == path


@pytest.mark.parametrize(
    ("change", "path", "suggestion"),
    [
        (("num_aggregation: 2\n", "num_aggregations: 2\n"), "num_aggregations", "num_aggregation"),
        (("generation_params:\n", "generation_param:\n"), "generation_param", "generation_params"),
        (("    top_p: 0.95\n", "    top_pp: 0.95\n"), "generation_params.top_pp", "top_p"),
    ],
)
def test_a_misspelt_key_suggests_the_closest_one(
    tmp_path: Path, change: tuple[str, str], path: str, suggestion: str
) -> None:
    """A misspelt key is named by its path in words with the closest known key (never '@ $.key')."""
    source = write(tmp_path, REFERENCE_YAML.replace(*change))
    with pytest.raises(ConfigError) as info:
        config.load(source)
    assert info.value.path == path
    assert f"unknown key {path.rpartition('.')[2]!r}; did you mean {suggestion!r}?" in info.value.message
    assert "@ $" not in str(info.value)
    assert "missing key" not in info.value.message, "the misspelt key explains the missing one"
