"""Priority by depth: engines finish records, not layers.

Every request a topology sends carries a priority (:attr:`ChatRequest.priority`, lower runs first, as in
vLLM): first by how many steps the run has left (the final agent's request 0, the last layer's 1, the
drafts the most), then by the run's age (its order among runs, older first). An engine that schedules by
priority (``VLLMEngine`` by default, ``OpenAIEngine`` on a server started with
``--scheduling-policy priority``) then runs a record's aggregation before other records' drafts, so
records finish one after another instead of all together at the end, at the same throughput.

The topology sets the priority of the step it runs in a context variable (:func:`step`); the agents read it
when they build their requests (:func:`current`), so a custom agent gets it without passing it on. A request
built outside any step (a judge's, a data builder's drafts) gets :data:`NEUTRAL`: behind every run's final
answer, never ahead of them.

A run's age is its ``order``: the :class:`~aftlib.Runner` numbers its records from 0 in each run, the Ray
mapper per worker, and a :meth:`Topology.run <aftlib.Topology.run>` given none takes the next number of
this process (:func:`next_order`), so requests served one by one rank oldest first.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ("NEUTRAL", "STEP", "current", "next_order", "priority", "step")

STEP = 1 << 40
"""The priority distance between two steps: room for that many runs' ages within one step."""

NEUTRAL = STEP
"""The priority of a request built outside a topology step: one step before an answer, of the oldest age.

It runs after every run's final request and level with the last layers, never ahead of an answer in flight.
"""

_current: ContextVar[int] = ContextVar("aftlib_priority", default=NEUTRAL)
_orders = itertools.count()


def next_order() -> int:
    """A new run's order: one more than the run before it in this process."""
    return next(_orders)


def priority(steps_left: int, order: int) -> int:
    """The priority of a request ``steps_left`` steps before its run's answer, for the run ``order``."""
    return steps_left * STEP + order % STEP


@contextmanager
def step(value: int) -> Iterator[None]:
    """Requests built inside the block (in this task and the tasks it starts) get priority ``value``."""
    token = _current.set(value)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> int:
    """The priority for a request built now: that of the innermost :func:`step`, else :data:`NEUTRAL`."""
    return _current.get()
