"""The answer extractor: each strategy on the forms models write, normalisation, failures, bad settings."""

from __future__ import annotations

import pytest

from aftlib import ConfigError
from aftlib.config._converter import at
from aftlib.evaluate import AnswerExtractor, Extracted, normalize_answer


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("She sells 9 eggs.\n#### 18", "18"),
        ("#### 1 \n then #### 1,234", "1234"),  # the last one
        ("#### $1,234.50", "1234.5"),
        ("####42", "42"),
    ],
)
def test_hashes_take_the_text_after_the_last_marker(text: str, answer: str) -> None:
    """``####``: the text after the last ``####`` to the end of its line, normalised."""
    found = AnswerExtractor(strategies=("####",)).extract(text)
    assert found.answer == answer
    assert found.strategy == "####"


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("So the answer is 42.", "42"),
        ("The answer is: 7\nDone", "7"),
        ("THE FINAL ANSWER IS 3.5.", "3.5"),
        ("the answer is 2. No wait, the answer is 5.", "5"),
        ("The answer is $1,000 dollars.", "1000"),
        (r"The final answer is \boxed{12}.", "12"),
        ("The answer is x + 1", "x + 1"),
    ],
)
def test_the_answer_is_forms(text: str, answer: str) -> None:
    """Forms "The answer is N" and "the final answer is N", any case, the last one, units and $ dropped."""
    assert AnswerExtractor(strategies=("the answer is",)).extract(text).answer == answer


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (r"so \boxed{5}", "5"),
        (r"\boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"$\boxed{\sqrt{x^{2}}}$.", r"\sqrt{x^{2}}"),
        (r"\fbox{7}", "7"),
    ],
)
def test_boxed_takes_the_last_box_with_balanced_braces(text: str, answer: str) -> None:
    r"""``boxed``: the last ``\boxed{...}`` with nested braces kept whole."""
    assert AnswerExtractor(strategies=("boxed",)).extract(text).answer == answer


def test_an_unclosed_box_is_no_answer() -> None:
    """A box whose braces never close gives nothing rather than a cut answer."""
    assert AnswerExtractor(strategies=("boxed",)).extract(r"\boxed{\frac{1}{2}").answer is None


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("3 apples and then 4.5 pears", "4.5"),
        ("It costs $1,234.", "1234"),
        ("down to -7 degrees", "-7"),
        ("x2 is not a number but 8 is", "8"),
    ],
)
def test_last_number(text: str, answer: str) -> None:
    """``last_number``: the last number, thousands commas removed, a sign kept."""
    assert AnswerExtractor.flexible_extract().extract(text).answer == answer


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Answer: B", "B"),
        ("The answer is (C).", "C"),
        ("I think (D) is right", "D"),
        ("E. because it is", "E"),
        ("A", "A"),
    ],
)
def test_choice_letters(text: str, answer: str) -> None:
    """``choice``: a letter A-E as "Answer: B", "(B)", "B." opening a line, or alone."""
    assert AnswerExtractor(strategies=("choice",)).extract(text).answer == answer


def test_choice_ignores_words() -> None:
    """A capital letter inside prose ("A cat") or a lowercase one after "answer is" is no choice."""
    extractor = AnswerExtractor(strategies=("choice",))
    assert extractor.extract("The answer is a dog").answer is None
    assert extractor.extract("A cat sat on the mat").answer is None


def test_regex_takes_the_first_group_of_the_last_match() -> None:
    """``regex``: the user's pattern, its first group, the last match; without a group the whole match."""
    grouped = AnswerExtractor(strategies=("regex",), pattern=r"ANS=(\d+)")
    assert grouped.extract("ANS=3 then ANS=4").answer == "4"
    whole = AnswerExtractor(strategies=("regex",), pattern=r"v\d+")
    assert whole.extract("v1 then v22").answer == "v22"


def test_a_regex_that_does_not_compile_names_its_key_path() -> None:
    """A pattern that does not compile is a ConfigError at ``pattern``, under the config's key path."""
    with pytest.raises(ConfigError) as caught:
        AnswerExtractor(strategies=("regex",), pattern="(unclosed")
    assert caught.value.path == "pattern"
    assert "not a valid regular expression" in str(caught.value)
    with pytest.raises(ConfigError) as moved, at("extractor", source="eval.yaml"):
        AnswerExtractor(strategies=("regex",), pattern="[")
    assert str(moved.value).startswith("eval.yaml: extractor.pattern: ")


def test_unknown_strategy_and_regex_without_pattern_are_config_errors() -> None:
    """A misspelt strategy names the closest one and its index; ``regex`` needs a pattern."""
    with pytest.raises(ConfigError, match="did you mean 'boxed'") as caught:
        AnswerExtractor(strategies=("####", "boxd"))
    assert caught.value.path == "strategies[1]"
    with pytest.raises(ConfigError, match="needs a 'pattern'"):
        AnswerExtractor(strategies=("regex",))
    with pytest.raises(ConfigError, match="at least one"):
        AnswerExtractor(strategies=())


def test_strategies_are_tried_in_order() -> None:
    """The first strategy that finds an answer wins; a later one is the fallback."""
    text = "Step: 3 + 4 = 7.\n#### 7\nAlso 99"
    assert AnswerExtractor(strategies=("####", "last_number")).extract(text).answer == "7"
    assert AnswerExtractor(strategies=("last_number", "####")).extract(text).answer == "99"
    assert (
        AnswerExtractor(strategies=("boxed", "last_number")).extract("no box, 12").strategy == "last_number"
    )


def test_strict_match_is_hashes_then_the_answer_is() -> None:
    """The strict-match preset finds ``####`` and "the answer is", and never a bare last number."""
    strict = AnswerExtractor.preset("strict-match")
    assert strict.strategies == ("####", "the answer is")
    assert strict.extract("The answer is 5.").answer == "5"
    assert strict.extract("I computed 5 and 6").answer is None
    assert AnswerExtractor.preset("flexible-extract").extract("I computed 5 and 6").answer == "6"
    with pytest.raises(ConfigError, match="did you mean 'strict-match'"):
        AnswerExtractor.preset("strict_match")


def test_span_points_at_the_raw_answer() -> None:
    """The span is where the raw answer lies in the text, before normalisation."""
    text = "so #### 1,234.50 total"
    found = AnswerExtractor(strategies=("####",)).extract(text)
    assert found.span is not None
    assert text[found.span[0] : found.span[1]] == "1,234.50 total"
    assert found.answer == "1234.5"
    number = AnswerExtractor.flexible_extract().extract(text)
    assert number.span is not None
    assert text[number.span[0] : number.span[1]] == "1,234.50"


def test_no_answer_is_an_empty_extraction() -> None:
    """A text with nothing to extract gives ``Extracted(None)``: no strategy, no span."""
    found = AnswerExtractor().extract("I do not know.")
    assert found == Extracted(None)
    assert not found.ok
    assert AnswerExtractor().extract("").answer is None
    assert AnswerExtractor(strategies=("####",)).extract("#### ").answer is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("1,234.50", "1234.5"),
        (" $18.00. ", "18"),
        ("+3", "3"),
        ("007", "7"),
        ("-0.50", "-0.5"),
        (".5", "0.5"),
        ("0", "0"),
        ("18 dollars", "18"),
        ("50%", "50"),
        (r"\boxed{42}", "42"),
        ("$x  +   1$", "x + 1"),
        (r"\frac{1}{2}", r"\frac{1}{2}"),
    ],
)
def test_normalisation(raw: str, normal: str) -> None:
    """Dollars, commas, trailing periods, needless zeros, units and spaces go; expressions stay."""
    assert normalize_answer(raw) == normal


def test_normalisation_can_be_turned_off() -> None:
    """``normalize=False`` returns the raw text of the answer."""
    raw = AnswerExtractor(strategies=("####",), normalize=False).extract("#### $1,234")
    assert raw.answer == "$1,234"
