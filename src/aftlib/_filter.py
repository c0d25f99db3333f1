"""Read only the most confident candidates: DeepConf's offline filter before a vote or an aggregation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
from attrs import define, evolve, field

from ._agents import Agent, Emit, WrappedAgent
from ._confidence import Confidence
from ._errors import ConfigError
from ._results import Candidate, References
from ._types import Completion, Message

__all__ = ("ConfidenceFilter",)


def _check_keep(_: object, __: object, value: float) -> None:
    if not 0 < value <= 1:
        raise ConfigError(f"keep is a share of the candidates in (0, 1], got {value!r}", path="keep")


def _check_reader(agent: Agent) -> None:
    if not isinstance(agent, Agent) or not agent.reads_references:
        raise ConfigError(
            f"a confidence filter wraps an agent that reads candidates (a vote, an aggregator, a selection), "
            f"got {type(agent).__name__}"
        )


@define(eq=False)
class ConfidenceFilter(WrappedAgent):
    """An aggregator or vote that reads only the ``keep`` share of the candidates with the highest confidence.

    The candidates are scored by :attr:`confidence` (DeepConf filters by the lowest group or the tail
    confidence), the top ``ceil(keep * count)`` are kept, in their layer order, and the wrapped agent
    reads them alone; its candidates record the positions kept (:attr:`Candidate.read`). Candidates
    without a score (no tokens) go last. The topology asks the layer before for log probabilities.

    Attributes:
        agent: The agent that reads the kept candidates.
        keep: The share kept, in (0, 1] (DeepConf keeps 10 % or 90 %).
        confidence: How candidates are scored.
        name: The agent's name; the wrapped agent's by default.
    """

    reads_references: ClassVar[bool] = True

    keep: float = field(default=0.5, converter=float, validator=_check_keep, kw_only=True)
    confidence: Confidence = field(factory=Confidence, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _check_reader(self.agent)

    @property
    def needs_confidence(self) -> bool:
        """True: the candidates are kept by their confidence."""
        return True

    def kept(self, count: int) -> int:
        """How many of ``count`` candidates are kept."""
        return max(1, math.ceil(self.keep * count)) if count else 0

    def generations(self, references: int) -> int:
        """The wrapped agent's, over the kept references."""
        return self.agent.generations(self.kept(references))

    def describe(self) -> dict[str, Any]:
        """The wrapped agent's description, with the filter."""
        spec = {"keep": self.keep, "confidence": attrs.asdict(self.confidence)}
        return {**super().describe(), "filter": spec}

    def choose(self, candidates: Sequence[Candidate]) -> tuple[int, ...]:
        """The positions kept, ascending."""
        scores = [None if c.confidence is None else self.confidence.score(c.confidence) for c in candidates]
        ranked = sorted(range(len(candidates)), key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
        return tuple(sorted(ranked[: self.kept(len(candidates))]))

    async def run(
        self,
        conversation: Sequence[Message],
        references: Sequence[str],
        *,
        layer: int,
        emit: Emit | None,
        is_answer: bool = False,
    ) -> tuple[tuple[Candidate, ...], Completion]:
        """Keep the most confident references, and let the wrapped agent read them."""
        if not isinstance(references, References):
            raise ConfigError(
                f"agent {self.name!r} filters candidates by confidence: give it References (a topology "
                "does), not bare texts"
            )
        kept = self.choose(references.candidates)
        read = References(references.candidates[i] for i in kept)
        candidates, completion = await self.agent.run(
            conversation, read, layer=layer, emit=emit, is_answer=is_answer
        )
        out = tuple(
            evolve(c, read=kept if c.read is None else tuple(kept[i] for i in c.read)) for c in candidates
        )
        return out, completion
