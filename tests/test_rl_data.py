"""RL data for GRPO, with no model trained.

Records from a traced run (drafts, gold, majority verdict), the easy/hard mix, the prompts rendered as
at inference, the rewards, and the errors raised before any model loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aftlib import ChatRequest, ConfigError, InputError, Proposer, Runner, SamplingParams, Topology, Vote
from aftlib._io import render_prompt
from aftlib.finetune import (
    GrpoSettings,
    TrainConfig,
    build_rl_data,
    grpo_rows,
    prompt_text,
    read_rl_records,
    reward_functions,
    train,
)
from aftlib.finetune._card import card_path
from aftlib.testing import FakeEngine

pytestmark = pytest.mark.anyio

# problem i: the drafts' answers (4 each) and the gold answer
ANSWERS = {0: ["5", "5", "5", "6"], 1: ["7", "8", "8", "8"], 2: ["3", "3", "4", "4"], 3: ["9", "9", "9", "9"]}
GOLD = {0: "5", 1: "7", 2: "3", 3: "9"}  # majority right on 0, 3 and 2 (the tie goes to the first: 3)


async def _traced(tmp_path: Path) -> tuple[Path, Path]:
    """A traced run of 4 problems with scripted drafts, and the gold answers in GSM8K's layout."""

    def handler(request: ChatRequest, index: int) -> str:
        problem = int(request.messages[-1].content.split()[-1])
        return f"Working on it. #### {ANSWERS[problem][index]}"

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"problem {i}"}) + "\n" for i in ANSWERS))
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        "".join(
            json.dumps({"id": i, "question": "q", "answer": f"x. #### {a}"}) + "\n" for i, a in GOLD.items()
        )
    )
    topology = Topology([Proposer(FakeEngine(handler=handler), sampling=SamplingParams(n=4))], Vote())
    out = tmp_path / "traced.jsonl"
    await Runner(topology, prompts, out, trace=True).run()
    return out, gold


async def test_rl_records_carry_drafts_gold_and_the_majority_verdict(tmp_path: Path) -> None:
    """Every problem gives a record with its 4 drafts and gold answer; the card counts easy and hard."""
    traced, gold = await _traced(tmp_path)
    card = build_rl_data(traced, gold, tmp_path / "rl.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "rl.jsonl").read_text().splitlines()]
    assert [(r["id"], r["majority_right"]) for r in lines] == [
        ("0", True),
        ("1", False),
        ("2", True),
        ("3", True),
    ]
    assert lines[1]["answer"] == "7"
    assert len(lines[1]["drafts"]) == 4
    assert lines[1]["messages"] == [{"role": "user", "content": "problem 1"}]
    assert (card.written, card.easy, card.hard) == (4, 3, 1)
    assert json.loads(card_path(tmp_path / "rl.jsonl").read_text())["available"] == {"easy": 3, "hard": 1}


async def test_the_easy_share_balances_the_mix(tmp_path: Path) -> None:
    """easy_share 0.5 keeps the one hard record and one easy; 0 keeps the hard alone."""
    traced, gold = await _traced(tmp_path)
    half = build_rl_data(traced, gold, tmp_path / "half.jsonl", easy_share=0.5, seed=1)
    assert (half.easy, half.hard, half.written) == (1, 1, 2)
    none = build_rl_data(traced, gold, tmp_path / "hard.jsonl", easy_share=0.0)
    assert (none.easy, none.hard) == (0, 1)
    with pytest.raises(ConfigError, match="easy_share"):
        build_rl_data(traced, gold, tmp_path / "x.jsonl", easy_share=1.5)


async def test_problems_without_gold_or_drafts_are_counted_and_skipped(tmp_path: Path) -> None:
    """A problem missing from the references is skipped as 'no gold', and reading skips draftless records."""
    traced, gold = await _traced(tmp_path)
    gold.write_text("\n".join(gold.read_text().splitlines()[:2]) + "\n")
    card = build_rl_data(traced, gold, tmp_path / "rl.jsonl")
    assert card.skipped == {"no gold": 2}
    assert card.written == 2
    lines = (tmp_path / "rl.jsonl").read_text().splitlines()
    lines.append(
        json.dumps({"id": "9", "messages": [{"role": "user", "content": "q"}], "drafts": [], "answer": "1"})
    )
    (tmp_path / "rl.jsonl").write_text("\n".join(lines) + "\n")
    records, skipped = read_rl_records([str(tmp_path / "rl.jsonl")])
    assert len(records) == 2
    assert skipped == [f"{tmp_path / 'rl.jsonl'}:3"]


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model: Path) -> Any:
    """The tiny model's tokenizer (its chat template renders the prompts)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def test_rows_render_the_aggregation_request_as_served(tiny_tokenizer: Any) -> None:
    """A row's prompt is the aft_aggregate request over the drafts drawn, rendered as VLLMEngine renders it.

    The drafts are drawn per record from the seed (the same seed, the same prompt); a range draws a
    number per record within it.
    """
    from aftlib import Aggregator, Message
    from aftlib.finetune import RlRecord

    drafts = tuple(f"draft {i} #### {i}" for i in range(6))
    record = RlRecord("f:1", "1", (Message("user", "problem"),), drafts, "1")
    (row,) = grpo_rows([record], GrpoSettings(drafts=2), seed=3)
    assert grpo_rows([record], GrpoSettings(drafts=2), seed=3) == [row]
    assert row["answer"] == "1"
    text = prompt_text(tiny_tokenizer, row)
    drawn = sorted((d for d in drafts if d in text), key=text.index)
    assert len(drawn) == 2
    served = Aggregator(FakeEngine(), template="aft_aggregate")
    assert row["prompt"] == [dict(m) for m in served.template.messages(record.conversation, drawn)]
    assert text == render_prompt(tiny_tokenizer, row["prompt"])
    many = [RlRecord(f"f:{i}", str(i), record.conversation, drafts, "1") for i in range(40)]
    rows = grpo_rows(many, GrpoSettings(drafts=[1, 3]), 0)
    counts = {sum(d in prompt_text(tiny_tokenizer, r) for d in drafts) for r in rows}
    assert counts == {1, 2, 3}


def test_rewards_score_correctness_by_the_math_check_and_format_apart() -> None:
    """Correctness is 1 for a matching answer (1,000 = 1000), 0 otherwise; the format reward is apart."""
    rewards, weights = reward_functions(GrpoSettings(format_reward=0.1))
    correctness, answer_format = rewards
    texts = ["so #### 1,000", "#### 999", "no answer here"]
    assert correctness(texts, answer=["1000"] * 3) == [1.0, 0.0, 0.0]
    chat = [[{"role": "assistant", "content": t}] for t in texts]  # TRL's completions for chat prompts
    assert correctness(chat, answer=["1000"] * 3) == [1.0, 0.0, 0.0]
    assert answer_format(texts) == [1.0, 1.0, 0.0]
    assert weights == [1.0, 0.1]
    assert reward_functions(GrpoSettings())[1] == [1.0]


def test_grpo_data_without_gold_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    """No gold answer: a ConfigError naming the line, though the model does not even exist."""
    data = tmp_path / "rl.jsonl"
    data.write_text(
        json.dumps({"id": 1, "messages": [{"role": "user", "content": "q"}], "drafts": ["a"]}) + "\n"
    )
    config = TrainConfig(
        model=str(tmp_path / "no-such-model"),
        data=str(data),
        output_dir=str(tmp_path / "out"),
        method="grpo",
        batch_size=8,
    )
    with pytest.raises(ConfigError, match="gold 'answer'") as info:
        train(config)
    assert info.value.source == f"{data}:1"


@pytest.mark.parametrize(
    ("settings", "path"),
    [
        ({"method": "grpo", "grpo": {"group_size": 1}}, "grpo.group_size"),
        ({"method": "grpo", "grpo": {"drafts": [4, 2]}}, "grpo.drafts"),
        ({"method": "grpo", "grpo": {"beta": -1}}, "grpo.beta"),
        ({"method": "grpo", "grpo": {"temperature": 0}}, "grpo.temperature"),
        ({"method": "grpo", "grpo": {"groupsize": 4}}, "grpo.groupsize"),
        ({"method": "grpo", "batch_size": 6}, "batch_size"),
        ({"grpo": {"beta": 0.1}}, "grpo"),
        ({"method": "ppo"}, "method"),
        ({"method": "grpo", "extra": {"num_generations": 4}, "batch_size": 8}, "extra.num_generations"),
    ],
)
def test_bad_grpo_settings_name_their_key(settings: dict[str, Any], path: str) -> None:
    """Each bad GRPO setting in a training config is a ConfigError at its key."""
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_mapping({"model": "m", "data": "d.jsonl", "output_dir": "o", **settings})
    assert info.value.path == path


def test_malformed_rl_records_name_their_line(tmp_path: Path) -> None:
    """A record whose drafts are not texts, or with no conversation, is an InputError at its line."""
    data = tmp_path / "rl.jsonl"
    data.write_text(json.dumps({"id": 1, "answer": "1", "drafts": [3], "messages": []}) + "\n")
    with pytest.raises(InputError, match="list of texts") as info:
        read_rl_records([str(data)])
    assert info.value.where == f"{data}:1"


async def test_the_data_rl_command_writes_records_and_a_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`aftlib data rl` writes the balanced records and says what it kept; a missing input is exit 2."""
    from aftlib.cli import main

    traced, gold = await _traced(tmp_path)
    out = tmp_path / "rl.jsonl"
    args = ["data", "rl", "--input", str(traced), "--references", str(gold), "--output", str(out)]
    assert main([*args, "--easy-share", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "RL records: 2 (1 easy, 1 hard; easy share 0.5)" in err
    assert "before the mix 3 easy, 1 hard" in err
    assert len(out.read_text().splitlines()) == 2
    missing = ["data", "rl", "--input", str(tmp_path / "nope.jsonl"), "--references", str(gold)]
    assert main([*missing, "--output", str(out)]) == 2
    assert "the input is not a file" in capsys.readouterr().err
    assert main([*args, "--easy-share", "2"]) == 2
    assert "easy_share is a share in [0, 1]" in capsys.readouterr().err


def test_a_malformed_conversation_names_its_line_and_key(tmp_path: Path) -> None:
    """A conversation that does not end with a user turn is an InputError at FILE:LINE: messages[0]."""
    data = tmp_path / "rl.jsonl"
    record = {"id": 1, "answer": "1", "drafts": ["a"], "messages": [{"role": "assistant", "content": "x"}]}
    data.write_text(json.dumps(record) + "\n")
    with pytest.raises(InputError, match="must end with a user turn") as info:
        read_rl_records([str(data)])
    assert info.value.where == f"{data}:1: messages[0]"
