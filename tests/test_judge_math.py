"""The math judge on GSM8K-layout records: right, wrong and unextractable answers, symbolic equality."""

from __future__ import annotations

import json
import math
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from aftlib import InputError
from aftlib.evaluate import AnswerExtractor, EvalItem, Evaluation, MathJudge, _math, answers_match

DATA = Path(__file__).parent / "data"


def gsm8k() -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / "gsm8k_5.jsonl").read_text().splitlines()]


def item(answer: str, reference: str, rid: str = "q") -> EvalItem:
    return EvalItem(rid, ("question",), (answer,), (reference,))


@pytest.mark.anyio
async def test_gsm8k_gold_is_the_text_after_the_last_hashes() -> None:
    """The gold answer of a GSM8K record is after its last ``#### `` with commas removed."""
    judge = MathJudge()
    golds = [judge.gold(item("", record["answer"])).answer for record in gsm8k()]
    assert golds == ["18", "3", "70000", "540", "20"]
    right = await judge.judge(item("So she makes $18 a day.\n#### 18", gsm8k()[0]["answer"]))
    assert right.score == 1.0
    assert right.details["correct"] is True
    assert right.details["gold"] == "18"


@pytest.mark.anyio
async def test_right_wrong_and_unextractable_answers() -> None:
    """Right scores 1.0, wrong 0.0, and no extractable answer scores None as an extraction failure."""
    records = gsm8k()
    judge = MathJudge()
    answers = [
        "The answer is 18.",  # right
        "Blue 2 and white 1, so 3 bolts.",  # right (last number)
        "#### 65,000",  # wrong
        "I do not know.",  # no answer
    ]
    judgments = [
        await judge.judge(item(text, record["answer"], str(i)))
        for i, (text, record) in enumerate(zip(answers, records, strict=False))
    ]
    assert [j.score for j in judgments] == [1.0, 1.0, 0.0, None]
    assert [j.details["extraction_failed"] for j in judgments] == [False, False, False, True]
    assert judgments[2].details["answer"] == "65000"
    assert judgments[3].details["answer"] is None
    summary = judge.summarize(judgments)
    assert summary.judge == "math"
    assert summary.n == 4
    assert summary.metrics["accuracy"] == 0.5  # the failure counts as wrong
    assert summary.metrics["correct"] == 2
    assert summary.metrics["wrong"] == 1
    assert summary.metrics["extraction_failures"] == 1
    # the sample standard error of the 0/1 scores: sqrt(p(1-p)/(n-1))
    assert summary.metrics["standard_error"] == pytest.approx(math.sqrt(0.25 / 3))
    assert any("no extractable answer" in note for note in summary.notes)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        (r"so \boxed{\frac{1}{2}}", "#### 0.5"),
        (r"The answer is \boxed{0.5}", r"\boxed{\frac{1}{2}}"),
        (r"\boxed{\frac{6}{4}}", r"\boxed{\frac{3}{2}}"),
        (r"\boxed{2\sqrt{2}}", r"\boxed{\sqrt{8}}"),
    ],
)
async def test_symbolic_equality(answer: str, gold: str) -> None:
    r"""Equal values in other forms match through math-verify: ``\frac{1}{2}`` and ``0.5``."""
    judgment = await MathJudge().judge(item(answer, gold))
    assert judgment.score == 1.0
    assert judgment.details["match"] == "symbolic"


@pytest.mark.anyio
async def test_symbolically_different_answers_do_not_match() -> None:
    r"""``\frac{1}{3}`` is not ``0.5``; ``x+1`` is not ``x+2``."""
    judge = MathJudge()
    assert (await judge.judge(item(r"\boxed{\frac{1}{3}}", "#### 0.5"))).score == 0.0
    assert (await judge.judge(item(r"\boxed{x+1}", r"\boxed{x+2}"))).score == 0.0


def test_plain_comparisons_come_first() -> None:
    """Equal text matches as ``exact``, equal numbers as ``number``; different numbers never reach sympy."""
    assert answers_match("18", "18") == (True, "exact")
    assert answers_match("18", "18.0") == (True, "number")
    assert answers_match("18", "19") == (False, "")


@pytest.mark.anyio
async def test_extractors_are_configurable() -> None:
    """A strict-match judge fails an answer a flexible judge accepts; a choice judge reads letters."""
    record = gsm8k()[0]
    loose = "I think it is 18"
    assert (await MathJudge().judge(item(loose, record["answer"]))).score == 1.0
    strict = MathJudge(extractor=AnswerExtractor.strict_match())
    failed = await strict.judge(item(loose, record["answer"]))
    assert failed.score is None
    assert failed.details["extraction_failed"] is True
    choice = MathJudge(
        extractor=AnswerExtractor(strategies=("choice",)),
        gold_extractor=AnswerExtractor(strategies=("text",)),
    )
    assert (await choice.judge(item("Answer: (C)", "C"))).score == 1.0


@pytest.mark.anyio
async def test_an_item_without_a_gold_answer_is_an_input_error() -> None:
    """No reference, or one with no readable answer, raises InputError (the runner writes an error line)."""
    judge = MathJudge()
    with pytest.raises(InputError, match="no gold answer"):
        await judge.judge(EvalItem("q", ("question",), ("#### 1",)))
    with pytest.raises(InputError, match="no gold answer"):
        await judge.judge(item("#### 1", "   "))


def test_summary_of_nothing() -> None:
    """No judgments: accuracy and its error are None, counts are zero."""
    summary = MathJudge().summarize([])
    assert summary.n == 0
    assert summary.metrics["accuracy"] is None
    assert summary.metrics["extraction_failures"] == 0


@pytest.mark.anyio
async def test_a_symbolic_comparison_does_not_block_the_event_loop() -> None:
    r"""While math-verify compares ``\frac{1}{2}`` with ``0.5`` (in a worker process), the loop runs on."""
    ticks = 0
    done = anyio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.lowlevel.checkpoint()
        before = ticks
        judgment = await MathJudge().judge(item("The answer is \\boxed{\\frac{1}{2}}", "#### 0.5"))
        during = ticks - before
        done.set()
    assert judgment.details["match"] == "symbolic"
    assert judgment.score == 1.0
    assert during > 0, "the loop stood still while sympy worked"


@pytest.mark.anyio
async def test_a_symbolic_comparison_past_its_timeout_is_stopped_and_no_match() -> None:
    """A comparison that takes longer than the judge's timeout counts as no match, marked "timeout"."""
    judgment = await MathJudge(timeout=0.0).judge(item("\\boxed{\\frac{1}{2}}", "#### 0.5"))
    assert judgment.details["match"] == "timeout"
    assert judgment.score == 0.0
    assert judgment.details["correct"] is False


@pytest.mark.anyio
async def test_the_math_judge_at_concurrency_16_judges_16_items_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation(concurrency=16) has 16 symbolic comparisons in flight together, not one after another."""
    in_flight = 0
    peak = 0
    all_in = anyio.Event()

    async def compare(gold: str, answer: str, *, seconds: float) -> tuple[bool, str]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 16:
            all_in.set()
        await all_in.wait()  # a serial judge would never get here for the second item
        in_flight -= 1
        return True, "symbolic"

    monkeypatch.setattr(_math, "compare_answers", compare)
    items = [item(f"\\boxed{{x_{i}}}", f"#### y_{i}", rid=str(i)) for i in range(16)]
    with anyio.fail_after(10):
        report = await Evaluation(MathJudge(), items, tmp_path / "j.jsonl", concurrency=16).run()
    assert peak == 16
    assert report.judged == 16
