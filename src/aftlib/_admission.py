"""How many records the runner has in flight: enough to keep the engines' batches full, no more.

With a fixed ``concurrency`` the runner keeps that many records in flight. Without one it adapts: it
admits a new record while every engine its first layer uses has room in its batch (its
:attr:`~aftlib.engines.Engine.load` below its :attr:`~aftlib.engines.Engine.capacity`, vLLM's
``max_num_seqs``), counting the sequences a new record's first layer asks of each engine. So the engine
runs full batches and its waiting queue stays short: a flooded queue costs time (every waiting request is
scheduled over again at each step, and with first-come-first-served scheduling every record's
aggregation waits behind every other record's drafts). Engines whose batch size is not known (an
OpenAI-compatible server, a test engine) get a fixed number of records in flight instead.
"""

from __future__ import annotations

from collections import defaultdict

import anyio
from attrs import define, field

from ._topology import Topology
from .engines._base import Engine

__all__ = ("UNKNOWN_CAPACITY_RECORDS", "Admission")

UNKNOWN_CAPACITY_RECORDS = 128
"""Records in flight when an engine of the first layer does not say its batch size."""

MAX_RECORDS = 4096
"""Records in flight at most when adapting, whatever the engines take."""

TICK = 0.02
"""Seconds between two looks at the engines' loads while no record finishes."""


def first_layer_demand(topology: Topology) -> dict[Engine, int]:
    """The sequences a new record asks of each engine at once: its first step's samples, per engine."""
    agents = topology.layers[0].agents if topology.layers else (topology.final,)
    demand: dict[Engine, int] = defaultdict(int)
    for agent in agents:
        for engine in agent.engines:
            demand[engine] += agent.samples
    return dict(demand)


@define(eq=False)
class Admission:
    """Decides when the runner may start its next record.

    Args:
        limit: A fixed number of records in flight, or None to follow the engines' loads.
        demand: Per engine, the sequences a new record asks of it at once (:func:`first_layer_demand`).
    """

    limit: int | None
    demand: dict[Engine, int]
    in_flight: int = field(default=0, init=False)
    _changed: anyio.Event = field(factory=anyio.Event, init=False, repr=False)
    _allowance: int = field(default=0, init=False, repr=False)
    _stale: bool = field(default=False, init=False, repr=False)

    @classmethod
    def for_topology(cls, topology: Topology, concurrency: int | None) -> Admission:
        """The admission for ``topology``: ``concurrency`` records at most, or adaptive when None."""
        demand = first_layer_demand(topology)
        if concurrency is None and (not demand or any(engine.capacity is None for engine in demand)):
            concurrency = UNKNOWN_CAPACITY_RECORDS
        return cls(concurrency, demand)

    @property
    def adaptive(self) -> bool:
        """True when the number of records in flight follows the engines' loads."""
        return self.limit is None

    def _room(self) -> int:
        """Records that may start now."""
        if self.limit is not None:
            return self.limit - self.in_flight
        room = MAX_RECORDS - self.in_flight
        for engine, sequences in self.demand.items():
            capacity = engine.capacity or 0
            room = min(room, (capacity - engine.load) // max(sequences, 1))
        return room if self.in_flight else max(room, 1)  # never stall with nothing in flight

    async def wait(self) -> None:
        """Return when one more record may start; the caller then calls :meth:`started`."""
        if self._allowance > 0:
            return
        if self._stale:
            # Records started since the last look send their first requests once they run: give them a
            # tick to show in the engines' loads before looking again.
            await anyio.sleep(TICK)
            self._stale = False
        while True:
            room = self._room()
            if room > 0:
                self._allowance = room
                return
            self._changed = anyio.Event()
            with anyio.move_on_after(None if self.limit is not None else TICK):
                await self._changed.wait()

    def started(self) -> None:
        """A record started."""
        self.in_flight += 1
        self._allowance -= 1
        self._stale = self.limit is None

    def finished(self) -> None:
        """A record finished (in any way)."""
        self.in_flight -= 1
        self._changed.set()
