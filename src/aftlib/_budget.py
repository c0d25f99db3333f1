"""Context budget: fit an aggregation prompt into its engine's context window.

When the previous layer's texts do not fit, each reference gets a fair share of the room left: short
references are kept whole, the longest are cut first, to equal lengths, each cut marked visibly. Room
for the answer is kept (a quarter of the window, or ``max_tokens`` if smaller), and ``max_tokens`` is
lowered to what is left. Engines that do not know their context window are sent the prompt unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attrs import evolve

from ._errors import ContextLengthError
from ._types import Cut, Message, SamplingParams
from .engines._base import Engine

__all__ = ("TRUNCATION_MARKER", "fit")

TRUNCATION_MARKER = " [... truncated to fit the context]"
"""Appended to a reference that was cut."""


def fair_shares(lengths: Sequence[int], budget: int) -> list[int]:
    """Water-filling: the longest lengths are lowered first, to a common level, until they fit ``budget``."""
    shares = list(lengths)
    if sum(lengths) <= budget:
        return shares
    remaining, left = budget, len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        share = remaining // left
        shares[i] = min(lengths[i], share)
        remaining -= shares[i]
        left -= 1
    return shares


def fit(
    engine: Engine,
    build: Callable[[Sequence[str]], list[Message]],
    references: Sequence[str],
    sampling: SamplingParams,
) -> tuple[list[Message], SamplingParams, tuple[Cut, ...]]:
    """Build the messages for ``references``, cutting them if the prompt would not fit the engine.

    Args:
        engine: The engine that will run the request.
        build: Renders the request messages for a list of references.
        references: The previous layer's texts.
        sampling: The agent's sampling; ``max_tokens`` is lowered to fit if needed.

    Returns:
        The messages, the sampling to use, and the cuts made (empty when everything fits).

    Raises:
        ContextLengthError: Even with the references cut to nothing, the prompt does not fit.
    """
    messages = build(references)
    window = engine.context_window
    if window is None:
        return messages, sampling, ()
    prompt = engine.count_tokens(messages)
    reserve = min(sampling.max_tokens, max(window // 4, 1))
    cuts: tuple[Cut, ...] = ()
    if prompt + reserve > window and references:
        ids = [engine.text_tokens(r) for r in references]
        marker = len(engine.text_tokens(TRUNCATION_MARKER))
        fixed = engine.count_tokens(build([""] * len(references)))
        budget = window - reserve - fixed
        for _ in range(4):  # tokens can merge across the cut: re-check and tighten
            shares = fair_shares([len(i) + marker for i in ids], max(budget, 0))
            texts, made = [], []
            for index, (tokens, share) in enumerate(zip(ids, shares, strict=True)):
                if share >= len(tokens) + marker:
                    texts.append(references[index])
                    continue
                kept = max(share - marker, 0)
                texts.append(engine.detokenize(tokens[:kept]) + TRUNCATION_MARKER)
                made.append(Cut(index, len(tokens), kept))
            messages, cuts = build(texts), tuple(made)
            prompt = engine.count_tokens(messages)
            over = prompt + reserve - window
            if over <= 0 or budget <= 0:
                break
            budget = max(budget - over, 0)
    if prompt >= window:
        what = "even with the references cut" if references else "before any answer"
        raise ContextLengthError(
            f"engine {engine.name!r}: the prompt needs {prompt} tokens {what}, the context is {window}"
        )
    if sampling.max_tokens > window - prompt:
        sampling = evolve(sampling, max_tokens=window - prompt)
    return messages, sampling, cuts
