"""A draft's confidence, from the log probabilities of its tokens (DeepConf, arXiv 2508.15260).

The *token confidence* at a position is the negative mean log probability of the most likely tokens
there (the request's top ``logprobs``): high when the model's distribution is peaked, low when it
hesitates among several tokens. A draft's confidence reduces its token confidences to one number:

- ``mean``: their mean over the whole draft (DeepConf's average trace confidence);
- ``lowest_group``: the lowest mean over a sliding window of ``window`` tokens (the *group confidence*;
  a draft shorter than the window is one group), the weakest stretch of the reasoning;
- ``bottom_10``: the mean of the lowest 10 % of the group confidences;
- ``tail``: the mean over the last ``tail`` tokens, where the answer is written;
- ``logprob``: the mean log probability of the tokens generated (a classic baseline; at most 0).

Self-certainty (the divergence of each position's distribution from uniform) needs the whole vocabulary's
distribution; engines give at most the top 20 log probabilities, so it is not offered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from attrs import field, frozen

from ._errors import ConfigError
from ._types import TokenLogprob

__all__ = ("METRICS", "TOP_LOGPROBS", "Confidence", "Metric", "TokenConfidences", "quantile")

Metric = Literal["mean", "lowest_group", "bottom_10", "tail", "logprob"]
METRICS: tuple[Metric, ...] = ("mean", "lowest_group", "bottom_10", "tail", "logprob")
"""The ways to reduce a draft's token confidences to one number."""

TOP_LOGPROBS = 20
"""The top log probabilities asked per token when a strategy needs confidence and the agent asked none
(the most vLLM and the OpenAI API give)."""

_WINDOW = 2048
_TAIL = 2048


def token_confidence(entry: TokenLogprob) -> float:
    """The negative mean log probability of the position's top tokens (the chosen one's when none)."""
    logprobs = [logprob for _, logprob in entry.top] or [entry.logprob]
    finite = [max(lp, -1e4) for lp in logprobs]  # -inf (a token the model rules out) would swamp the mean
    return -sum(finite) / len(finite)


def _floats(value: Iterable[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


@frozen
class TokenConfidences:
    """The token confidences and log probabilities of one draft, in generation order.

    Attributes:
        tokens: The confidence of each generated token (:func:`token_confidence`).
        logprobs: The log probability of each generated token.
    """

    tokens: tuple[float, ...] = field(converter=_floats)
    logprobs: tuple[float, ...] = field(converter=_floats)

    @classmethod
    def of(cls, entries: Sequence[TokenLogprob]) -> TokenConfidences:
        """The confidences of a draft whose tokens have these log probability entries."""
        return cls([token_confidence(e) for e in entries], [max(e.logprob, -1e4) for e in entries])

    def groups(self, window: int) -> list[float]:
        """The mean token confidence of every ``window`` consecutive tokens (one group if shorter)."""
        values = self.tokens
        if not values:
            return []
        if len(values) <= window:
            return [sum(values) / len(values)]
        total = sum(values[:window])
        out = [total / window]
        for i in range(window, len(values)):
            total += values[i] - values[i - window]
            out.append(total / window)
        return out

    def summary(self, window: int = _WINDOW, tail: int = _TAIL) -> dict[str, float | None]:
        """Every metric, as traces record them (None for a draft with no tokens)."""
        return {metric: Confidence(metric, window=window, tail=tail).score(self) for metric in METRICS}


def _check_metric(_: object, __: object, value: str) -> None:
    if value not in METRICS:
        raise ConfigError(f"unknown confidence metric {value!r}; choose {', '.join(METRICS)}", path="metric")


def _check_tokens(name: str) -> Any:
    def check(_: object, __: object, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} is a number of tokens of at least 1, got {value!r}", path=name)

    return check


@frozen
class Confidence:
    """How a draft's token confidences reduce to one score (higher is more confident).

    Attributes:
        metric: ``mean``, ``lowest_group`` (the default, DeepConf's choice for filtering and stopping),
            ``bottom_10``, ``tail`` or ``logprob`` (see the module's description).
        window: Tokens per group for ``lowest_group`` and ``bottom_10`` (DeepConf uses 2048 for long
            reasoning; short answers need a short window).
        tail: Tokens at the end of the draft for ``tail``.
    """

    metric: Metric = field(default="lowest_group", validator=_check_metric)
    window: int = field(default=_WINDOW, validator=_check_tokens("window"), kw_only=True)
    tail: int = field(default=_TAIL, validator=_check_tokens("tail"), kw_only=True)

    def score(self, confidences: TokenConfidences) -> float | None:
        """The draft's score, or None when it has no tokens."""
        if not confidences.tokens:
            return None
        if self.metric == "mean":
            return _mean(confidences.tokens)
        if self.metric == "logprob":
            return _mean(confidences.logprobs)
        if self.metric == "tail":
            return _mean(confidences.tokens[-self.tail :])
        groups = confidences.groups(self.window)
        if self.metric == "lowest_group":
            return min(groups)
        lowest = sorted(groups)[: max(1, math.ceil(len(groups) * 0.1))]
        return _mean(lowest)

    def weight(self, confidences: TokenConfidences | None) -> float:
        """A vote weight, at least 0: the score, or for ``logprob`` the geometric mean probability."""
        score = None if confidences is None else self.score(confidences)
        if score is None:
            return 0.0
        return math.exp(score) if self.metric == "logprob" else max(score, 0.0)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def quantile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile of ``values`` (linear interpolation between order statistics)."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
