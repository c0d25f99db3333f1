"""Answering one input record: its turns one after another, timed, a runtime failure kept as data.

Shared by the :class:`~aftlib.Runner` and the Ray mapper, so that both answer follow-up turns, time the
first answer token and tell a failed record the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import frozen

from .._errors import AftError, QuorumError
from .._logging import get_logger
from .._records import InputRecord
from .._results import AgentFailure, Result
from .._topology import Topology
from .._trace import failure_dict, trace
from .._types import Message, Usage, tools_of

__all__ = ("Answered", "answer_record")


@frozen
class Answered:
    """One record, answered or failed.

    Attributes:
        record: The input record.
        results: The result of each turn answered (the turns before a failure included).
        error: The runtime failure that stopped it (an :class:`~aftlib.AftError`), or None.
        elapsed: Seconds from its first request to its answer (or failure).
        first_token: Seconds to the first token of its first turn's answer, if one came.
    """

    record: InputRecord
    results: tuple[Result, ...]
    error: AftError | None
    elapsed: float
    first_token: float | None

    @property
    def done(self) -> bool:
        """True when every turn was answered."""
        return self.error is None

    @property
    def usage(self) -> Usage:
        """The tokens of every turn answered."""
        return Usage.sum(r.usage for r in self.results)

    @property
    def quorum_failures(self) -> list[AgentFailure]:
        """The agents whose failures left a layer short of its quorum and stopped the record."""
        return list(self.error.failures) if isinstance(self.error, QuorumError) else []

    @property
    def failures(self) -> list[AgentFailure]:
        """The agents that failed: in the answered turns, then those of a quorum failure."""
        return [f for r in self.results for f in r.failures] + self.quorum_failures

    @property
    def error_text(self) -> str | None:
        """``"ErrorType: message"`` of the failure, or None."""
        return None if self.error is None else f"{type(self.error).__name__}: {self.error}"

    def line(self, *, usage: dict[str, Any], with_trace: bool = False) -> dict[str, Any]:
        """The record's output line.

        Its input fields, ``id``, ``status``, the answer (with its ``tool_calls``, if it calls tools) or
        the error, failures, ``usage`` (as given,
        costs included), ``timings`` and, when asked, the trace.
        """
        line: dict[str, Any] = {**self.record.data, "id": self.record.id}
        if self.error is None:
            line.update(status="done", response=self.results[-1].text)
            if self.results[-1].tool_calls:  # OpenAI's shape, as a chat front end would read them
                line["tool_calls"] = [c.to_openai() for c in self.results[-1].tool_calls]
            if self.record.followups:
                line["responses"] = [r.text for r in self.results]
        else:
            line.update(status="error", error=self.error_text)
        if self.failures:
            line["failures"] = [failure_dict(f) for f in self.failures]
        line["usage"] = usage
        line["timings"] = {"elapsed": round(self.elapsed, 4)}
        if self.first_token is not None:
            line["timings"]["first_token"] = round(self.first_token, 4)
        if with_trace:
            line["trace"] = [trace(r) for r in self.results]
        return line


async def answer_record(
    topology: Topology, record: InputRecord, *, order: int, clock: Callable[[], float]
) -> Answered:
    """Run ``record``'s turns through ``topology`` at age ``order``.

    A runtime failure (an :class:`~aftlib.AftError`) is kept in the result and logged; any other
    exception is a bug and propagates.
    """
    start = clock()
    first_token: float | None = None

    def on_answer(event: object) -> None:
        nonlocal first_token
        if first_token is None:
            first_token = clock() - start

    conversation = list(record.conversation)
    results: list[Result] = []
    error: AftError | None = None
    try:
        for followup in (None, *record.followups):
            if followup is not None:
                conversation += [Message("assistant", results[-1].text), Message("user", followup)]
            tools, choice = tools_of(record.conversation)  # a record's tools ride with every turn
            results.append(
                await topology.run(
                    conversation, on_answer=on_answer, order=order, tools=tools, tool_choice=choice
                )
            )
    except AftError as exc:  # a failed record is data, never dropped; a bug propagates
        get_logger(__name__).warning("record failed", error=f"{type(exc).__name__}: {exc}")
        error = exc
    return Answered(record, tuple(results), error, clock() - start, first_token)
