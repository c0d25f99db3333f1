"""Off-policy and on-policy aggregation data: choose or draft the proposals, then take the target.

Off-policy proposals are ``k`` of a preference record's own responses; on-policy proposals are ``k``
drafts of the model to be trained, sampled with an in-context-learning prompt. The target is the
best-rated response of the record, or the answer of a stronger aggregator (the final agent of a
topology) over the proposals. Records are processed concurrently and come out in input order; work
that needs an engine can be kept in a draft cache so that a rerun resumes where a crash stopped.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectSendStream
from attrs import define, evolve

from .._agents import Aggregator
from .._errors import AftError, ConfigError
from .._io import fingerprint
from .._logging import get_logger
from .._streams import producer_stream
from .._templates import PromptTemplate, as_template
from .._topology import Topology
from .._types import ChatRequest, SamplingParams
from .._util import unwrap_group
from ..engines._base import Engine
from ._drafts import DraftCache
from ._examples import Example, Skip, examples_for, rng_seed, wants_direct
from ._preference import PreferenceRecord

__all__ = ("ICL_TEMPLATE", "build_off_policy", "build_on_policy", "choose_proposals")

ICL_TEMPLATE = "aft_icl_propose"
"""The built-in in-context-learning template for on-policy drafts."""

T = TypeVar("T")
R = TypeVar("R")
Item = Example | Skip


async def _ordered(
    items: Iterable[T], work: Callable[[T], Awaitable[R]], window: int, emit: Callable[[R], Awaitable[None]]
) -> None:
    """Run ``work`` over ``items`` concurrently and hand the results to ``emit`` in input order.

    At most ``window`` items are in flight or finished but not yet handed over, so a slow item holds
    back at most ``window`` others. Cancelling the caller cancels the work.
    """
    send, receive = anyio.create_memory_object_stream[tuple[anyio.Event, list[R]]](math.inf)
    slots = anyio.Semaphore(window)  # bounds the stream too: one entry per slot

    async def run_one(item: T, done: anyio.Event, box: list[R]) -> None:
        box.append(await work(item))
        done.set()

    async def produce(tg: anyio.abc.TaskGroup) -> None:
        async with send:
            for item in items:
                await slots.acquire()
                done, box = anyio.Event(), list[R]()
                tg.start_soon(run_one, item, done, box)
                await send.send((done, box))

    with unwrap_group():
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(produce, tg)
            async for done, box in receive:
                await done.wait()
                await emit(box[0])
                slots.release()


def _cache_key(record: PreferenceRecord) -> str:
    source = record.source
    return source.key if source.id is not None else f"{source.file} {source.key}"


def _unique(records: Iterable[PreferenceRecord | Skip]) -> Iterator[PreferenceRecord | Skip]:
    """Records with an id seen before become skips: their proposals and cached work would collide."""
    seen: dict[str, int] = {}
    for record in records:
        if isinstance(record, PreferenceRecord):
            key = _cache_key(record)
            if key in seen:
                detail = f"id {record.source.id!r} was already used on line {seen[key]}"
                record = Skip("duplicate id", detail, record.source)
            else:
                seen[key] = record.source.line
        yield record


def choose_proposals(record: PreferenceRecord, k: int, seed: int, *, spare_best: bool) -> list[str] | None:
    """Choose ``k`` of a record's responses, in a random order fixed by ``seed`` and the record.

    Args:
        record: The record.
        k: How many proposals.
        seed: The seed; with the record's id (or line) it fixes the choice and the order.
        spare_best: Choose among the responses other than the best-rated one when there are at least
            ``k`` of them (the target is then not among the proposals); else choose among all.

    Returns:
        The proposals' texts, or None when the record has fewer than ``k`` responses.
    """
    pool = list(range(len(record.responses)))
    if spare_best and record.best is not None:
        rest = [i for i in pool if i != record.best]
        if len(rest) >= k:
            pool = rest
    if len(pool) < k:
        return None
    chosen = random.Random(rng_seed(seed, "proposals", record.source.key)).sample(pool, k)
    return [record.responses[i].text for i in chosen]


def _check(k: int, direct_ratio: float, concurrency: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be an integer of at least 1, got {k!r}", path="k")
    if not 0 <= direct_ratio <= 1:
        raise ConfigError(
            f"direct_ratio is direct examples per aggregation example, in [0, 1]; got {direct_ratio}",
            path="direct_ratio",
        )
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}", path="concurrency")


def _agent_settings(agent: Any) -> dict[str, Any]:
    engine = agent.engine
    return {
        "agent": type(agent).__name__,
        "name": agent.name,
        "engine": engine.name,
        "model": engine.model,
        "template": agent.template.name,
        "sampling": attrs.asdict(agent.sampling),
        "lora": agent.lora,
        "shuffle": getattr(agent, "shuffle", None),
        "window": getattr(agent, "window", None),
    }


def describe_target(target: Topology | None) -> dict[str, Any]:
    """The target mode as the data card records it."""
    if target is None:
        return {"mode": "best"}
    return {"mode": "engine", **_agent_settings(target.final)}


def _check_target(target: Topology | None) -> None:
    if target is None:
        return
    if not isinstance(target, Topology):
        raise ConfigError(f"target must be a Topology or None, got {type(target).__name__}", path="target")
    if not isinstance(target.final, Aggregator):
        raise ConfigError(
            f"the target topology's final agent {target.final.name!r} is a {type(target.final).__name__}; "
            "it must be an aggregator, which reads the proposals",
            path="final",
        )


@define
class _Builder:
    """What one build needs per record; its methods turn one record into its examples or a skip."""

    k: int
    seed: int
    template: PromptTemplate
    direct_ratio: float
    target: Topology | None
    cache: DraftCache | None
    engine: Engine | None = None
    drafting: SamplingParams | None = None
    icl: PromptTemplate | None = None
    lora: str | None = None
    drafts_settings: str = ""
    reused: int = 0
    generated: int = 0

    def examples(self, record: PreferenceRecord, proposals: Sequence[str], target: str) -> list[Item]:
        direct = wants_direct(self.seed, record.source.key, self.direct_ratio)
        return list(
            examples_for(
                record.conversation,
                proposals,
                target,
                source=record.source,
                template=self.template,
                direct=direct,
            )
        )

    def _stored(self, record: PreferenceRecord, part: str, settings: str) -> Any | None:
        if self.cache is None:
            return None
        value = self.cache.get(_cache_key(record), part, settings)
        if value is not None:
            self.reused += 1
        return value

    def _keep(self, record: PreferenceRecord, part: str, settings: str, value: Any) -> None:
        self.generated += 1
        if self.cache is not None:
            self.cache.put(_cache_key(record), part, settings, value)

    async def target_text(self, record: PreferenceRecord, proposals: Sequence[str]) -> str | Skip:
        """The target: the best-rated response, or the target aggregator's answer over ``proposals``."""
        if self.target is None:
            assert record.best is not None
            return record.responses[record.best].text
        settings = fingerprint({"target": describe_target(self.target), "proposals": list(proposals)})
        text = self._stored(record, "target", settings)
        if text is None:
            log = get_logger(__name__, record=record.source.key, file=record.source.file)
            try:
                (answer,), _ = await self.target.final.run(record.conversation, proposals, layer=0, emit=None)
            except AftError as exc:  # an engine failure skips this record, counted and listed
                log.warning("target engine failed", error=repr(exc))
                return Skip("target engine failed", f"{type(exc).__name__}: {exc}", record.source)
            text = answer.text
            self._keep(record, "target", settings, text)
        if not isinstance(text, str) or not text.strip():
            return Skip("empty target", "the target engine answered with empty text", record.source)
        return text

    def unrated(self, record: PreferenceRecord) -> Skip | None:
        """A skip when the best-rated response is the target and the record cannot tell which it is."""
        if self.target is not None or record.best is not None:
            return None
        if record.layout == "prompt":
            detail = "the record has no responses; it needs an engine target"
            return Skip("no responses", detail, record.source)
        if not record.responses:
            return Skip("too few responses", "every response is empty", record.source)
        return Skip("missing score", record.missing_score or "no score", record.source)

    async def off_policy(self, item: PreferenceRecord | Skip) -> list[Item]:
        """One record's off-policy examples: k of its responses, then the target."""
        if isinstance(item, Skip):
            return [item]
        skip = self.unrated(item)
        if skip is not None:
            return [skip]
        proposals = choose_proposals(item, self.k, self.seed, spare_best=self.target is None)
        if proposals is None:
            dropped = f" ({item.dropped} empty dropped)" if item.dropped else ""
            return [
                Skip(
                    "too few responses",
                    f"{len(item.responses)} usable responses{dropped}, k is {self.k}",
                    item.source,
                )
            ]
        target = await self.target_text(item, proposals)
        return [target] if isinstance(target, Skip) else self.examples(item, proposals, target)

    async def drafts(self, record: PreferenceRecord) -> list[str] | Skip:
        """The engine's k drafts for the record's conversation (or the stored ones)."""
        assert self.engine is not None
        assert self.drafting is not None
        assert self.icl is not None
        texts = self._stored(record, "drafts", self.drafts_settings)
        if texts is None:
            sampling = evolve(self.drafting, n=self.k, seed=rng_seed(self.seed, "drafts", record.source.key))
            request = ChatRequest(self.icl.messages(record.conversation, []), sampling, self.lora)
            log = get_logger(__name__, record=record.source.key, file=record.source.file)
            try:
                completion = await self.engine.generate(request)
            except AftError as exc:  # an engine failure skips this record, counted and listed
                log.warning("drafting engine failed", error=repr(exc))
                return Skip("drafting engine failed", f"{type(exc).__name__}: {exc}", record.source)
            texts = [s.text for s in sorted(completion.samples, key=lambda s: s.index)]
            self._keep(record, "drafts", self.drafts_settings, texts)
        drafts = [t for t in texts if isinstance(t, str) and t.strip()]
        if len(drafts) < self.k:
            return Skip("too few drafts", f"{len(drafts)} of {self.k} drafts have text", record.source)
        return drafts

    async def on_policy(self, item: PreferenceRecord | Skip) -> list[Item]:
        """One record's on-policy examples: k drafts of the engine, then the target."""
        if isinstance(item, Skip):
            return [item]
        skip = self.unrated(item)
        if skip is not None:
            return [skip]
        drafts = await self.drafts(item)
        if isinstance(drafts, Skip):
            return [drafts]
        target = await self.target_text(item, drafts)
        return [target] if isinstance(target, Skip) else self.examples(item, drafts, target)


async def _run(
    builder: _Builder,
    records: Iterable[PreferenceRecord | Skip],
    work: Callable[[PreferenceRecord | Skip], Awaitable[list[Item]]],
    concurrency: int,
    send: MemoryObjectSendStream[Item],
) -> None:
    log = get_logger(__name__)

    async def emit(items: list[Item]) -> None:
        for item in items:
            await send.send(item)

    async with AsyncExitStack() as stack:
        engines = [] if builder.engine is None else [builder.engine]
        if builder.target is not None:
            engines += [e for e in builder.target.engines if e is not builder.engine]
        for engine in engines:
            await stack.enter_async_context(engine)
        if builder.cache is not None:
            builder.cache.open()
            stack.callback(builder.cache.close)
            log.info("draft cache", path=str(builder.cache.path), entries=len(builder.cache))
        await _ordered(_unique(records), work, concurrency, emit)
        if builder.cache is not None:
            log.info("generation done", generated=builder.generated, reused=builder.reused)


def build_off_policy(
    records: Iterable[PreferenceRecord | Skip],
    *,
    k: int = 4,
    seed: int = 0,
    target: Topology | None = None,
    direct_ratio: float = 0.0,
    template: str | PromptTemplate = "aft_aggregate",
    concurrency: int = 64,
    cache: str | os.PathLike[str] | None = None,
) -> AbstractAsyncContextManager[AsyncIterator[Example | Skip]]:
    """Aggregation examples from preference records: k of each record's responses as the proposals.

    With the best-rated response as the target (``target=None``), the proposals are drawn from the
    record's other responses when it has at least ``k`` of them, else from all of them (the target then
    is among the proposals); a record needs every score to tell which response is best. With a target
    topology, the proposals are any ``k`` responses and the target is the answer of the topology's final
    aggregator over them (its engines are started here if they are not already).

    Args:
        records: Preference records (and skips, passed through), as :func:`read_preferences` yields.
        k: Proposals per example.
        seed: Fixes, per record, which responses are chosen and their order, and which records get a
            direct example.
        target: None for the best-rated response, or a topology whose final aggregator writes the target.
        direct_ratio: Direct examples per aggregation example, in [0, 1]: a seeded choice of records
            also gets a direct example with the same target.
        template: The aggregation template of the examples (the one the model will be served with).
        concurrency: Records in flight at once (when a target engine works).
        cache: A draft cache file (:class:`DraftCache`) that keeps the targets as they are generated,
            so a rerun reuses them (``aftlib data`` uses ``OUT.drafts.jsonl``).

    Returns:
        A context manager that runs the build in a task it owns and gives each record's examples (its
        aggregation example, then its direct example if chosen), or a :class:`~aftlib.finetune.Skip`
        saying why it has none, in input order: ``async with build_off_policy(...) as items: async
        for item in items: ...``; pass ``items`` to :func:`~aftlib.finetune.write_dataset`. Leaving the
        block early cancels the work.

    Raises:
        ConfigError: A bad parameter, or a target topology whose final agent is not an aggregator.
    """
    _check(k, direct_ratio, concurrency)
    _check_target(target)
    drafts = None if cache is None else DraftCache(cache)
    builder = _Builder(k, seed, as_template(template), direct_ratio, target, drafts)
    return producer_stream(partial(_run, builder, records, builder.off_policy, concurrency))


def drafting_settings(
    engine: Engine, sampling: SamplingParams, icl: PromptTemplate, lora: str | None, k: int, seed: int
) -> dict[str, Any]:
    """What makes the on-policy drafts, for the draft cache and the data card."""
    return {
        "engine": engine.name,
        "model": engine.model,
        "template": icl.name,
        "lora": lora,
        "k": k,
        "seed": seed,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "stop": list(sampling.stop),
    }


def build_on_policy(
    engine: Engine,
    records: Iterable[PreferenceRecord | Skip],
    *,
    k: int = 4,
    seed: int = 0,
    sampling: SamplingParams | None = None,
    icl_template: str | PromptTemplate = ICL_TEMPLATE,
    lora: str | None = None,
    target: Topology | None = None,
    direct_ratio: float = 0.0,
    template: str | PromptTemplate = "aft_aggregate",
    concurrency: int = 64,
    cache: str | os.PathLike[str] | None = None,
) -> AbstractAsyncContextManager[AsyncIterator[Example | Skip]]:
    """Aggregation examples whose proposals are drafts of ``engine`` (the model to be trained).

    For each record, one request samples ``k`` drafts with the in-context-learning prompt (a system
    message with a few demonstrations, then the conversation), seeded per record from ``seed``. Drafts
    with no text are dropped; a record left with fewer than ``k`` is skipped. The target is the record's
    best-rated response, or the answer of ``target``'s final aggregator over the drafts.

    Args:
        engine: The drafting engine (started here if it is not already).
        records: Preference records (and skips, passed through); with a target topology, records of
            layout ``"prompt"`` (no responses) work too.
        k: Drafts per record, sampled in one request (``n=k``).
        seed: Seeds each record's request, and the choice of records that get a direct example.
        sampling: Temperature, top_p, max_tokens and stop strings of the drafts (``n`` and ``seed`` are
            set here); default temperature 0.7, top_p 0.95, 1024 tokens.
        icl_template: The prompt template of the drafts (a built-in name or a ``.j2`` path).
        lora: A LoRA adapter of ``engine`` to draft with.
        target: None for the best-rated response, or a topology whose final aggregator writes the target.
        direct_ratio: Direct examples per aggregation example, in [0, 1].
        template: The aggregation template of the examples.
        concurrency: Records in flight at once.
        cache: A draft cache file (:class:`DraftCache`) that keeps the drafts (and targets) as they
            are generated: a rerun with the same settings reuses them and generates only what is
            missing (``aftlib data`` uses ``OUT.drafts.jsonl``).

    Returns:
        A context manager giving each record's examples, or a :class:`~aftlib.finetune.Skip` saying why
        it has none, in input order (used as for :func:`build_off_policy`).

    Raises:
        ConfigError: A bad parameter, or a target topology whose final agent is not an aggregator.
    """
    _check(k, direct_ratio, concurrency)
    _check_target(target)
    if not isinstance(engine, Engine):
        raise ConfigError(f"engine must be an aftlib Engine, got {type(engine).__name__}", path="engine")
    if lora is not None:
        engine.check_adapter(lora)
    drafting = sampling or SamplingParams(temperature=0.7, top_p=0.95, max_tokens=1024)
    icl = as_template(icl_template)
    drafts = None if cache is None else DraftCache(cache)
    builder = _Builder(
        k,
        seed,
        as_template(template),
        direct_ratio,
        target,
        drafts,
        engine=engine,
        drafting=drafting,
        icl=icl,
        lora=lora,
        drafts_settings=fingerprint(drafting_settings(engine, drafting, icl, lora, k, seed)),
    )
    return producer_stream(partial(_run, builder, records, builder.on_policy, concurrency))
