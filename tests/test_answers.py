"""Answers files of the three layouts, baselines, questions and references, and the joins' counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aftlib import InputError
from aftlib.evaluate import (
    join_alpaca_eval,
    join_math,
    join_mt_bench,
    read_answers,
    read_baseline,
    read_gold,
    read_questions,
    read_references,
)

DATA = Path(__file__).parent / "data"


def test_aftlib_output_skips_and_counts_error_records() -> None:
    """The JSONL of aftlib run: done records become answers (ids as strings), errors are counted apart."""
    answers = read_answers(DATA / "eval_math_answers.jsonl")
    assert answers.layout == "aftlib"
    assert [a.id for a in answers.answers] == ["1", "2", "3", "4"]
    assert answers.errors == 1
    assert answers.bad == ()
    first = answers.answers[0]
    assert first.outputs[-1].endswith("#### 18")
    assert first.question is not None
    assert first.question.startswith("Janet")
    assert first.turns == (first.question,)


def test_aftlib_multi_turn_output_keeps_every_response(tmp_path: Path) -> None:
    """A multi-turn aftlib record gives one output per turn, its turns from the input fields."""
    path = tmp_path / "out.jsonl"
    path.write_text(
        json.dumps(
            {
                "question_id": 81,
                "category": "writing",
                "turns": ["t1", "t2"],
                "id": 81,
                "status": "done",
                "response": "a2",
                "responses": ["a1", "a2"],
            }
        )
        + "\n"
    )
    answer = read_answers(path).answers[0]
    assert answer.outputs == ("a1", "a2")
    assert answer.turns == ("t1", "t2")


def test_alpaca_eval_layout_and_join_counts() -> None:
    """AlpacaEval JSON joins the baseline by exact instruction: 2 matched, 1 missing, 1 extra."""
    answers = read_answers(DATA / "eval_alpaca_answers.json")
    assert answers.layout == "alpaca_eval"
    baseline, bad = read_baseline(DATA / "eval_alpaca_baseline.json")
    assert bad == ()
    assert len(baseline) == 3
    joined = join_alpaca_eval(answers, baseline)
    assert joined.counts() == {"matched": 2, "missing": 1, "extra": 1}
    first = joined.items[0]
    assert first.turns[0] == answers.answers[0].instruction
    assert first.answers == ("Hugh Jackman and Audra McDonald.",)
    assert first.reference == (baseline[first.turns[0]],)
    assert first.generator == "tiny"
    assert any("missing" in note for note in joined.notes)
    assert any("extra" in note for note in joined.notes)


def test_alpaca_eval_join_is_exact() -> None:
    """An instruction that differs by a trailing space does not match."""
    answers = read_answers(DATA / "eval_alpaca_answers.json")
    baseline, _ = read_baseline(DATA / "eval_alpaca_baseline.json")
    shifted = {key + " ": value for key, value in baseline.items()}
    assert join_alpaca_eval(answers, shifted).counts() == {"matched": 0, "missing": 3, "extra": 3}


def test_model_answer_layout_and_mt_bench_join() -> None:
    """FastChat answers join questions by question_id; math/reasoning/coding get their references."""
    answers = read_answers(DATA / "eval_mt_answers.jsonl")
    assert answers.layout == "model_answer"
    assert [a.id for a in answers.answers] == ["81", "101", "999"]
    assert answers.answers[0].generator == "tiny"
    questions, bad = read_questions(DATA / "eval_mt_questions.jsonl")
    assert bad == ()
    assert set(questions) == {"81", "101", "111"}
    references, bad = read_references(DATA / "eval_mt_references.jsonl")
    assert bad == ()
    assert set(references) == {"101", "111"}
    joined = join_mt_bench(answers, questions, references)
    assert joined.counts() == {"matched": 2, "missing": 1, "extra": 1}
    writing, reasoning = joined.items
    assert writing.category == "writing"
    assert writing.reference == ()
    assert len(writing.turns) == 2
    assert writing.answers == ("first answer to 81", "second answer to 81")
    assert reasoning.category == "reasoning"
    assert reasoning.reference == references["101"]
    assert len(reasoning.reference) == 2


def test_mt_bench_reference_missing_is_noted() -> None:
    """A reasoning question without a reference answer is judged, with a note saying so."""
    answers = read_answers(DATA / "eval_mt_answers.jsonl")
    questions, _ = read_questions(DATA / "eval_mt_questions.jsonl")
    joined = join_mt_bench(answers, questions, None)
    assert any("no reference answer" in note for note in joined.notes)


def test_math_join_by_question_text_and_by_id(tmp_path: Path) -> None:
    """GSM8K references without ids join by question text; with ids, by id."""
    answers = read_answers(DATA / "eval_math_answers.jsonl")
    gold = read_gold(DATA / "gsm8k_5.jsonl")
    joined = join_math(answers, gold)
    assert joined.counts() == {"matched": 4, "missing": 1, "extra": 0}
    assert joined.items[0].reference[0].endswith("#### 18")
    with_ids = tmp_path / "refs.jsonl"
    with_ids.write_text(
        json.dumps({"id": 2, "question": "other text", "answer": "#### 3"})
        + "\n"
        + json.dumps({"question_id": 77, "answer": "#### 1"})
        + "\n"
    )
    by_id = join_math(answers, read_gold(with_ids))
    assert by_id.counts() == {"matched": 1, "missing": 1, "extra": 3}
    assert by_id.items[0].id == "2"
    assert by_id.items[0].reference == ("#### 3",)


def test_math_join_without_references_uses_each_answer_field(tmp_path: Path) -> None:
    """Without references, a record's own ``answer`` field is its gold; records without one are extra."""
    path = tmp_path / "out.jsonl"
    rows = [
        {"id": 1, "prompt": "q1", "answer": "#### 4", "status": "done", "response": "4"},
        {"id": 2, "prompt": "q2", "status": "done", "response": "5"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    joined = join_math(read_answers(path))
    assert joined.counts() == {"matched": 1, "missing": 0, "extra": 1}
    assert joined.items[0].reference == ("#### 4",)


def test_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    """Every bad line is an InputError ``FILE:LINE: what is wrong``; the good ones are still read."""
    path = tmp_path / "answers.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"id": 1, "status": "done", "response": "a"}),
                "{not json",
                json.dumps({"id": 2, "status": "done"}),
                json.dumps({"id": 1, "status": "done", "response": "again"}),
                json.dumps([1, 2]),
                json.dumps({"id": 3, "status": "running", "response": "x"}),
                json.dumps({"id": 4, "status": "done", "response": "d"}),
            ]
        )
        + "\n"
    )
    answers = read_answers(path)
    assert [a.id for a in answers.answers] == ["1", "4"]
    messages = [str(error) for error in answers.bad]
    assert messages[0].startswith(f"{path}:2: not valid JSON")
    assert messages[1] == f"{path}:3: a done record needs a string 'response'"
    assert messages[2] == f"{path}:4: duplicate id '1'"
    assert messages[3] == f"{path}:5: a record is a JSON object, got list"
    assert messages[4].startswith(f"{path}:6: 'status' must be")


def test_bad_lines_of_questions_references_and_gold(tmp_path: Path) -> None:
    """Questions, references and gold files report their bad lines the same way."""
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question_id": 1, "turns": []}) + "\n")
    assert (
        str(read_questions(questions)[1][0]) == f"{questions}:1: 'turns' must be a non-empty list of strings"
    )
    references = tmp_path / "r.jsonl"
    references.write_text(json.dumps({"question_id": 1, "choices": []}) + "\n")
    assert "'choices' must be a non-empty list" in str(read_references(references)[1][0])
    gold = tmp_path / "g.jsonl"
    gold.write_text(json.dumps({"answer": "#### 1"}) + "\n" + json.dumps({"question": "q"}) + "\n")
    errors = [str(e) for e in read_gold(gold).bad]
    assert errors == [
        f"{gold}:1: a reference needs an 'id', a 'question_id' or a 'question'",
        f"{gold}:2: 'answer' must be a string (the reference solution)",
    ]


def test_an_unrecognised_answers_file_is_one_error(tmp_path: Path) -> None:
    """A file whose first record matches no layout is an InputError naming its line and keys."""
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(InputError, match="not an answers record") as caught:
        read_answers(path)
    assert caught.value.where == f"{path}:1"
    with pytest.raises(InputError, match="no such answers file"):
        read_answers(tmp_path / "missing.jsonl")
