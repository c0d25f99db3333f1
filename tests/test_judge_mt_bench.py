"""MT-Bench single-answer grading: FastChat's four prompts, its rating regexes, and its averages."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from aftlib import ChatRequest, ConfigError, InputError, Message
from aftlib.evaluate import REFERENCE_CATEGORIES, EvalItem, Judgment, MTBenchJudge, mt_bench_rating
from aftlib.testing import FakeEngine

DATA = Path(__file__).parent / "data" / "judge"

pytestmark = pytest.mark.anyio


def original_prompts() -> dict[str, dict[str, str]]:
    """FastChat's judge prompts from the shipped copy of ``judge_prompts.jsonl``, by name."""
    lines = (DATA / "mtbench_single_judge_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    return {p["name"]: p for p in map(json.loads, lines)}


def questions() -> dict[str, dict[str, Any]]:
    """The 4 shipped MT-Bench questions (writing, reasoning, math, coding), by question id."""
    lines = (DATA / "mt_bench_questions_4.jsonl").read_text(encoding="utf-8").splitlines()
    return {str(q["question_id"]): q for q in map(json.loads, lines)}


def references() -> dict[int, list[str]]:
    """The shipped reference answers (FastChat's gpt-4 references), by integer question id."""
    lines = (DATA / "mt_bench_reference_gpt-4_3.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["question_id"]: r["choices"][0]["turns"] for r in map(json.loads, lines)}


def item(qid: str, answers: Sequence[str] = ("First {answer}.", "Second {{ answer }}.")) -> EvalItem:
    """An item of question ``qid`` with the model's two answers."""
    q = questions()[qid]
    return EvalItem(qid, q["turns"], answers[: len(q["turns"])], category=q["category"])


def expected(name: str, **values: str) -> list[dict[str, str]]:
    """FastChat's request for prompt ``name``: its system prompt, then ``prompt_template.format(...)``."""
    prompt = original_prompts()[name]
    return [
        {"role": "system", "content": prompt["system_prompt"]},
        {"role": "user", "content": prompt["prompt_template"].format(**values)},
    ]


def as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Messages as ``{"role", "content"}`` dicts."""
    return [{"role": m.role, "content": m.content} for m in messages]


def turn_of(request: ChatRequest) -> int:
    """1 for a single-turn prompt, 2 for a multi-turn one."""
    return 2 if "Assistant A's Conversation" in request.messages[-1].content else 1


def scripted(texts: dict[tuple[str, int], str]) -> FakeEngine:
    """A judge engine answering ``texts[(question's first words, turn)]``."""

    def handler(request: ChatRequest, index: int) -> str:
        user = request.messages[-1].content
        for (key, turn), text in texts.items():
            if key in user and turn_of(request) == turn:
                return text
        return "no rating here"

    return FakeEngine(handler=handler)


# --- the four prompts, byte for byte ---


def test_builtin_templates_render_fastchat_s_prompts_byte_for_byte() -> None:
    """Each built-in template gives FastChat's system prompt and ``prompt_template.format(...)`` exactly.

    The values hold braces and Jinja syntax, which both reach the prompt literally.
    """
    judge = MTBenchJudge(FakeEngine())
    values = {
        "question": "Q {x} {{ y }}",
        "answer": "A\n\n{% if %}",
        "ref_answer_1": "R1 {}",
        "question_1": "Q1",
        "answer_1": "A1",
        "question_2": "Q2 }}",
        "answer_2": "  A2  ",
        "ref_answer_2": "R2",
    }
    cases = {
        "single-v1": (judge.single_template, ("question", "answer")),
        "single-math-v1": (judge.math_template, ("question", "answer", "ref_answer_1")),
        "single-v1-multi-turn": (
            judge.multi_turn_template,
            ("question_1", "answer_1", "question_2", "answer_2"),
        ),
        "single-math-v1-multi-turn": (
            judge.math_multi_turn_template,
            ("question_1", "answer_1", "question_2", "answer_2", "ref_answer_1", "ref_answer_2"),
        ),
    }
    for name, (template, keys) in cases.items():
        mine = {k: values[k] for k in keys}
        system = template.render(system=None, references=[], user="", **mine)
        user = template.render_user(user="", system=None, references=[], **mine)
        assert [{"role": "system", "content": system}, {"role": "user", "content": user}] == expected(
            name, **mine
        ), name


async def test_a_general_question_is_sent_with_the_general_prompts() -> None:
    """A writing question: turn 1 with single-v1, turn 2 with single-v1-multi-turn; temperature 0, 2048."""
    engine = FakeEngine(handler=lambda request, index: "Rating: [[6]]")
    judge = MTBenchJudge(engine, references=references())
    it = item("81")
    await judge.judge(it)
    by_turn = {turn_of(r): r for r in engine.requests}
    assert sorted(by_turn) == [1, 2]
    assert as_dicts(by_turn[1].messages) == expected("single-v1", question=it.turns[0], answer=it.answers[0])
    assert as_dicts(by_turn[2].messages) == expected(
        "single-v1-multi-turn",
        question_1=it.turns[0],
        answer_1=it.answers[0],
        question_2=it.turns[1],
        answer_2=it.answers[1],
    )
    for request in engine.requests:
        s = request.sampling
        assert (s.temperature, s.max_tokens, s.n, s.logprobs) == (0.0, 2048, 1, None)


@pytest.mark.parametrize("qid", ["101", "111", "121"])
async def test_math_reasoning_and_coding_use_the_math_prompts_with_references(qid: str) -> None:
    """Reasoning, math and coding questions use the math prompts with their reference answers."""
    engine = FakeEngine(handler=lambda request, index: "[[9]]")
    refs = references()
    judge = MTBenchJudge(engine, references=refs)
    it = item(qid)
    assert it.category in REFERENCE_CATEGORIES
    judgment = await judge.judge(it)
    ref = refs[int(qid)]
    by_turn = {turn_of(r): r for r in engine.requests}
    assert as_dicts(by_turn[1].messages) == expected(
        "single-math-v1", question=it.turns[0], answer=it.answers[0], ref_answer_1=ref[0]
    )
    assert as_dicts(by_turn[2].messages) == expected(
        "single-math-v1-multi-turn",
        question_1=it.turns[0],
        answer_1=it.answers[0],
        question_2=it.turns[1],
        answer_2=it.answers[1],
        ref_answer_1=ref[0],
        ref_answer_2=ref[1],
    )
    assert judgment.details["prompt_1"] == "mtbench_single_math"
    assert judgment.details["prompt_2"] == "mtbench_multi_math"
    assert judgment.details["reference_based"] is True


async def test_an_item_s_own_references_come_before_the_mapping() -> None:
    """References carried by the item are used; the judge's mapping fills in for items without them."""
    engine = FakeEngine(handler=lambda request, index: "[[9]]")
    judge = MTBenchJudge(engine, references={"111": ["mapped 1", "mapped 2"]})
    q = questions()["111"]
    own = EvalItem("111", q["turns"], ("a1", "a2"), ("own 1", "own 2"), category="math")
    await judge.judge(own)
    assert all("own 1" in r.messages[-1].content for r in engine.requests)
    assert not any("mapped" in r.messages[-1].content for r in engine.requests)


async def test_a_reference_category_without_references_is_an_error_before_any_request() -> None:
    """A math, reasoning or coding question without references: InputError naming it, nothing sent."""
    engine = FakeEngine(handler=lambda request, index: "[[9]]")
    judge = MTBenchJudge(engine, references={"111": ["only turn 1"]})
    with pytest.raises(InputError, match=r"question '101'.*category 'reasoning'.*0 for its 2 turn"):
        await judge.judge(item("101"))
    with pytest.raises(InputError, match=r"question '111'.*1 for its 2 turn"):
        await judge.judge(item("111"))
    assert engine.requests == []


async def test_a_general_question_ignores_references() -> None:
    """References of a general-category question are not shown (FastChat uses them only for math, ...)."""
    engine = FakeEngine(handler=lambda request, index: "[[5]]")
    judge = MTBenchJudge(engine, references={"81": ["REF 1", "REF 2"]})
    await judge.judge(item("81"))
    assert not any("REF" in r.messages[-1].content for r in engine.requests)


async def test_a_single_turn_question_is_rated_on_turn_1_only() -> None:
    """A one-turn question sends one request; ``turn_2`` and its texts are None."""
    engine = FakeEngine(handler=lambda request, index: "[[4]]")
    judgment = await MTBenchJudge(engine).judge(EvalItem("q", ("Hi?",), ("Hello.",), category="writing"))
    assert len(engine.requests) == 1
    assert judgment.details["turn_1"] == 4.0
    assert judgment.details["turn_2"] is None
    assert judgment.details["judgment_2"] is None
    assert judgment.score == 4.0


async def test_bad_items_are_input_errors() -> None:
    """Fewer answers than turns, or no turn: InputError naming the question."""
    judge = MTBenchJudge(FakeEngine())
    q = questions()["81"]
    with pytest.raises(InputError, match=r"question '81'.*2 turn\(s\) but the answer has 1"):
        await judge.judge(EvalItem("81", q["turns"], ("one",), category="writing"))
    with pytest.raises(InputError, match=r"question 'e'.*has 0"):
        await judge.judge(EvalItem("e", (), ()))


def test_bad_settings_are_config_errors() -> None:
    """References that are not lists of strings, several samples: ConfigError with the key path."""
    from aftlib import SamplingParams

    with pytest.raises(ConfigError, match=r"references.111"):
        MTBenchJudge(FakeEngine(), references={"111": "just a string"})
    with pytest.raises(ConfigError, match=r"sampling.n"):
        MTBenchJudge(FakeEngine(), sampling=SamplingParams(n=2))


# --- ratings ---


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("The answer is fine. Rating: [[7.5]]", 7.5),
        ("Rating: [7]", 7.0),
        ("Some text [[10]] more text [3] and [[2]]", 10.0),
        ("[5] first, then [[8]]", 8.0),
        ("no rating at all", -1.0),
        ("Rating: [[ 7 ]]", -1.0),
        ("Rating: [[-3]]", -1.0),
        ("Rating: [[7.5]", 7.5),
        ("Rating: [[10.]]", 10.0),
        ("Rating: [[07]]", 7.0),
        ("Rating: [[12]]", 12.0),
        ("Rating: [[" + "9" * 400 + "]]", math.inf),
        ("", -1.0),
    ],
)
def test_rating_is_read_as_fastchat_reads_it(text: str, rating: float) -> None:
    """``[[N]]`` first, else ``[N]``; ``-1`` without a match; not clamped; leading zeros read as decimals."""
    assert mt_bench_rating(text) == rating


async def test_judgment_holds_both_turns_and_the_raw_texts() -> None:
    """A judgment: ``turn_1``, ``turn_2``, the raw judge texts, the prompts; score = mean of rated turns."""
    engine = scripted({("Compose an engaging", 1): "Good. [[8]]", ("Compose an engaging", 2): "Meh. [6]"})
    judgment = await MTBenchJudge(engine).judge(item("81"))
    assert judgment.details == {
        "category": "writing",
        "reference_based": False,
        "turn_1": 8.0,
        "turn_2": 6.0,
        "judgment_1": "Good. [[8]]",
        "judgment_2": "Meh. [6]",
        "prompt_1": "mtbench_single",
        "prompt_2": "mtbench_multi",
    }
    assert judgment.score == 7.0
    assert judgment.judge == "mt_bench"
    assert judgment.usage.requests == 2
    json.dumps(judgment.to_json(), allow_nan=False)


async def test_a_rating_of_400_digits_is_inf_and_keeps_the_other_turn() -> None:
    """A judge rating too large for a float is +inf (not an OverflowError); the other turn's rating stays."""
    huge = "[[" + "9" * 400 + "]]"
    engine = scripted({("Compose an engaging", 1): huge, ("Compose an engaging", 2): "[[4]]"})
    judgment = await MTBenchJudge(engine).judge(item("81"))
    assert judgment.details["turn_1"] == math.inf
    assert judgment.details["turn_2"] == 4.0


async def test_an_unrated_turn_is_minus_one_and_left_out_of_the_score() -> None:
    """A judge text without a rating gives -1 for that turn; the score is the other turn's rating."""
    engine = scripted({("Compose an engaging", 1): "I refuse to rate.", ("Compose an engaging", 2): "[[3]]"})
    judgment = await MTBenchJudge(engine).judge(item("81"))
    assert judgment.details["turn_1"] == -1.0
    assert judgment.details["turn_2"] == 3.0
    assert judgment.score == 3.0


# --- the averages ---


def graded(qid: str, turn_1: float | None, turn_2: float | None) -> Judgment:
    """A judgment as the judge writes it, with two turn ratings."""
    return Judgment(qid, "mt_bench", None, {"turn_1": turn_1, "turn_2": turn_2})


def test_average_is_over_all_rated_turns_not_the_mean_of_means() -> None:
    """Turn 1 and turn 2 means, and ``average`` over every rated turn of both, leaving out -1 ratings.

    FastChat's ``show_result.py``: ``df[df.score != -1]``, the mean per turn, and the mean of all rows.
    Here turn 1 = (10 + 2 + 6) / 3 = 6, turn 2 = 4 (one -1 dropped), average = 22 / 4 = 5.5, while the
    mean of the two means would be 5.
    """
    judgments = [graded("a", 10, -1), graded("b", 2, 4), graded("c", 6, None), graded("d", -1, None)]
    summary = MTBenchJudge(FakeEngine()).summarize(judgments)
    m = summary.metrics
    assert summary.judge == "mt_bench"
    assert summary.n == 4
    assert m["turn_1"] == pytest.approx(6.0)
    assert m["turn_2"] == pytest.approx(4.0)
    assert m["average"] == pytest.approx(5.5)
    assert m["average"] != pytest.approx((m["turn_1"] + m["turn_2"]) / 2)
    assert (m["n_turn_1"], m["n_turn_2"]) == (3, 1)
    assert (m["n_unrated_turn_1"], m["n_unrated_turn_2"], m["n_unrated"]) == (1, 1, 2)
    assert any("2 turn judgment(s) without a rating" in note for note in summary.notes)


def test_averages_match_pandas_as_fastchat_computes_them() -> None:
    """With pandas installed, FastChat's own computation (filter -1, group by turn, overall mean) agrees."""
    pd = pytest.importorskip("pandas")
    ratings = [(8, 7), (9, -1), (3, 5.5), (-1, 2), (10, 10), (6, 4)]
    rows = [{"score": s, "turn": t + 1} for pair in ratings for t, s in enumerate(pair)]
    df = pd.DataFrame(rows)
    df = df[df["score"] != -1]
    m = (
        MTBenchJudge(FakeEngine())
        .summarize([graded(str(i), *pair) for i, pair in enumerate(ratings)])
        .metrics
    )
    assert m["turn_1"] == pytest.approx(df[df["turn"] == 1]["score"].mean())
    assert m["turn_2"] == pytest.approx(df[df["turn"] == 2]["score"].mean())
    assert m["average"] == pytest.approx(df["score"].mean())


def test_summary_reads_judgments_reloaded_from_json() -> None:
    """Judgments read back from a judgments file (ratings as JSON numbers, ints or floats) summarize alike."""
    line = json.loads(json.dumps(graded("x", 7, 8).to_json()))
    details = {k: v for k, v in line.items() if k not in ("id", "judge", "score", "usage")}
    m = MTBenchJudge(FakeEngine()).summarize([Judgment("x", "mt_bench", None, details)]).metrics
    assert (m["turn_1"], m["turn_2"], m["average"]) == (7.0, 8.0, 7.5)


def test_summary_of_nothing_has_no_numbers() -> None:
    """No rated turn: the means are None."""
    m = MTBenchJudge(FakeEngine()).summarize([graded("a", -1, -1)]).metrics
    assert (m["turn_1"], m["turn_2"], m["average"]) == (None, None, None)
