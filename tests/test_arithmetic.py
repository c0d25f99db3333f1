"""The arithmetic task and the shipped models: problems, splits, bad settings, model folders, variants."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from aftlib import ConfigError
from aftlib.evaluate import AnswerExtractor, answers_match
from aftlib.evaluate._sweep import Sweep
from aftlib.finetune import read_preferences
from aftlib.testing import ARITHMETIC_MODELS, arithmetic_model, arithmetic_problems
from aftlib.testing._arithmetic import problem_split
from aftlib.testing._models import _verify


def _calculation(problem: dict[str, str]) -> tuple[int, list[tuple[str, int]]]:
    steps = re.findall(r"(\d+) ([-+*]) (\d+) = (\d+)\.", problem["answer"])
    return int(steps[0][0]), [(op, int(b)) for _, op, b, _ in steps]


def test_problems_are_seeded_distinct_and_worked() -> None:
    """The same seed gives the same problems; each answer works the steps and ends with the right #### N."""
    problems = arithmetic_problems(200, seed=3, split="train", steps=3, operations=("+", "-", "*"))
    assert problems == arithmetic_problems(200, seed=3, split="train", steps=3, operations=("+", "-", "*"))
    assert problems != arithmetic_problems(200, seed=4, split="train", steps=3, operations=("+", "-", "*"))
    assert len({p["question"] for p in problems}) == 200
    for problem in problems:
        start, steps = _calculation(problem)
        assert len(steps) == 3
        value = start
        for op, operand in steps:
            value = value + operand if op == "+" else value - operand if op == "-" else value * operand
            assert value >= 0
        assert problem["answer"].endswith(f"#### {value}")


def test_splits_never_share_a_calculation() -> None:
    """Train, dev and test problems drawn with the same seed share no calculation (start and steps)."""
    by_split = {
        split: {repr(_calculation(p)) for p in arithmetic_problems(1000, seed=0, split=split)}
        for split in ("train", "dev", "test")
    }
    assert not by_split["train"] & by_split["test"]
    assert not by_split["train"] & by_split["dev"]
    assert not by_split["dev"] & by_split["test"]
    problem = arithmetic_problems(1, seed=0, split="dev")[0]
    assert problem_split(*_calculation(problem)) == "dev"


def test_math_judge_scores_the_gold_answer_unchanged() -> None:
    """The answer extractor reads #### N from a problem's answer, and a draft with another number is wrong."""
    extractor = AnswerExtractor()
    problem = arithmetic_problems(1, seed=5)[0]
    gold = extractor.extract(problem["answer"]).answer
    assert gold is not None
    assert answers_match(gold, gold)[0]
    assert not answers_match(gold, str(int(gold) + 1))[0]


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 7}, "steps"),
        ({"digits": 5}, "digits"),
        ({"operations": ("/",)}, "operations"),
        ({"operations": "+"}, "operations"),
        ({"split": "validation"}, "split"),
        ({"seed": -1}, "seed"),
    ],
)
def test_settings_out_of_range_name_the_setting(settings: dict[str, object], key: str) -> None:
    """A generator setting out of range is a ConfigError whose path names that setting."""
    with pytest.raises(ConfigError) as caught:
        arithmetic_problems(3, **{"seed": 0, **settings})  # type: ignore[arg-type]
    assert caught.value.path == key


def test_too_many_problems_for_the_settings_is_refused() -> None:
    """Asking for more distinct problems than the settings allow names count, instead of looping forever."""
    with pytest.raises(ConfigError) as caught:
        arithmetic_problems(20_000, seed=0, split="test", steps=1, digits=1, operations=("-",))
    assert caught.value.path == "count"


def test_gsm8k_layout_reads_as_a_preference_record(tmp_path: Path) -> None:
    """``aftlib data`` reads GSM8K records: the question is the user turn, the worked answer the target."""
    problem = arithmetic_problems(1, seed=0, split="train")[0]
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"question": problem["question"], "answer": "x"}) + "\n")
    (record,) = read_preferences(path)
    assert record.layout == "gsm8k"  # type: ignore[union-attr]
    assert record.conversation[0].content == problem["question"]  # type: ignore[union-attr]
    assert record.responses[record.best].text == "x"  # type: ignore[union-attr,index]


def test_unknown_model_name_lists_the_known_ones() -> None:
    """arithmetic_model('x') is a ConfigError that names the shipped models."""
    with pytest.raises(ConfigError, match="base, aft, rl"):
        arithmetic_model("x")


@pytest.mark.parametrize("name", ARITHMETIC_MODELS)
def test_shipped_models_match_their_manifest(name: str) -> None:
    """Each shipped model folder is complete: bf16 weights, tokenizer, card, all as the manifest says."""
    folder = arithmetic_model(name)
    assert (folder / "model.safetensors").stat().st_size < 4_000_000
    assert "bfloat16" in (folder / "config.json").read_text()
    assert "python -m aftlib.testing.rebuild" in (folder / "README.md").read_text()


def test_altered_or_incomplete_model_folder_is_refused(tmp_path: Path) -> None:
    """A changed weight file or a missing file is a ConfigError naming the file, before an engine reads it."""
    folder = tmp_path / "base"
    shutil.copytree(arithmetic_model("base"), folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"altered: model\.safetensors"):
        _verify("base", folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=r"incomplete: tokenizer\.json"):
        _verify("base", folder)


def _sweep_files(tmp_path: Path, variants: str) -> Path:
    (tmp_path / "base.yaml").write_text(
        "engines: {fake: {type: fake}}\n"
        "agents:\n"
        "  one: {engine: fake, template: aft_propose}\n"
        "  five: {engine: fake, template: aft_propose, sampling: {n: 5}}\n"
        "  vote: {type: vote, on_no_answer: first}\n"
        "layers: [[one]]\nfinal: vote\n"
    )
    (tmp_path / "prompts.jsonl").write_text('{"id": 0, "prompt": "1 + 1?", "answer": "#### 2"}\n')
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"base: base.yaml\nprompts: prompts.jsonl\njudge: {{type: math}}\n{variants}"
        "axes: {'agents.five.sampling.temperature': [0.5, 1.0]}\n"
    )
    return sweep


def test_sweep_variants_cross_the_axes() -> None:
    """Each named variant sets several keys at once and is crossed with the grid; cells name the variant."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        variants = (
            "variants:\n  one sample: {layers: [[one]]}\n  vote of 5: {layers: [[five]], final: vote}\n"
        )
        sweep = Sweep.load(_sweep_files(Path(folder), variants))
    assert [c.id for c in sweep.cells] == [
        "one_sample_temperature-0.5",
        "one_sample_temperature-1.0",
        "vote_of_5_temperature-0.5",
        "vote_of_5_temperature-1.0",
    ]
    assert sweep.columns == ["variant", "agents.five.sampling.temperature"]
    assert sweep.cells[2].data["layers"] == [["five"]]
    assert sweep.cells[0].values["variant"] == "one sample"


def test_sweep_variant_with_an_unknown_key_names_it(tmp_path: Path) -> None:
    """A variant key path that is not a key of the base file is a ConfigError naming variants.NAME.KEY."""
    with pytest.raises(ConfigError) as caught:
        Sweep.load(_sweep_files(tmp_path, "variants:\n  bad: {agents.nope.sampling: 1}\n"))
    assert caught.value.path == "variants.bad.agents.nope.sampling"


@pytest.mark.parametrize("name", ARITHMETIC_MODELS)
def test_rebuild_command_builds_what_ships(name: str) -> None:
    """The recipe of ``python -m aftlib.testing.rebuild`` is the one recorded in the shipped model."""
    from aftlib.testing.rebuild import AFT_RECIPE, BASE_RECIPE, RL_RECIPE, TOOLS_RECIPE

    recipes = {"base": BASE_RECIPE, "aft": AFT_RECIPE, "rl": RL_RECIPE, "tools": TOOLS_RECIPE}
    shipped = json.loads((arithmetic_model(name) / "aftlib-recipe.json").read_text())["recipe"]
    assert shipped == json.loads(json.dumps(recipes[name]))
