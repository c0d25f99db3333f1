"""Ray: map a Ray Dataset through a topology, one topology and its engines per actor.

For users who already run a Ray cluster. Each actor of the pool builds the topology (from a config file
or a factory), starts its engines once, and answers the records of its batches concurrently::

    import ray
    import aftlib.ray

    ds = ray.data.read_json("prompts.jsonl")
    out = aftlib.ray.map_topology(ds, "topology.yaml", actors=4, concurrency=64)
    out.write_json("answers/")

Output rows keep their input columns and add :data:`ADDED_COLUMNS` (``response``, ``status``, ``error``,
``usage``, ``timings``, ...); a record that fails is a row with ``status`` ``"error"``, never a failed
job. Ray is imported on first use; it comes with the ``ray`` extra (``pip install 'aftlib[ray]'``).

The module behind this face: ``aftlib._ray``.
"""

from __future__ import annotations

from ._ray import ADDED_COLUMNS, TopologyFactory, TopologyMapper, map_topology
from ._util import publish as _publish

__all__ = ("ADDED_COLUMNS", "TopologyFactory", "TopologyMapper", "map_topology")

_publish(globals(), __name__)
