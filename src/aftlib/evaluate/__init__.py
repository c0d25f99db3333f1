"""Evaluation: judges that score answers, the ``aftlib eval`` runner, and ablation sweeps.

Judges (:class:`Judge`) score one answer at a time and summarize many: the AlpacaEval 2 weighted
pairwise judge, MT-Bench single-answer grading, and exact answers for math. Sweeps run a grid of
topologies over a prompt set, judge every cell, and draw quality against cost.
"""

from __future__ import annotations

from .._extract import STRATEGIES, AnswerExtractor, Extracted, normalize_answer
from .._util import publish as _publish
from ._alpaca import AlpacaEvalJudge, alpaca_eval_preference, alpaca_eval_switched
from ._answers import (
    ANSWER_LAYOUTS,
    Answer,
    AnswersFile,
    GoldAnswers,
    Joined,
    Question,
    join_alpaca_eval,
    join_math,
    join_mt_bench,
    read_answers,
    read_baseline,
    read_gold,
    read_questions,
    read_references,
)
from ._evaluation import EvalReport, Evaluation, eval_path, judge_settings
from ._factory import JUDGES, JoinedAnswers, JudgeSetup, join_answers, judge_from_config, read_judge_config
from ._judge import EvalItem, EvalSummary, Judge, Judgment, mean_and_standard_error
from ._math import SYMBOLIC_TIMEOUT, MathJudge, answers_match, compare_answers
from ._mtbench import REFERENCE_CATEGORIES, MTBenchJudge, mt_bench_rating
from ._pareto import pareto_front
from ._report import markdown_table
from ._sweep import CellResult, Sweep, SweepCell, SweepConfig, SweepJudgeConfig, SweepReport, parse_key_path

__all__ = (
    "JUDGES",
    "JoinedAnswers",
    "JudgeSetup",
    "join_answers",
    "judge_from_config",
    "read_judge_config",
    "SYMBOLIC_TIMEOUT",
    "EvalItem",
    "EvalSummary",
    "Judge",
    "Judgment",
    "mean_and_standard_error",
    # judges of pairwise and graded answers (AlpacaEval, MT-Bench)
    "REFERENCE_CATEGORIES",
    "AlpacaEvalJudge",
    "MTBenchJudge",
    "alpaca_eval_preference",
    "alpaca_eval_switched",
    "mt_bench_rating",
    # answer extraction, the math judge, answers files and the eval runner
    "ANSWER_LAYOUTS",
    "STRATEGIES",
    "Answer",
    "AnswerExtractor",
    "AnswersFile",
    "EvalReport",
    "Evaluation",
    "Extracted",
    "GoldAnswers",
    "Joined",
    "MathJudge",
    "Question",
    "answers_match",
    "compare_answers",
    "eval_path",
    "join_alpaca_eval",
    "join_math",
    "join_mt_bench",
    "judge_settings",
    "normalize_answer",
    "read_answers",
    "read_baseline",
    "read_gold",
    "read_questions",
    "read_references",
    # the request cache and sweeps
    "CellResult",
    "Sweep",
    "SweepCell",
    "SweepConfig",
    "SweepJudgeConfig",
    "SweepReport",
    "markdown_table",
    "pareto_front",
    "parse_key_path",
)

_publish(globals(), __name__)
