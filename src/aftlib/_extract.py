r"""Answer extraction: the final answer of a free-text solution, by strategies tried in order.

Each strategy looks for one form of final answer and gives the text it found, normalised:

- ``"####"``: GSM8K's form, the text after the last ``#### `` (to the end of its line);
- ``"the answer is"``: "The answer is N" or "the final answer is N" (case-insensitive, the last one);
- ``"boxed"``: the last ``\boxed{...}`` (or ``\fbox{...}``), braces balanced;
- ``"last_number"``: the last number in the text;
- ``"choice"``: a multiple-choice letter A-E: "Answer: B", "(B)", or "B." / "B)" opening a line;
- ``"regex"``: a pattern of the user's, whose first group (or whole match, with no group) is the
  answer (the last match);
- ``"text"``: the whole text (a gold answer that is the answer and nothing else).

lm-evaluation-harness's GSM8K filters are the presets :meth:`AnswerExtractor.strict_match` (``####``,
then "the answer is") and :meth:`AnswerExtractor.flexible_extract` (the last number).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from attrs import field, frozen

from ._errors import ConfigError
from ._util import did_you_mean

__all__ = ("STRATEGIES", "AnswerExtractor", "Extracted", "normalize_answer")

STRATEGIES: tuple[str, ...] = ("####", "the answer is", "boxed", "last_number", "choice", "regex", "text")
"""The strategies :class:`AnswerExtractor` knows, by name."""

Span = tuple[int, int]
Found = tuple[str, Span] | None

_NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?$|^[+-]?\.\d+$")
_LAST_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?|(?<![\w.\d])-?\.\d+")
_UNIT = re.compile(r"^([+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*(?:[A-Za-z%]+\s*)+$")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(
    r"\bthe\s+(?:final\s+)?answer\s+is\s*[:=]?\s*(.+?)\s*(?=\.\s|\.?$|\n)",
    re.IGNORECASE | re.MULTILINE,
)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_CHOICE_FORMS = (
    re.compile(r"\b(?i:answer)\s*(?:(?i:is))?\s*[:\-]?\s*\(?\b([A-E])\b\)?"),
    re.compile(r"\(([A-E])\)"),
    re.compile(r"^\s*([A-E])[.):](?:\s|$)", re.MULTILINE),
    re.compile(r"^\s*([A-E])\s*$"),
)


def normalize_answer(text: str) -> str:
    r"""An answer in a canonical form, so that equal answers compare equal as strings.

    Strips whitespace, ``$`` signs (LaTeX delimiters and dollars), a trailing period, and a ``\boxed{}``
    around the whole; a number loses its thousands commas and needless zeros (``1,234.50`` is
    ``1234.5``, ``18.00`` is ``18``, ``+3`` is ``3``), and a number followed only by words loses them
    (``18 dollars`` is ``18``). Anything else keeps its inner spaces collapsed.
    """
    value = text.strip()
    previous = None
    while value != previous:
        previous = value
        value = value.strip().replace("$", "").strip()
        value = value.rstrip(".").strip() if not value.endswith("..") else value
        boxed = _BOXED.match(value)
        if boxed:
            inner = _balanced(value, boxed.end())
            if inner is not None and inner[1][1] + 1 == len(value):
                value = inner[0]
    value = " ".join(value.split())
    unit = _UNIT.match(value)
    if unit:  # "18 dollars", "3.5 km": the number
        value = unit.group(1)
    if _NUMBER.match(value):
        value = value.replace(",", "").lstrip("+")
        if "." in value:
            value = value.rstrip("0").rstrip(".")
        if value.startswith("-"):
            body = value[1:]
            value = "-" + (body.lstrip("0") or "0") if body.strip("0.") else "0"
        else:
            value = value.lstrip("0") or "0"
        if value.startswith((".", "-.")):
            value = value.replace(".", "0.", 1)
    return value


def _balanced(text: str, start: int) -> tuple[str, Span] | None:
    """The text from ``start`` to the brace that closes the one just before it, and its span."""
    depth = 1
    for index in range(start, len(text)):
        char = text[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:index], (start, index)
    return None


def _strip_span(text: str, span: Span) -> tuple[str, Span] | None:
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (text[start:end], (start, end)) if end > start else None


def _hashes(text: str) -> Found:
    matches = list(_HASHES.finditer(text))
    return _strip_span(text, matches[-1].span(1)) if matches else None


def _answer_is(text: str) -> Found:
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    found = _strip_span(text, matches[-1].span(1))
    if found is not None:  # "the answer is \boxed{5}": the box's content
        inner = _boxed(found[0])
        if inner is not None:
            offset = found[1][0]
            return inner[0], (offset + inner[1][0], offset + inner[1][1])
    return found


def _boxed(text: str) -> Found:
    for match in reversed(list(_BOXED.finditer(text))):
        inner = _balanced(text, match.end())
        if inner is not None:
            return _strip_span(text, inner[1])
    return None


def _last_number(text: str) -> Found:
    matches = list(_LAST_NUMBER.finditer(text))
    return (matches[-1].group(0), matches[-1].span()) if matches else None


def _choice(text: str) -> Found:
    for form in _CHOICE_FORMS:
        matches = list(form.finditer(text))
        if matches:
            return matches[-1].group(1).upper(), matches[-1].span(1)
    return None


def _text(text: str) -> Found:
    return _strip_span(text, (0, len(text)))


_FINDERS: dict[str, Callable[[str], Found]] = {
    "####": _hashes,
    "the answer is": _answer_is,
    "boxed": _boxed,
    "last_number": _last_number,
    "choice": _choice,
    "text": _text,
}


@frozen
class Extracted:
    """What :meth:`AnswerExtractor.extract` found.

    Attributes:
        answer: The answer, normalised (see :func:`normalize_answer`), or None when no strategy found one.
        strategy: The strategy that found it, or None.
        span: Where the raw answer lies in the text (``text[start:end]``), or None.
    """

    answer: str | None
    strategy: str | None = None
    span: Span | None = None

    @property
    def ok(self) -> bool:
        """True when an answer was found."""
        return self.answer is not None


def _strategies(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    return tuple(value)


def _check_strategies(instance: AnswerExtractor, _: attrs.Attribute[Any], value: Sequence[str]) -> None:
    if not value:
        raise ConfigError("an extractor needs at least one strategy", path="strategies")
    for index, name in enumerate(value):
        if name not in STRATEGIES:
            raise ConfigError(
                f"unknown strategy {name!r}; {did_you_mean(name, list(STRATEGIES))}choose from "
                + ", ".join(repr(s) for s in STRATEGIES),
                path=f"strategies[{index}]",
            )
    if "regex" in value and instance.pattern is None:
        raise ConfigError("the 'regex' strategy needs a 'pattern'", path="pattern")


def _check_pattern(_: object, __: attrs.Attribute[Any], value: str | None) -> None:
    if value is None:
        return
    try:
        re.compile(value)
    except re.error as exc:
        raise ConfigError(f"not a valid regular expression: {exc}", path="pattern") from None


@frozen
class AnswerExtractor:
    r"""Finds the final answer of a solution by trying strategies in order (see :data:`STRATEGIES`).

    Example:
        >>> AnswerExtractor().extract("3 + 4 = 7, so #### 7").answer
        '7'
        >>> AnswerExtractor(strategies=("boxed",)).extract(r"so \\boxed{\\frac{1}{2}}.").answer
        '\\\\frac{1}{2}'

    Args:
        strategies: The strategies to try, in order; the first that finds an answer wins.
        pattern: The ``regex`` strategy's pattern: its first group is the answer (the whole match with
            no group); the last match counts.
        flags: ``re`` flags for ``pattern`` (``re.IGNORECASE`` ...).
        normalize: Whether to normalise the answer (:func:`normalize_answer`); the span is the raw one.

    Raises:
        ConfigError: An unknown strategy (``strategies[i]``), or a ``pattern`` that does not compile
            (``pattern``).
    """

    strategies: tuple[str, ...] = field(
        default=("####", "the answer is", "boxed", "last_number"),
        converter=_strategies,
        validator=_check_strategies,
    )
    pattern: str | None = field(default=None, validator=_check_pattern)
    flags: int = 0
    normalize: bool = True
    _regex: re.Pattern[str] | None = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        compiled = None if self.pattern is None else re.compile(self.pattern, self.flags)
        object.__setattr__(self, "_regex", compiled)

    @classmethod
    def strict_match(cls) -> AnswerExtractor:
        """lm-evaluation-harness's GSM8K ``strict-match``: ``#### N``, then "The answer is N"."""
        return cls(strategies=("####", "the answer is"))

    @classmethod
    def flexible_extract(cls) -> AnswerExtractor:
        """lm-evaluation-harness's GSM8K ``flexible-extract``: the last number in the text."""
        return cls(strategies=("last_number",))

    @classmethod
    def preset(cls, name: str) -> AnswerExtractor:
        """A named preset: ``strict-match``, ``flexible-extract`` or ``default``.

        Raises:
            ConfigError: An unknown preset name.
        """
        presets: dict[str, Callable[[], AnswerExtractor]] = {
            "strict-match": cls.strict_match,
            "flexible-extract": cls.flexible_extract,
            "default": cls,
        }
        if name not in presets:
            raise ConfigError(
                f"unknown extractor preset {name!r}; {did_you_mean(name, list(presets))}choose "
                + ", ".join(presets),
                path="preset",
            )
        return presets[name]()

    def _regex_find(self, text: str) -> Found:
        assert self._regex is not None
        matches = list(self._regex.finditer(text))
        if not matches:
            return None
        group = 1 if self._regex.groups else 0
        last = matches[-1]
        if last.group(group) is None:
            return None
        return _strip_span(text, last.span(group))

    def extract(self, text: str) -> Extracted:
        """The answer of ``text``, by the first strategy that finds one (``Extracted(None)`` if none does)."""
        for name in self.strategies:
            found = self._regex_find(text) if name == "regex" else _FINDERS[name](text)
            if found is None:
                continue
            raw, span = found
            answer = normalize_answer(raw) if self.normalize else raw
            if answer:
                return Extracted(answer, name, span)
        return Extracted(None)

    def describe(self) -> dict[str, Any]:
        """The settings as JSON (for fingerprints and summaries)."""
        return {
            "strategies": list(self.strategies),
            "pattern": self.pattern,
            "flags": self.flags,
            "normalize": self.normalize,
        }
