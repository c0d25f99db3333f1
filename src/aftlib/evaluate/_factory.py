"""Judges built from a config, and answers joined to what they are judged against: one way for all.

``aftlib eval`` and :class:`~aftlib.evaluate.Sweep` both build their judge with :func:`judge_from_config`
and their items with :func:`join_answers`, so one judge file behaves the same under ``eval`` and
``sweep``: the same settings accepted (extractors by preset name or as a mapping), the same errors with
the same key paths, the same fingerprint of what decides the verdicts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from attrs import field, frozen

from .._errors import ConfigError, InputError
from .._extract import AnswerExtractor
from .._io import file_fingerprint, read_yaml
from ..engines._base import Engine
from ._answers import (
    join_alpaca_eval,
    join_math,
    join_mt_bench,
    read_answers,
    read_baseline,
    read_gold,
    read_questions,
    read_references,
)
from ._evaluation import judge_settings
from ._judge import EvalItem, Judge

__all__ = ("JUDGES", "JoinedAnswers", "JudgeSetup", "join_answers", "judge_from_config", "read_judge_config")

JUDGES: tuple[str, ...] = ("alpaca_eval", "mt_bench", "math")
"""The judges a config can name."""

PathLike = str | os.PathLike[str]
_EXTRACTOR_KEYS = ("strategies", "pattern", "normalize", "preset")


@frozen
class JudgeSetup:
    """A judge built from a config.

    Attributes:
        judge: The judge.
        engine: Its engine, not started (None for the math judge): start it with ``async with``.
        settings: What decides its verdicts, as JSON: the judge's settings and its engine's identity
            (what :class:`~aftlib.evaluate.Evaluation` fingerprints).
    """

    judge: Judge
    engine: Engine | None
    settings: dict[str, Any]


@frozen
class JoinedAnswers:
    """An answers file joined to what it is judged against.

    Attributes:
        items: The matched items, in answers order.
        counts: ``matched``, ``missing`` (the other side's entries with no answer) and ``extra``.
        notes: What the join and the reading left out, in words.
        bad: Every bad line read, each naming ``FILE:LINE``.
        inputs: A fingerprint of each file read, by its role (``answers``, ``baseline``, ...).
        instructions: The baseline's instructions in order (AlpacaEval's length-controlled rate needs
            them); empty for the other judges.
    """

    items: tuple[EvalItem, ...]
    counts: dict[str, int]
    notes: tuple[str, ...] = ()
    bad: tuple[InputError, ...] = ()
    inputs: dict[str, str] = field(factory=dict)
    instructions: tuple[str, ...] = ()


def read_judge_config(config: PathLike | Mapping[str, Any] | None) -> tuple[dict[str, Any], Any, str | None]:
    """A judge config's settings, its engine spec (None without one) and its source for messages.

    Args:
        config: A YAML file, a mapping, or None (no settings, no engine).

    Raises:
        ConfigError: The file cannot be read, is not a mapping, or its engine is invalid (``engine...``).
    """
    if config is None:
        return {}, None, None
    source = None if isinstance(config, Mapping) else str(config)
    data: Any = config if isinstance(config, Mapping) else read_yaml(Path(config), "the judge config")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"the judge config is a mapping, got {type(data).__name__}", source=source)
    settings = {str(k): v for k, v in data.items() if k != "engine"}
    spec: Any = None
    if "engine" in data:
        from ..config import EngineSpec
        from ..config._converter import structure

        spec = structure(data["engine"], EngineSpec, source=source, path="engine")  # type: ignore[arg-type,unused-ignore]
    return settings, spec, source


def _extractor(value: Any, key: str, source: str | None) -> AnswerExtractor:
    from ..config._converter import at, unknown_key

    with at(key, source=source):
        if isinstance(value, str):
            return AnswerExtractor.preset(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"an extractor is a preset name or a mapping, got {type(value).__name__}")
        for name in value:
            if name not in _EXTRACTOR_KEYS:
                raise ConfigError(unknown_key(str(name), list(_EXTRACTOR_KEYS)), path=str(name))
        if "preset" in value:
            return AnswerExtractor.preset(str(value["preset"]))
        strategies = value.get("strategies", ("####", "the answer is", "boxed", "last_number"))
        if not isinstance(strategies, str | list):
            raise ConfigError("strategies is a list of strategy names", path="strategies")
        return AnswerExtractor(
            strategies=strategies, pattern=value.get("pattern"), normalize=bool(value.get("normalize", True))
        )


def _check_keys(settings: Mapping[str, Any], known: list[str], source: str | None) -> None:
    from ..config._converter import unknown_key

    for key in settings:
        if key not in known:
            raise ConfigError(unknown_key(key, known), path=key, source=source)


def _engine_identity(engine: Engine | None) -> Any:
    if engine is None:
        return None
    from ..engines._cache import engine_identity

    return engine_identity(engine)


def judge_from_config(
    name: str,
    config: PathLike | Mapping[str, Any] | None = None,
    *,
    instructions: tuple[str, ...] = (),
    engine: Engine | None = None,
) -> JudgeSetup:
    """Build the judge ``name`` from a config: its settings and its engine (``engine: {type: ...}``).

    Args:
        name: One of :data:`JUDGES`.
        config: The judge config (a YAML file or a mapping): the judge's settings, and ``engine``
            for the judges that need one. The math judge takes ``extractor`` and ``gold_extractor``
            (a preset name or a mapping of ``strategies``, ``pattern``, ``normalize``) and no engine.
        instructions: The AlpacaEval baseline's instructions in order (:attr:`JoinedAnswers.instructions`),
            for the length-controlled win rate, unless the config sets them.
        engine: The judge engine, instead of the config's ``engine`` (a sweep shares one).

    Raises:
        ConfigError: An unknown judge, an unknown or invalid setting (naming its key and file), an
            engine for the math judge, no engine for another judge, or an AlpacaEval engine without
            log probabilities.
    """
    if name not in JUDGES:
        raise ConfigError(f"unknown judge {name!r}; choose {', '.join(JUDGES)}", path="judge")
    settings, spec, source = read_judge_config(config)
    if name == "math":
        if spec is not None or engine is not None:
            raise ConfigError("the math judge uses no engine; remove 'engine'", path="engine", source=source)
        from ._math import MathJudge

        _check_keys(settings, ["extractor", "gold_extractor"], source)
        extractors: dict[str, Any] = {key: _extractor(value, key, source) for key, value in settings.items()}
        judge: Judge = MathJudge(**extractors)
        return JudgeSetup(judge, None, {"judge": judge_settings(judge), "engine": None})
    if engine is None:
        if spec is None:
            raise ConfigError(
                f"the {name} judge needs a judge engine: a config with engine: {{type: openai|vllm, ...}}",
                path="engine",
                source=source,
            )
        engine = spec.build("judge")
    assert engine is not None
    cls: Any
    defaults: dict[str, Any] = {}
    if name == "alpaca_eval":
        from ._alpaca import AlpacaEvalJudge

        engine.check_logprobs("the AlpacaEval judge")
        cls = AlpacaEvalJudge
        if instructions:
            defaults["instructions"] = instructions
    else:
        from ._mtbench import MTBenchJudge

        cls = MTBenchJudge
    _check_keys(settings, [a.name for a in attrs.fields(cls) if a.init and a.name != "engine"], source)
    from ..config._converter import at

    with at(None, source=source):
        try:
            judge = cls(engine, **{**defaults, **settings})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"a setting of the {name} judge is invalid: {exc}") from None
    return JudgeSetup(judge, engine, {"judge": judge_settings(judge), "engine": _engine_identity(engine)})


def join_answers(
    name: str,
    answers: PathLike,
    *,
    baseline: PathLike | None = None,
    questions: PathLike | None = None,
    references: PathLike | None = None,
    on_bad: Callable[[InputError], None] | None = None,
) -> JoinedAnswers:
    """Read an answers file and join it to what the judge ``name`` judges it against.

    AlpacaEval by the exact instruction (``baseline`` required), MT-Bench by question id (``questions``
    and ``references`` optional), math by id or question text (``references``: GSM8K-layout gold
    answers; without it each answer's own ``answer`` field). Another name gives each answer with its
    turns, unjoined (a judge of your own).

    Args:
        name: The judge (one of :data:`JUDGES`, or another name for a judge of your own).
        answers: The answers file, in any layout :func:`~aftlib.evaluate.read_answers` reads.
        baseline: AlpacaEval outputs of the baseline model (``alpaca_eval``).
        questions: FastChat ``question.jsonl`` (``mt_bench``).
        references: Reference answers: FastChat ``model_answer`` (``mt_bench``) or GSM8K-layout gold
            answers (``math``).
        on_bad: Called with each bad line (a display); they are also in the result.

    Raises:
        InputError: A file cannot be read, or the answers are of no known layout.
        ConfigError: ``alpaca_eval`` without a baseline.
    """
    found = read_answers(answers)
    bad = list(found.bad)
    notes: list[str] = []
    inputs = {"answers": file_fingerprint(answers)}
    instructions: tuple[str, ...] = ()

    def take(errors: tuple[InputError, ...]) -> None:
        bad.extend(errors)

    if name == "alpaca_eval":
        if baseline is None:
            raise ConfigError("the alpaca_eval judge needs a baseline (AlpacaEval outputs)", path="baseline")
        outputs, errors = read_baseline(baseline)
        take(errors)
        inputs["baseline"] = file_fingerprint(baseline)
        instructions = tuple(outputs)
        joined = join_alpaca_eval(found, outputs)
    elif name == "mt_bench":
        asked = refs = None
        if questions is not None:
            asked, errors = read_questions(questions)
            take(errors)
            inputs["questions"] = file_fingerprint(questions)
        if references is not None:
            refs, errors = read_references(references)
            take(errors)
            inputs["references"] = file_fingerprint(references)
        joined = join_mt_bench(found, asked, refs)
    elif name == "math" or references is not None:
        gold = None
        if references is not None:
            gold = read_gold(references)
            take(gold.bad)
            inputs["references"] = file_fingerprint(references)
        joined = join_math(found, gold)
    else:
        items = tuple(
            EvalItem(a.id, a.turns, a.outputs, generator=a.generator, data=a.data) for a in found.answers
        )
        if on_bad is not None:
            for error in bad:
                on_bad(error)
        counts = {"matched": len(items), "missing": 0, "extra": 0}
        return JoinedAnswers(items, counts, _bad_notes(bad, found.errors, answers), tuple(bad), inputs)
    if on_bad is not None:
        for error in bad:
            on_bad(error)
    notes = [*_bad_notes(bad, found.errors, answers), *joined.notes]
    return JoinedAnswers(tuple(joined.items), joined.counts(), tuple(notes), tuple(bad), inputs, instructions)


def _bad_notes(bad: list[InputError], errors: int, answers: PathLike) -> tuple[str, ...]:
    notes = [f"{len(bad)} bad line(s) skipped"] if bad else []
    if errors:
        notes.append(f"{errors} error record(s) in {answers} skipped")
    return tuple(notes)
