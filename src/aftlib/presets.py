"""Ready-made topologies.

- :func:`aft`: the propose-and-aggregate inference of the AFT paper (one model drafts, then aggregates
  its own drafts).
- :func:`moa`, :func:`moa_lite`: Together's Mixture-of-Agents over several models.
- :func:`self_moa`, :func:`self_moa_seq`: one model sampled k times, then aggregated (all at once, or a
  window at a time with a running synthesis).
- :func:`rsa`: Recursive Self-Aggregation, a population of drafts refined by aggregating random subsets
  of itself, step after step, then a vote (or one last aggregation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ._agents import Agent, Aggregator, Proposer, SequentialAggregator, Subset
from ._errors import ConfigError
from ._extract import AnswerExtractor
from ._topology import Layer, Topology
from ._types import SamplingParams
from ._vote import Vote
from .engines._base import Engine

__all__ = ("aft", "moa", "moa_lite", "rsa", "self_moa", "self_moa_seq")


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


def moa(
    proposers: Sequence[Engine],
    aggregator: Engine,
    *,
    layers: int = 3,
    temperature: float = 0.7,
    max_tokens: int = 512,
    aggregator_temperature: float = 0.7,
    shuffle: int | None = None,
) -> Topology:
    """Together's Mixture-of-Agents: proposer layers, then one aggregator; ``layers`` counts them all.

    Layer 1 sends the conversation unchanged to each proposer (one sample each). Every later layer sends
    each proposer the MoA aggregation prompt over the previous layer's texts, in proposer order, in the
    system message (appended to the conversation's own, if any). The final aggregator does the same over
    the last layer. ``moa([e1, e2, e3], agg, layers=3)`` makes 3 + 3 + 1 requests.

    Args:
        proposers: One engine per proposer (an engine may appear more than once).
        aggregator: The engine of the final aggregator.
        layers: Layers in all, the final aggregation included (at least 2).
        temperature: Proposers' temperature.
        max_tokens: The most tokens per sample.
        aggregator_temperature: The final aggregator's temperature.
        shuffle: A seed to shuffle the references of every aggregation per conversation (None: in order).

    Raises:
        ConfigError: No proposers, or fewer than 2 layers.
    """
    if not proposers:
        raise ConfigError("moa needs at least one proposer engine", path="proposers")
    if layers < 2:
        raise ConfigError(
            f"moa needs at least 2 layers (proposers, then the aggregator), got {layers}", path="layers"
        )
    sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens)
    names = [f"proposer{i + 1}" for i in range(len(proposers))]
    first = Layer(
        [
            Proposer(e, sampling=sampling, template="passthrough", name=n)
            for e, n in zip(proposers, names, strict=True)
        ]
    )
    later = [
        Layer(
            [
                Aggregator(e, sampling=sampling, template="moa_aggregate", name=n, shuffle=shuffle)
                for e, n in zip(proposers, names, strict=True)
            ]
        )
        for _ in range(layers - 2)
    ]
    final = Aggregator(
        aggregator,
        sampling=SamplingParams(temperature=aggregator_temperature, max_tokens=max_tokens),
        template="moa_aggregate",
        shuffle=shuffle,
    )
    return Topology([first, *later], final)


def moa_lite(
    proposers: Sequence[Engine], aggregator: Engine, *, temperature: float = 0.7, max_tokens: int = 512
) -> Topology:
    """MoA-Lite: one layer of proposers, then the aggregator (``moa(..., layers=2)``)."""
    return moa(proposers, aggregator, layers=2, temperature=temperature, max_tokens=max_tokens)


def self_moa(
    engine: Engine,
    k: int = 6,
    *,
    temperature: float = 0.7,
    max_tokens: int = 512,
    aggregator_temperature: float = 0.7,
) -> Topology:
    """Self-MoA: one model sampled ``k`` times (one request), then the same model aggregates the k drafts.

    The drafts come from the conversation unchanged; the aggregation uses the MoA prompt.
    """
    drafts = Proposer(
        engine,
        sampling=SamplingParams(temperature=temperature, max_tokens=max_tokens, n=k),
        template="passthrough",
    )
    final = Aggregator(
        engine,
        sampling=SamplingParams(temperature=aggregator_temperature, max_tokens=max_tokens),
        template="moa_aggregate",
    )
    return Topology([[drafts]], final)


def self_moa_seq(
    engine: Engine,
    k: int = 6,
    window: int = 3,
    *,
    temperature: float = 0.7,
    max_tokens: int = 512,
    aggregator_temperature: float = 0.7,
) -> Topology:
    """Self-MoA-Seq: like :func:`self_moa`, but aggregated ``window`` drafts at a time.

    The first request aggregates drafts 1..window; each later one aggregates the running synthesis with
    the next ``window - 1`` drafts, so the prompt never holds more than ``window`` texts.
    """
    drafts = Proposer(
        engine,
        sampling=SamplingParams(temperature=temperature, max_tokens=max_tokens, n=k),
        template="passthrough",
    )
    final = SequentialAggregator(
        engine,
        sampling=SamplingParams(temperature=aggregator_temperature, max_tokens=max_tokens),
        template="moa_aggregate",
        window=window,
    )
    return Topology([[drafts]], final)


def rsa(
    engine: Engine,
    *,
    population: int = 8,
    k: int = 3,
    steps: int = 2,
    final: Literal["vote", "aggregate"] = "vote",
    temperature: float = 0.7,
    max_tokens: int = 2048,
    seed: int = 0,
    template: str = "rsa_aggregate",
    extractor: AnswerExtractor | None = None,
) -> Topology:
    r"""Recursive Self-Aggregation (RSA, arXiv 2509.26626): a population refined by aggregating subsets.

    Layer 0 samples ``population`` drafts of the conversation in one request. Each of the ``steps``
    layers makes a new population: each of its ``population`` members aggregates its own seeded random
    subset of ``k`` members of the population before (one request each: their prompts differ). A final
    vote keeps the majority answer of the last population (no request), or one last aggregation reads a
    subset of ``k`` of it. ``rsa(e, population=8, k=3, steps=2)`` sends 1 + 8 + 8 requests and a vote.

    Args:
        engine: The model's engine (every agent shares it).
        population: Drafts per population (N).
        k: Members each aggregation reads (K), at most ``population``.
        steps: Aggregation steps (T).
        final: ``"vote"`` (majority of extracted answers) or ``"aggregate"`` (one more aggregation).
        temperature: Sampling temperature everywhere.
        max_tokens: The most tokens per sample.
        seed: Seeds the subsets (and nothing else: samples use the engine's randomness).
        template: The aggregation template (problem and candidates in the user turn).
        extractor: How the vote finds answers (the default: ``####``, "the answer is", ``\boxed{}``, the
            last number).

    Raises:
        ConfigError: ``k`` is larger than ``population``, or a count is below 1.
    """
    for name, value in (("population", population), ("k", k), ("steps", steps)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}", path=name)
    if k > population:
        raise ConfigError(f"k ({k}) cannot exceed the population ({population})", path="k")
    sampling = SamplingParams(temperature=temperature, max_tokens=max_tokens, n=population)
    layers = [Layer(Proposer(engine, sampling=sampling, template="passthrough", name="draft"))]
    for step in range(1, steps + 1):
        aggregate = Aggregator(
            engine, sampling=sampling, template=template, name=f"step{step}", references=Subset(k, seed=seed)
        )
        layers.append(Layer(aggregate))
    last: Agent
    if final == "vote":
        last = Vote(extractor=extractor or AnswerExtractor())
    elif final == "aggregate":
        last = Aggregator(
            engine,
            sampling=SamplingParams(temperature=temperature, max_tokens=max_tokens),
            template=template,
            name="final",
            references=Subset(k, seed=seed),
        )
    else:
        raise ConfigError(f"final is 'vote' or 'aggregate', got {final!r}", path="final")
    return Topology(layers, last)
