"""aftlib train: the config, the loss mask, and short CPU training runs on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from aftlib import ConfigError, InputError
from aftlib.cli import main
from aftlib.finetune import LoraSettings, TrainConfig, TrainResult, train
from aftlib.finetune._train import _build_trainer, _encode

from .conftest import reference_aggregation_system

QUESTIONS = [
    ("What is seven times six?", "Seven times six is 42."),
    ("Name a river.", "The river runs past the old mill."),
    ("How much do ten apples cost?", "Ten apples cost twenty dollars."),
    ("Who writes the final answer?", "A good reader compares the answers."),
    ("What color is the fox?", "The quick brown fox is brown."),
    ("When is the river low?", "In the summer the water is low and clear."),
    ("What does an editor do?", "An editor keeps what is sound in each draft."),
    ("Check the arithmetic.", "Multiply, divide, add and subtract, then check."),
]


def aggregation_record(question: str, answer: str, drafts: list[str]) -> dict[str, Any]:
    """One record in the format of ``aftlib data``: drafts in the system turn, the target answer last."""
    return {
        "messages": [
            {"role": "system", "content": reference_aggregation_system(drafts)},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "kind": "aggregation",
        "source": {"dataset": "test"},
    }


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight aggregation records and two direct ones (multi-turn), in the JSONL format of ``aftlib data``."""
    records = [
        aggregation_record(q, a, [f"{a.split()[0]} maybe.", f"I think {a.lower()}"]) for q, a in QUESTIONS
    ]
    records.append(
        {
            "messages": [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hello! How can I help you today?"},
                {"role": "user", "content": "Summarize the text."},
                {"role": "assistant", "content": "Gather several answers and combine the best parts."},
            ],
            "kind": "direct",
            "source": {},
        }
    )
    records.append({**records[-1], "kind": "direct"})
    return write_records(tmp_path_factory.mktemp("data") / "aft.jsonl", records)


def small_config(tiny_model: Path, data: Path, output_dir: Path, **changes: Any) -> TrainConfig:
    settings: dict[str, Any] = {
        "model": str(tiny_model),
        "data": str(data),
        "output_dir": str(output_dir),
        "max_steps": 12,
        "learning_rate": 1e-2,
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "seed": 0,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
    }
    settings.update(changes)
    return TrainConfig.from_mapping(settings)


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


# --- config ---------------------------------------------------------------------------------------


def test_unknown_key_is_named_with_the_file_and_the_known_keys(tmp_path: Path) -> None:
    """A misspelt top-level key fails with the key, the file, a suggestion and the list of known keys."""
    file = write_config(
        tmp_path / "train.yaml",
        {"model": "m", "data": "d.jsonl", "output_dir": "out", "learning_rat": 1e-4},
    )
    with pytest.raises(ConfigError) as info:
        TrainConfig.load(file)
    assert info.value.path == "learning_rat"
    assert info.value.source == str(file)
    assert "did you mean 'learning_rate'" in info.value.message
    assert "known keys: model, data, output_dir" in info.value.message


def test_unknown_lora_key_names_its_path() -> None:
    """An unknown key inside lora is reported as lora.KEY."""
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_mapping({"model": "m", "data": "d", "output_dir": "o", "lora": {"rank": 8}})
    assert info.value.path == "lora.rank"
    assert "did you mean 'r'" in info.value.message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("max_steps", "ten", "expected a positive integer, got str 'ten'"),
        ("learning_rate", 0, "expected a positive number, got int 0"),
        ("batch_size", True, "expected a positive integer, got bool True"),
        ("data", 3, "expected a JSONL file or a list of them, got int 3"),
        ("merge", "yes", "expected true or false, got str 'yes'"),
        ("lora", 8, "expected a mapping of LoRA settings"),
        ("extra", ["warmup_ratio"], "expected a mapping of SFTConfig arguments, got list"),
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    """A value of the wrong type or range fails naming its key and the file."""
    file = write_config(tmp_path / "t.yaml", {"model": "m", "data": "d.jsonl", "output_dir": "o", key: value})
    with pytest.raises(ConfigError) as info:
        TrainConfig.load(file)
    assert info.value.path == key
    assert info.value.source == str(file)
    assert expected in info.value.message


def test_lora_values_and_missing_keys_are_checked() -> None:
    """A bad LoRA value names lora.KEY; a missing required key is named; merge: false needs LoRA."""
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_mapping({"model": "m", "data": "d", "output_dir": "o", "lora": {"dropout": 1.5}})
    assert info.value.path == "lora.dropout"
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_mapping({"model": "m", "data": "d"})
    assert info.value.path == "output_dir"
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_mapping({"model": "m", "data": "d", "output_dir": "o", "merge": False})
    assert info.value.path == "merge"


def test_config_defaults_and_conversions() -> None:
    """One data path becomes a tuple, lora {} means the default LoRA settings, extra is kept."""
    config = TrainConfig.from_mapping(
        {"model": "m", "data": "d.jsonl", "output_dir": "o", "lora": {}, "extra": {"warmup_steps": 2}}
    )
    assert config.data == ("d.jsonl",)
    assert config.lora == LoraSettings(r=16, alpha=32, dropout=0.05, target_modules="all-linear")
    assert config.extra == {"warmup_steps": 2}
    assert config.max_steps is None
    assert config.merge is True


def test_extra_arguments_are_checked_against_sftconfig(tmp_path: Path, tiny_model: Path) -> None:
    """Unknown or refused SFTConfig arguments, ours renamed, loss-mask switches: the error names extra.KEY."""
    data = write_records(tmp_path / "d.jsonl", [aggregation_record(*QUESTIONS[0], ["a", "b"])])
    config = small_config(tiny_model, data, tmp_path / "out", extra={"lr_scheduler_typ": "constant"})
    with pytest.raises(ConfigError) as info:
        train(config, source="train.yaml")
    assert info.value.path == "extra.lr_scheduler_typ"
    assert info.value.source == "train.yaml"
    assert "did you mean 'lr_scheduler_type'" in info.value.message
    assert not (tmp_path / "out").exists()
    config = small_config(tiny_model, data, tmp_path / "out", extra={"warmup_steps": 2, "optim": "nope"})
    with pytest.raises(ConfigError) as info:
        train(config)
    assert info.value.path == "extra.optim"
    assert "nope is not a valid" in info.value.message
    for key, words in [("learning_rate", "top-level key 'learning_rate'"), ("assistant_only_loss", "loss")]:
        with pytest.raises(ConfigError) as info:
            small_config(tiny_model, data, tmp_path / "out", extra={key: True})
        assert info.value.path == f"extra.{key}"
        assert words in info.value.message


@pytest.mark.parametrize(
    ("line", "where", "expected"),
    [
        ("{not json", ":2", "not valid JSON"),
        ('{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "x"}]}', ":2", "last"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}',
            "messages[1]",
            "bot",
        ),
        ('{"prompt": "hi"}', ":2", "'messages'"),
        (
            '{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}',
            "messages[0]",
            "missing 'content'",
        ),
        (
            '{"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}',
            "messages[0]",
            "missing 'role'",
        ),
    ],
)
def test_bad_training_records_name_the_file_and_line(
    tmp_path: Path, tiny_model: Path, line: str, where: str, expected: str
) -> None:
    """A malformed record stops training before the model loads, naming the file and line."""
    good = json.dumps(aggregation_record(*QUESTIONS[0], ["a", "b"]))
    data = tmp_path / "d.jsonl"
    data.write_text(f"{good}\n{line}\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        train(small_config(tiny_model, data, tmp_path / "out"))
    assert info.value.where is not None
    assert info.value.where.startswith(f"{data}:2")
    assert where in info.value.where
    assert expected in info.value.message
    assert not (tmp_path / "out").exists()


def test_output_dir_with_foreign_files_is_refused(tmp_path: Path, tiny_model: Path, dataset: Path) -> None:
    """A non-empty output folder that is not an earlier checkpoint is never overwritten."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        train(small_config(tiny_model, dataset, out))
    assert info.value.path == "output_dir"
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


# --- the loss mask ----------------------------------------------------------------------------------


def inference_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt tokens VLLMEngine sends for ``messages``: chat template with the generation prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


def test_the_loss_covers_the_answer_turn_only(tiny_model: Path) -> None:
    """Prompt tokens equal the inference prompt and are masked; the labels are the answer and end of turn."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_model))
    messages = [
        {"role": "system", "content": reference_aggregation_system(["Seven.", "Eleven."])},
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "And a larger one?"},
        {"role": "assistant", "content": "Eleven is a larger prime."},
    ]
    input_ids, labels = _encode(tokenizer, messages)
    prompt = inference_prompt_ids(tokenizer, messages[:-1])
    assert input_ids[: len(prompt)] == prompt
    assert input_ids.count(tokenizer.bos_token_id) == 1
    assert labels[: len(prompt)] == [-100] * len(prompt)
    answer = labels[len(prompt) :]
    assert -100 not in answer
    assert answer == input_ids[len(prompt) :]
    assert tokenizer.decode(answer) == "Eleven is a larger prime." + tokenizer.eos_token
    assert "Seven." not in tokenizer.decode([t for t in labels if t != -100])


def test_collated_batch_trains_on_answer_tokens_only(tmp_path: Path, tiny_model: Path, dataset: Path) -> None:
    """In a batch from TRL's data loader, labels are -100 on prompts and padding, the token ids elsewhere."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_model))
    answers = {
        tuple(tokenizer.encode(a + tokenizer.eos_token, add_special_tokens=False)) for _, a in QUESTIONS
    }
    answers.add(
        tuple(tokenizer.encode(_last_answer(dataset) + tokenizer.eos_token, add_special_tokens=False))
    )
    config = small_config(tiny_model, dataset, tmp_path / "out", batch_size=3)
    prepared = _build_trainer(config, tmp_path / "work")
    batch = next(iter(prepared.trainer.get_train_dataloader()))
    assert batch["labels"].shape == batch["input_ids"].shape
    padded_rows = 0
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        trained = [i for i, label in enumerate(labels.tolist()) if label != -100]
        assert trained, "every record trains on its answer"
        assert trained == list(range(trained[0], trained[-1] + 1)), "one contiguous span"
        assert labels[trained].tolist() == ids[trained].tolist()
        assert tuple(ids[trained].tolist()) in answers
        assert trained[-1] == int(mask.sum()) - 1, "the answer ends the record; padding is not trained"
        padded_rows += int(mask.sum()) < len(mask)
    assert padded_rows >= 1


def _last_answer(path: Path) -> str:
    last = json.loads(path.read_text(encoding="utf-8").splitlines()[-1])
    text: str = last["messages"][-1]["content"]
    return text


# --- training runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_merged(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, dataset: Path) -> TrainResult:
    """A LoRA run of 12 steps on the tiny model, merged into the base weights."""
    out = tmp_path_factory.mktemp("train") / "merged"
    return train(small_config(tiny_model, dataset, out))


def answer_loss(model: Path, data: Path) -> float:
    """The mean loss of ``model`` on the answer turns of ``data``, in evaluation mode."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model))
    network = transformers.AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32).eval()
    losses = []
    with torch.no_grad():
        for line in data.read_text(encoding="utf-8").splitlines():
            input_ids, labels = _encode(tokenizer, json.loads(line)["messages"])
            out = network(torch.tensor([input_ids]), labels=torch.tensor([labels]))
            losses.append(float(out.loss))
    return sum(losses) / len(losses)


def assert_loss_goes_down(result: TrainResult, base: Path, data: Path) -> None:
    """The logged losses fall, and the checkpoint fits the answers better than the base model does."""
    losses = [p.loss for p in result.losses]
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.6, losses
    before, after = answer_loss(base, data), answer_loss(result.output_dir, data)
    assert after < before - 0.3, (before, after)


def test_lora_run_lowers_the_loss_and_writes_a_merged_checkpoint(
    lora_merged: TrainResult, tiny_model: Path, dataset: Path
) -> None:
    """LoRA lowers the loss; the merged checkpoint is a whole model in the base dtype with changed weights."""
    import torch
    import transformers

    result = lora_merged
    assert result.checkpoint == "merged"
    assert result.steps == 12
    assert result.records == 10
    assert result.kinds == {"aggregation": 8, "direct": 2}
    assert result.skipped == ()
    assert [p.step for p in result.losses] == list(range(1, 13))
    assert_loss_goes_down(result, tiny_model, dataset)
    out = result.output_dir
    assert (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no staging folder left"
    marker = json.loads((out / "aftlib-train.json").read_text())
    assert marker["checkpoint"] == "merged"
    assert [p["loss"] for p in marker["losses"]] == [p.loss for p in result.losses]

    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model))
    tuned = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    assert tuned.dtype == torch.bfloat16
    changed = [
        name
        for (name, a), (_, b) in zip(base.named_parameters(), tuned.named_parameters(), strict=True)
        if not torch.equal(a, b)
    ]
    assert any("q_proj" in n for n in changed)
    assert any("down_proj" in n for n in changed)
    assert not any("embed_tokens" in n or "lm_head" in n for n in changed), "LoRA leaves these alone"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    assert (
        tokenizer.chat_template == transformers.AutoTokenizer.from_pretrained(str(tiny_model)).chat_template
    )


def test_adapter_checkpoint_loads_on_the_base_model(tmp_path: Path, tiny_model: Path, dataset: Path) -> None:
    """merge: false writes a peft adapter for the base model that changes the model's output."""
    import peft
    import torch
    import transformers

    result = train(small_config(tiny_model, dataset, tmp_path / "adapter", merge=False, max_steps=4))
    assert result.checkpoint == "adapter"
    assert result.losses[-1].loss < result.losses[0].loss
    adapter = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert adapter["r"] == 8
    assert adapter["base_model_name_or_path"] == str(tiny_model)
    assert not (result.output_dir / "model.safetensors").exists()

    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = peft.PeftModel.from_pretrained(base, str(result.output_dir))
        after = tuned(ids).logits
    assert not torch.allclose(before, after)


def test_cli_full_fine_tuning(tmp_path: Path, tiny_model: Path, dataset: Path, capsys: Any) -> None:
    """The train command without LoRA trains every weight, prints losses and a summary, reruns in place."""
    config = write_config(
        tmp_path / "train.yaml",
        {
            "model": str(tiny_model),
            "data": [str(dataset)],
            "output_dir": str(tmp_path / "ignored"),
            "max_steps": 100,
            "learning_rate": 1e-3,
            "batch_size": 4,
            "gradient_accumulation_steps": 1,
            "logging_steps": 2,
            "seed": 0,
        },
    )
    out = tmp_path / "full"
    args = ["train", "--config", str(config), "--output-dir", str(out), "--max-steps", "10"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "step 2/10" in err
    assert "trained 10 steps on 10 records (8 aggregation, 2 direct)" in err
    assert f"checkpoint: {out} (every weight trained)" in err
    assert "serve it: aftlib run" in err
    assert not (tmp_path / "ignored").exists()
    marker = json.loads((out / "aftlib-train.json").read_text())
    losses = [p["loss"] for p in marker["losses"]]
    assert [p["step"] for p in marker["losses"]] == [2, 4, 6, 8, 10]
    assert losses[-1] < losses[0] - 0.5, losses
    assert answer_loss(out, dataset) < answer_loss(tiny_model, dataset) - 0.3
    assert marker["checkpoint"] == "full"
    first = (out / "model.safetensors").read_bytes()

    assert main([*args[:-1], "2"]) == 0, "an earlier checkpoint of aftlib train is replaced"
    assert json.loads((out / "aftlib-train.json").read_text())["steps"] == 2
    assert (out / "model.safetensors").read_bytes() != first


def test_cli_reports_config_errors_without_a_traceback(tmp_path: Path, capsys: Any) -> None:
    """A bad training config exits 2 with 'aftlib: error:' naming the file and the key."""
    config = write_config(tmp_path / "train.yaml", {"model": "m", "data": "d", "output_dir": "o", "epoch": 2})
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"aftlib: error: {config}: epoch: unknown key 'epoch'; did you mean 'epochs'?")
    assert "Traceback" not in err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read the config" in capsys.readouterr().err


def test_records_longer_than_max_length_are_skipped_and_reported(
    tmp_path: Path, tiny_model: Path, dataset: Path
) -> None:
    """Records over max_length are skipped with their FILE:LINE, never cut; the rest train."""
    long_record = aggregation_record("Why?", "Because.", ["word " * 600, "other"])
    data = tmp_path / "d.jsonl"
    data.write_text(dataset.read_text(encoding="utf-8") + json.dumps(long_record) + "\n", encoding="utf-8")
    result = train(small_config(tiny_model, data, tmp_path / "out", max_steps=1, max_length=512))
    assert result.skipped == (f"{data}:11",)
    assert result.records == 10
    with pytest.raises(InputError) as info:
        train(small_config(tiny_model, data, tmp_path / "out2", max_steps=1, max_length=8))
    assert "every record is longer than max_length (8 tokens)" in info.value.message
