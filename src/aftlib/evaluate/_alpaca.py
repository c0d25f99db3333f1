"""The AlpacaEval 2 weighted pairwise judge (``weighted_alpaca_eval_gpt4_turbo``) on any aftlib engine.

Per item the judge shows the judge model the instruction and two outputs, the baseline's and the
model's, in an order a seeded coin decides (as alpaca_eval does), asks for one token with its top 5 log
probabilities, and turns the log probabilities of the labels ``m`` (the output shown first) and ``M``
into a preference in [1, 2] (1: the baseline is better, 2: the model is). The win rate is the mean of
``preference - 1``, in percent, with its standard error over items. The length-controlled win rate is
computed by the ``alpaca-eval`` package's own metric, never by aftlib, and only when its data and the
whole AlpacaEval set in canonical order are there; otherwise the summary says why it is missing.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from attrs import define, field

from .._errors import ConfigError, InputError
from .._templates import PromptTemplate, as_template
from .._types import ChatRequest, Message, SamplingParams, TokenLogprob
from ..engines._base import Engine
from ._judge import EvalItem, EvalSummary, Judge, Judgment, mean_and_standard_error

__all__ = ("AlpacaEvalJudge", "alpaca_eval_preference", "alpaca_eval_switched")

#: The tokens whose log probabilities make the preference: ``m`` names the output shown first.
FIRST, SECOND = "m", "M"
#: The files of the ``tatsu-lab/alpaca_eval`` dataset that the length-controlled metric reads.
LC_FILES = ("df_gamed.csv", "instruction_difficulty.csv")
_LC_REPO = "tatsu-lab/alpaca_eval"


def alpaca_eval_switched(instruction: str, seed: int = 0) -> bool:
    """Whether alpaca_eval shows the model's output first for ``instruction``: its seeded coin.

    Args:
        instruction: The instruction, exactly as in the outputs files.
        seed: The annotator's seed (0 by default in alpaca_eval).
    """
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[0]


def _logaddexp(a: float, b: float) -> float:
    top = max(a, b)
    if top == -math.inf:
        return -math.inf
    return top + math.log(math.exp(a - top) + math.exp(b - top))


def alpaca_eval_preference(top: Iterable[tuple[str, float]]) -> float:
    """The preference that alpaca_eval's ``logprob_parser`` reads from one token's top log probabilities.

    Only the entries whose token is exactly ``m`` or ``M`` count (a later entry for the same token wins,
    as in a dict built from the list). A missing one has log probability ``-inf``.

    Args:
        top: ``(token, logprob)`` pairs, the most likely tokens at the judge's first generated token.

    Returns:
        ``2 - p`` with ``p = exp(lp(m) - logsumexp(lp(m), lp(M)))``, in [1, 2] (1: the output shown first
        is better); NaN when neither ``m`` nor ``M`` is among them.
    """
    found: dict[str, float] = {}
    for token, logprob in top:
        if token in (FIRST, SECOND):
            found[token] = float(logprob)
    if not found:
        return math.nan
    first = found.get(FIRST, -math.inf)
    total = _logaddexp(first, found.get(SECOND, -math.inf))
    return 2.0 - math.exp(first - total)


def _default_sampling() -> SamplingParams:
    return SamplingParams(temperature=1.0, max_tokens=1, logprobs=5)


def _check_sampling(_: object, __: object, value: SamplingParams) -> None:
    if not isinstance(value, SamplingParams):
        raise ConfigError(f"sampling must be a SamplingParams, got {type(value).__name__}", path="sampling")
    if value.logprobs is None or value.logprobs < 1:
        raise ConfigError(
            "the AlpacaEval judge reads the top log probabilities of its first token: sampling.logprobs must "
            f"be at least 1 (alpaca_eval asks for 5), got {value.logprobs!r}",
            path="sampling.logprobs",
        )
    if value.n != 1:
        raise ConfigError(
            f"the AlpacaEval judge takes one sample per item, got n={value.n}", path="sampling.n"
        )


def _instructions(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError("instructions is a list of instructions, not one string", path="instructions")
    return tuple(value)


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"seed must be an integer, got {value!r}", path="seed")
    return value


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@define(eq=False)
class AlpacaEvalJudge(Judge):
    """AlpacaEval 2's weighted judge: a logprob preference of the model's output over the baseline's.

    An item's ``turns[0]`` is the instruction, ``answers[0]`` the model's output and ``reference[0]``
    the baseline's output. The request is the system and user messages of the template (by default
    ``alpaca_eval_clf``: byte for byte those alpaca_eval builds from its ChatML prompt file), sampled
    as alpaca_eval does: one token, temperature 1, the top 5 log probabilities.

    Args:
        engine: The judge engine; it must give log probabilities (checked here).
        seed: The annotator's seed of the position switch (alpaca_eval's default is 0).
        template: The judge prompt: a template with ``system`` and ``user`` blocks and the variables
            ``instruction``, ``output_1`` (shown first, label ``m``) and ``output_2`` (label ``M``).
        sampling: How the judge samples; ``logprobs`` must be at least 1.
        instructions: The AlpacaEval set's instructions in canonical order (the order of the baseline's
            outputs file), for the length-controlled win rate; without them it is not computed.
        lc_data_dir: A folder holding ``df_gamed.csv`` (and ``instruction_difficulty.csv``) of the
            ``tatsu-lab/alpaca_eval`` dataset; by default the files are looked up in the Hugging Face
            cache that alpaca_eval downloads them to. Nothing is downloaded.

    Raises:
        ConfigError: The engine gives no log probabilities, or a setting is invalid.
        TemplateError: The template does not exist or does not parse.
    """

    name: ClassVar[str] = "alpaca_eval"

    engine: Engine
    seed: int = field(default=0, kw_only=True, converter=_seed)
    template: PromptTemplate = field(
        factory=lambda: PromptTemplate("alpaca_eval_clf"), kw_only=True, converter=as_template
    )
    sampling: SamplingParams = field(factory=_default_sampling, kw_only=True, validator=_check_sampling)
    instructions: tuple[str, ...] | None = field(default=None, kw_only=True, converter=_instructions)
    lc_data_dir: Path | None = field(default=None, kw_only=True, converter=_path)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.engine, Engine):
            raise ConfigError(
                f"engine must be an aftlib Engine, got {type(self.engine).__name__}", path="engine"
            )
        self.engine.check_logprobs("the AlpacaEval judge")

    @property
    def engines(self) -> tuple[Engine, ...]:
        """The judge engine."""
        return (self.engine,)

    def messages(self, instruction: str, output_1: str, output_2: str) -> list[Message]:
        """The judge's request messages for an instruction and two outputs in the order shown.

        Raises:
            TemplateError: The template fails to render.
        """
        values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
        system = self.template.render(system=None, references=(), user=instruction, **values)
        user = self.template.render_user(user=instruction, system=None, references=(), **values)
        return [Message("system", system), Message("user", user)] if system else [Message("user", user)]

    def request(self, item: EvalItem) -> ChatRequest | None:
        """The request the judge sends for ``item``; None when the two outputs are identical (no call).

        Raises:
            InputError: The item lacks its instruction, output or baseline output.
        """
        instruction, output, baseline = _parts(item)
        if output == baseline:
            return None
        switched = alpaca_eval_switched(instruction, self.seed)
        first, second = (output, baseline) if switched else (baseline, output)
        return ChatRequest(self.messages(instruction, first, second), self.sampling)

    async def judge(self, item: EvalItem) -> Judgment:
        """Judge one item (see :class:`AlpacaEvalJudge`); identical outputs give 1.5 without a call.

        The judgment's ``score`` is the preference in [1, 2] (2: the model's output is better), None
        when the judge's first token has neither ``m`` nor ``M`` among its top log probabilities.

        Raises:
            InputError: The item lacks its instruction, output or baseline output.
        """
        instruction, output, baseline = _parts(item)
        switched = alpaca_eval_switched(instruction, self.seed)
        details: dict[str, Any] = {
            "instruction": instruction,
            "generator": item.generator,
            "switched": switched,
            "identical": output == baseline,
            "preference": None,
            "raw_preference": None,
            "logprob_m": None,
            "logprob_M": None,
            "top_logprobs": None,
            "completion": None,
            "failure": None,
            "output_chars": len(output),
            "baseline_chars": len(baseline),
        }
        request = self.request(item)
        if request is None:
            details["preference"] = 1.5
            return Judgment(item.id, self.name, 1.5, details)
        completion = await self.engine.generate(request)
        sample = completion.samples[0] if completion.samples else None
        tokens: Sequence[TokenLogprob] = () if sample is None or sample.logprobs is None else sample.logprobs
        details["completion"] = None if sample is None else sample.text
        raw = math.nan
        if sample is None:
            details["failure"] = "the engine returned no sample"
        elif sample.logprobs is None:
            details["failure"] = f"engine {self.engine.name!r} returned no log probabilities"
        elif not tokens:
            details["failure"] = "the judge generated no token"
        else:
            top = tokens[0].top
            # JSON has no -inf: a log probability that is not finite is written as null.
            details["top_logprobs"] = [[token, _finite(logprob)] for token, logprob in top]
            found = {token: logprob for token, logprob in top if token in (FIRST, SECOND)}
            details["logprob_m"] = _finite(found.get(FIRST))
            details["logprob_M"] = _finite(found.get(SECOND))
            raw = alpaca_eval_preference(top)
            if math.isnan(raw):
                details["failure"] = (
                    f"neither {FIRST!r} nor {SECOND!r} is among the top {len(top)} log probabilities of the "
                    "judge's first token"
                    if not found
                    else f"the log probabilities of {FIRST!r} and {SECOND!r} are not finite"
                )
        preference = 3.0 - raw if switched else raw
        if not math.isnan(raw):
            details["raw_preference"] = raw
            details["preference"] = preference
        score = None if math.isnan(preference) else preference
        return Judgment(item.id, self.name, score, details, completion.usage)

    def summarize(self, judgments: Sequence[Judgment]) -> EvalSummary:
        """The win rate over ``judgments``, as alpaca_eval computes it, and the length-controlled one.

        Metrics: ``win_rate`` (mean of ``preference - 1``, times 100) and ``standard_error`` (the sample
        standard deviation over sqrt n, times 100) over the judgments with a preference;
        ``discrete_win_rate`` (each preference rounded to a win, a loss or, at exactly 1.5, a draw);
        ``n_total`` (judgments with a preference), ``n_wins``, ``n_wins_base``, ``n_draws``,
        ``n_no_preference`` (neither ``m`` nor ``M``: left out), ``n_identical``;
        ``length_controlled_win_rate`` and ``length_controlled_standard_error`` (None, with a note, when
        they cannot be computed by the ``alpaca-eval`` package).
        """
        preferences: list[float] = []
        missing = identical = 0
        for judgment in judgments:
            value = _finite(judgment.score)
            if value is None:
                missing += 1
                continue
            preferences.append(value)
            identical += bool(judgment.details.get("identical"))
        shifted = [p - 1.0 for p in preferences]
        mean, error = mean_and_standard_error(shifted)
        discrete = [0.5 if p == 1.5 else float(round(p)) - 1.0 for p in preferences]
        discrete_mean, _ = mean_and_standard_error(discrete)
        lc, lc_error, why = self._length_controlled(judgments)
        notes: list[str] = []
        if missing:
            notes.append(
                f"{missing} of {len(judgments)} judgment(s) have no preference (neither 'm' nor 'M' among "
                "the top log probabilities of the judge's first token); left out of the win rate"
            )
        if why is not None:
            notes.append(f"length-controlled win rate not computed: {why}")
        metrics: dict[str, float | int | None] = {
            "win_rate": None if mean is None else mean * 100,
            "standard_error": None if error is None else error * 100,
            "discrete_win_rate": None if discrete_mean is None else discrete_mean * 100,
            "n_total": len(preferences),
            "n_wins": sum(v > 0.5 for v in shifted),
            "n_wins_base": sum(v < 0.5 for v in shifted),
            "n_draws": sum(p == 1.5 for p in preferences),
            "n_no_preference": missing,
            "n_identical": identical,
            "length_controlled_win_rate": lc,
            "length_controlled_standard_error": lc_error,
        }
        return EvalSummary(self.name, len(judgments), metrics, notes)

    # --- the length-controlled win rate: the alpaca-eval package's own metric ---

    def _length_controlled(
        self, judgments: Sequence[Judgment]
    ) -> tuple[float | None, float | None, str | None]:
        """The package's LC win rate and its standard error, or why there is none."""
        try:
            from alpaca_eval.metrics import glm_winrate  # type: ignore[import-untyped]
        except Exception as exc:  # ImportError, or the package failing to import its own dependencies
            return (
                None,
                None,
                (
                    "the alpaca-eval package is not installed or does not import "
                    f"({type(exc).__name__}: {exc}); install aftlib[alpaca_eval]"
                ),
            )
        files, why = self._lc_files()
        if why is not None:
            return None, None, why
        try:
            import pandas as pd  # type: ignore[import-untyped]

            gamed = pd.read_csv(files["df_gamed.csv"])
            canonical = int(gamed["index"].nunique())
        except Exception as exc:
            return None, None, f"cannot read {files['df_gamed.csv']}: {type(exc).__name__}: {exc}"
        ordered, why = self._canonical(judgments, canonical)
        if why is not None:
            return None, None, why
        # The metric reads the outputs only through their lengths in characters (``.str.len()``), and the
        # instruction of row i through the row's position: rows go in canonical order, the baseline first.
        rows = []
        for judgment in ordered:
            details = judgment.details
            score = _finite(judgment.score)
            rows.append(
                {
                    "instruction": details.get("instruction"),
                    "output_1": "x" * int(details.get("baseline_chars") or 0),
                    "output_2": "x" * int(details.get("output_chars") or 0),
                    "generator_1": "baseline",
                    "generator_2": "model",
                    "annotator": "aftlib",
                    "preference": math.nan if score is None else score,
                }
            )
        try:
            with _local_hub_files(glm_winrate, files), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's, about the package's calls
                result = glm_winrate.get_length_controlled_winrate(
                    pd.DataFrame(rows), save_weights_dir=None, is_warn_extreme_changes=False
                )
        except Exception as exc:
            return None, None, f"the alpaca-eval package's metric failed: {type(exc).__name__}: {exc}"
        return _finite(result["length_controlled_winrate"]), _finite(result["lc_standard_error"]), None

    def _lc_files(self) -> tuple[dict[str, Path], str | None]:
        """Where the metric's data files are, or why they are missing (never downloaded)."""
        found: dict[str, Path] = {}
        if self.lc_data_dir is not None:
            for name in LC_FILES:
                if (self.lc_data_dir / name).is_file():
                    found[name] = self.lc_data_dir / name
            where = str(self.lc_data_dir)
        else:
            try:
                from alpaca_eval import constants  # type: ignore[import-untyped]
                from huggingface_hub import constants as hub_constants
                from huggingface_hub import try_to_load_from_cache
            except Exception as exc:
                return found, f"cannot look up the Hugging Face cache ({type(exc).__name__}: {exc})"
            cache_dir = constants.DEFAULT_CACHE_DIR
            for name in LC_FILES:
                path = try_to_load_from_cache(_LC_REPO, name, cache_dir=cache_dir, repo_type="dataset")
                if isinstance(path, str):
                    found[name] = Path(path)
            where = f"the Hugging Face cache {cache_dir or hub_constants.HF_HUB_CACHE} (dataset {_LC_REPO})"
        if "df_gamed.csv" not in found:
            return found, (
                f"the data file df_gamed.csv of the dataset {_LC_REPO} is not in {where}; download it there "
                "(or give lc_data_dir, a folder holding it)"
            )
        return found, None

    def _canonical(self, judgments: Sequence[Judgment], canonical: int) -> tuple[list[Judgment], str | None]:
        """The judgments in the AlpacaEval set's canonical order, or why they are not the whole set."""
        if self.instructions is None:
            return [], (
                "the canonical order of the AlpacaEval instructions is unknown (give instructions=, the "
                "baseline outputs file's instructions in order)"
            )
        if len(self.instructions) != canonical or len(set(self.instructions)) != canonical:
            return [], (
                f"it needs the {canonical} distinct instructions of the AlpacaEval set in canonical order; "
                f"instructions= has {len(self.instructions)} ({len(set(self.instructions))} distinct)"
            )
        by_instruction: dict[str, Judgment] = {}
        duplicated = 0
        for judgment in judgments:
            instruction = judgment.details.get("instruction")
            if not isinstance(instruction, str):
                continue
            if instruction in by_instruction:
                duplicated += 1
            by_instruction[instruction] = judgment
        have = sum(instruction in by_instruction for instruction in self.instructions)
        extra = len(set(by_instruction) - set(self.instructions))
        if have < canonical or extra or duplicated:
            return [], (
                f"it needs one judgment for each of the {canonical} AlpacaEval instructions in canonical "
                f"order; {have} of them have one"
                + (f", {extra} judgment(s) match none" if extra else "")
                + (f", {duplicated} instruction(s) are judged twice" if duplicated else "")
            )
        return [by_instruction[instruction] for instruction in self.instructions], None


def _parts(item: EvalItem) -> tuple[str, str, str]:
    where = f"item {item.id!r}"
    if not item.turns:
        raise InputError(
            "the AlpacaEval judge needs the instruction (turns[0]); the item has none", where=where
        )
    if not item.answers:
        raise InputError(
            "the AlpacaEval judge needs the model's output (answers[0]); the item has none", where=where
        )
    if not item.reference:
        raise InputError(
            "the AlpacaEval judge needs the baseline's output (reference[0]); the item has none", where=where
        )
    return item.turns[0], item.answers[0], item.reference[0]


@contextmanager
def _local_hub_files(module: Any, files: Mapping[str, Path]) -> Iterator[None]:
    """Let the package's metric read its dataset files from ``files`` instead of downloading them."""

    def local(*, repo_id: str, filename: str, **_: Any) -> str:
        if repo_id != _LC_REPO or filename not in files:
            raise FileNotFoundError(f"{filename} of the dataset {repo_id} is not available locally")
        return str(files[filename])

    original = module.hf_hub_download
    module.hf_hub_download = local
    try:
        yield
    finally:
        module.hf_hub_download = original
