"""Ready-made topologies.

- :func:`aft`: the propose-and-aggregate inference of the AFT paper (one model drafts, then aggregates
  its own drafts).
"""

from __future__ import annotations

from ._agents import Aggregator, Proposer
from ._errors import ConfigError
from ._topology import Layer, Topology
from ._types import SamplingParams
from .engines._base import Engine

__all__ = ("aft",)


def aft(
    engine: Engine,
    *,
    n: int = 5,
    num_aggregation: int = 2,
    temperature: float = 0.7,
    top_p: float = 0.95,
    max_tokens: int = 4096,
    final_temperature: float = 0.7,
    final_top_p: float = 1.0,
    seed: int | None = None,
) -> Topology:
    r"""The AFT propose-and-aggregate topology, as the paper's released inference does it.

    One model drafts ``n`` proposals (system message ``"\n"``, then the conversation), then
    ``num_aggregation - 1`` aggregation layers each sample ``n`` new answers from the previous layer's
    texts, and a final aggregation samples one answer. At the defaults that is 5 + 5 + 1 = 11 samples
    per query, in three engine requests.

    Args:
        engine: The engine of the AFT model (shared by every agent).
        n: Samples per proposal and intermediate aggregation layer.
        num_aggregation: Aggregation layers, the final one included.
        temperature: Temperature of proposals and intermediate aggregations.
        top_p: Top-p of proposals and intermediate aggregations.
        max_tokens: The most tokens per sample, everywhere.
        final_temperature: Temperature of the final aggregation.
        final_top_p: Top-p of the final aggregation.
        seed: Per-request sampling seed (None: the engine's randomness).

    Returns:
        The topology; run it with ``await topology.run(conversation)``.

    Raises:
        ConfigError: A parameter is out of range.
    """
    if num_aggregation < 1:
        raise ConfigError(
            f"num_aggregation counts the final aggregation and must be >= 1, got {num_aggregation}",
            path="num_aggregation",
        )
    sampling = SamplingParams(temperature, top_p, max_tokens, n, seed)
    final = SamplingParams(final_temperature, final_top_p, max_tokens, 1, seed)
    layers = [Layer(Proposer(engine, sampling=sampling))]
    layers += [Layer(Aggregator(engine, sampling=sampling)) for _ in range(num_aggregation - 1)]
    return Topology(layers, Aggregator(engine, sampling=final, name="final"))
