"""Evaluation: judges that score answers, the ``aftlib eval`` runner, and ablation sweeps.

Judges (:class:`Judge`) score one answer at a time and summarize many: the AlpacaEval 2 weighted
pairwise judge, MT-Bench single-answer grading, and exact answers for math. Sweeps run a grid of
topologies over a prompt set, judge every cell, and draw quality against cost.
"""

from __future__ import annotations

from .._util import publish as _publish
from ._judge import EvalItem, EvalSummary, Judge, Judgment, mean_and_standard_error

# --- judges of pairwise and graded answers (AlpacaEval, MT-Bench) ---

# --- answer extraction, the math judge, answers files and the eval runner ---

# --- the request cache and sweeps ---

__all__ = (
    "EvalItem",
    "EvalSummary",
    "Judge",
    "Judgment",
    "mean_and_standard_error",
)

_publish(globals(), __name__)
