"""SimulatedEngine: continuous batching, FCFS or by priority with preemption, and the runner on it."""

from __future__ import annotations

import json
import statistics
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import trio.testing

from aftlib import ChatRequest, ConfigError, Message, Runner, SamplingParams, presets
from aftlib._priority import STEP, priority
from aftlib.testing import FakeEngine, SimulatedEngine, SimulatedRequest

T = TypeVar("T")


def virtual(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``function(*args)`` on trio in virtual time (a MockClock that jumps when all tasks wait)."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    options = {"clock": clock}
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(
            lambda: anyio.run(function, *args, backend="trio", backend_options=options)
        ).result()


def request(name: str, priority: int = 0, n: int = 1) -> ChatRequest:
    return ChatRequest([Message("user", name)], SamplingParams(n=n), priority=priority)


def fixed(length: int | dict[str, int]) -> Callable[[ChatRequest, int], int]:
    """Lengths: one for every sample, or per request by its user text."""
    if isinstance(length, int):
        return lambda request, index: length
    return lambda request, index: length[request.messages[-1].content]


def unit_engine(**options: Any) -> SimulatedEngine:
    """Steps of 10 ms, no per-sequence or prefill cost: times count steps."""
    return SimulatedEngine(step_cost=0.01, seq_cost=0.0, prefill_cost=0.0, **options)


async def send(engine: SimulatedEngine, requests: list[ChatRequest]) -> None:
    """Send ``requests`` at the same moment, in list order, and wait for all of them."""
    async with anyio.create_task_group() as tg:
        for item in requests:
            tg.start_soon(engine.generate, item)
            await anyio.lowlevel.checkpoint()  # arrival order = list order


def by_name(engine: SimulatedEngine) -> dict[str, SimulatedRequest]:
    return {r.request.messages[-1].content: r for r in engine.stats.requests}


def scheduling_order(engine: SimulatedEngine) -> list[str]:
    entries = by_name(engine)
    return sorted(
        entries, key=lambda name: (entries[name].scheduled, engine.stats.requests.index(entries[name]))
    )


def test_priority_policy_orders_the_queue_by_priority_then_arrival() -> None:
    """Waiting requests are scheduled lowest priority first, equal priorities in arrival order."""
    priorities = {"blocker": -1, "a": 3, "b": 1, "c": 2, "d": 1, "e": 0, "f": 3}
    engine = unit_engine(
        policy="priority",
        max_num_seqs=1,
        lengths=lambda r, i: 5 if r.messages[-1].content == "blocker" else 1,
    )

    virtual(send, engine, [request(name, p) for name, p in priorities.items()])

    assert scheduling_order(engine) == ["blocker", "e", "b", "d", "c", "a", "f"]
    assert engine.supports_priority
    assert engine.stats.preemptions == 0  # the blocker outranks everyone: nothing to preempt
    assert by_name(engine)["e"].scheduled == pytest.approx(0.05)  # right after the blocker's 5 steps


def test_fcfs_ignores_priority() -> None:
    """With the FCFS policy the queue is in arrival order whatever the priorities; nothing is preempted."""
    priorities = {"blocker": 9, "a": 3, "b": 1, "c": 2, "d": 1, "e": 0}
    engine = unit_engine(
        policy="fcfs", max_num_seqs=1, lengths=lambda r, i: 5 if r.messages[-1].content == "blocker" else 1
    )

    virtual(send, engine, [request(name, p) for name, p in priorities.items()])

    assert scheduling_order(engine) == list(priorities)
    assert not engine.supports_priority
    assert engine.stats.preemptions == 0


def test_a_higher_priority_request_preempts_the_lowest_ranked_running_sequence() -> None:
    """A full batch makes room at once: the latest of the lowest priority goes back and recomputes."""
    engine = SimulatedEngine(
        policy="priority",
        max_num_seqs=2,
        step_cost=0.01,
        seq_cost=0.0,
        prefill_cost=0.001,
        prompt_tokens=lambda r: 10,
        lengths=fixed({"low1": 10, "low2": 10, "urgent": 2}),
    )

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, engine, [request("low1", 5), request("low2", 5)])
            await anyio.sleep(0.05)  # both running, several tokens in
            tg.start_soon(engine.generate, request("urgent", 0))

    virtual(scenario)
    low1, low2, urgent = (by_name(engine)[k] for k in ("low1", "low2", "urgent"))
    assert (low1.preemptions, low2.preemptions, urgent.preemptions) == (0, 1, 0)
    assert engine.stats.preemptions == 1
    assert urgent.wait is not None
    assert urgent.wait < 0.02
    assert urgent.finished is not None
    assert low2.finished is not None
    assert urgent.finished < low2.finished
    # low2 had made some tokens when it was preempted; it prefilled them again with its prompt
    assert 3 <= engine.stats.recomputed_tokens <= 6
    assert engine.stats.prefill_tokens == 3 * 10 + 10 + engine.stats.recomputed_tokens
    assert engine.stats.generated_tokens == 10 + 10 + 2  # recomputation does not count as generation


def test_without_preemption_a_higher_priority_request_waits_for_a_free_place() -> None:
    """``preempt=False`` with the priority policy: the urgent request waits for the batch to free a place."""
    engine = unit_engine(
        policy="priority", preempt=False, max_num_seqs=2, lengths=fixed({"low1": 10, "low2": 12, "urgent": 2})
    )

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, engine, [request("low1", 5), request("low2", 5)])
            await anyio.sleep(0.05)
            tg.start_soon(engine.generate, request("urgent", 0))

    virtual(scenario)
    urgent = by_name(engine)["urgent"]
    assert engine.stats.preemptions == 0
    assert urgent.scheduled == pytest.approx(0.10)  # when low1 finished


def test_stats_times_tokens_and_usage() -> None:
    """One request of two samples: step costs, busy time, tokens, usage and texts add up exactly."""
    engine = SimulatedEngine(
        step_cost=0.01, seq_cost=0.001, prefill_cost=0.0001, prompt_tokens=lambda r: 10, lengths=fixed(3)
    )

    completion = virtual(engine.generate, request("q", n=2))

    # step 1: 0.01 + 2 x 0.001 + 0.0001 x (2 x 10) prefill = 0.014; steps 2, 3: 0.012 each
    assert engine.stats.steps == 3
    assert engine.stats.busy == pytest.approx(0.038)
    (entry,) = engine.stats.requests
    assert (entry.arrival, entry.scheduled) == (0.0, 0.0)
    assert entry.finished == pytest.approx(0.038)
    assert entry.latency == pytest.approx(0.038)
    assert entry.lengths == (3, 3)
    assert engine.stats.generated_tokens == 6
    assert engine.stats.prefill_tokens == 20
    assert engine.stats.peak_running == 2
    assert completion.usage.completion_tokens == 6
    assert completion.usage.prompt_tokens == 10
    assert [s.completion_tokens for s in completion.samples] == [3, 3]
    assert [len(s.text.split()) for s in completion.samples] == [3, 3]  # the default texts have the length
    assert engine.load == 0
    assert engine.capacity == 256


def test_default_lengths_depend_on_the_request_not_the_schedule() -> None:
    """Seeded log-normal lengths are a function of the request and sample: same work in any order."""
    engine = SimulatedEngine()
    other = SimulatedEngine()
    requests = [request(f"q{k}", n=3) for k in range(20)]
    first = [engine._draw(r, i) for r in requests for i in range(3)]
    second = [other._draw(r, i) for r in reversed(requests) for i in range(3)]
    assert first == [x for group in reversed([second[k : k + 3] for k in range(0, 60, 3)]) for x in group]
    assert len(set(first)) > 30  # they vary
    assert 60 < statistics.median(first) < 400  # exp(5) is about 150
    reseeded = SimulatedEngine(seed=1)
    assert sum(reseeded._draw(r, 0) != engine._draw(r, 0) for r in requests) > 15


def test_a_custom_inner_engine_writes_the_texts() -> None:
    """Texts come from the inner engine; token counts are the simulated lengths."""
    inner = FakeEngine(handler=lambda r, i: f"text {i}")
    engine = SimulatedEngine(inner, lengths=fixed(4), step_cost=0.001)
    completion = virtual(engine.generate, request("q", n=2))
    assert [s.text for s in completion.samples] == ["text 0", "text 1"]
    assert completion.usage.completion_tokens == 8
    assert len(inner.requests) == 1


def test_cancelled_requests_leave_the_queue_and_the_scheduler_goes_on() -> None:
    """Cancelling the request that runs the scheduler, and one that waits, leaves the others unharmed."""
    engine = unit_engine(max_num_seqs=1, lengths=fixed({"first": 10, "waiting": 5, "last": 3}))
    finished: list[str] = []

    async def one(name: str) -> None:
        await engine.generate(request(name))
        finished.append(name)

    async def scenario() -> None:
        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(0.035):  # "first" drives; it is cancelled mid-step
                async with anyio.create_task_group() as doomed:
                    doomed.start_soon(one, "first")
                    await anyio.lowlevel.checkpoint()
                    doomed.start_soon(one, "waiting")
                    await anyio.lowlevel.checkpoint()
                    tg.start_soon(one, "last")
                    await anyio.sleep_forever()
        assert engine.load == 0

    virtual(scenario)
    entries = by_name(engine)
    assert finished == ["last"]
    assert entries["first"].cancelled
    assert entries["waiting"].cancelled
    assert entries["waiting"].scheduled is None
    assert entries["last"].scheduled == pytest.approx(0.04)  # the step "first" was in still ended at 0.04
    assert entries["last"].finished == pytest.approx(0.07)


@pytest.mark.anyio
async def test_real_time_on_asyncio() -> None:
    """In real time (asyncio) with tiny costs, concurrent requests finish and their times are real."""
    engine = SimulatedEngine(policy="priority", max_num_seqs=4, step_cost=0.001, lengths=fixed(5))
    start = anyio.current_time()
    results = []

    async def one(k: int) -> None:
        results.append(await engine.generate(request(f"q{k}", priority=k % 3, n=2)))

    async with anyio.create_task_group() as tg:
        for k in range(8):
            tg.start_soon(one, k)
    assert len(results) == 8
    assert engine.stats.generated_tokens == 8 * 2 * 5
    assert engine.stats.steps >= 8 * 2 * 5 // 4
    for entry in engine.stats.requests:
        assert entry.finished is not None
        assert start <= entry.arrival <= entry.finished
    assert anyio.current_time() - start >= engine.stats.busy * 0.9


def test_bad_settings_are_refused() -> None:
    """Unknown policy, preemption without priority, and out-of-range sizes raise ConfigError."""
    with pytest.raises(ConfigError, match="unknown policy 'lifo'"):
        SimulatedEngine(policy="lifo")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="preempt=True needs policy='priority'"):
        SimulatedEngine(preempt=True)
    with pytest.raises(ConfigError, match="max_num_seqs must be an integer of at least 1"):
        SimulatedEngine(max_num_seqs=0)
    with pytest.raises(ConfigError, match="step_cost must be a number of seconds >= 0"):
        SimulatedEngine(step_cost=-1)


def _records(path: Path, count: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"r{k}", "query": f"record {k}: question"}) + "\n" for k in range(count))
    )
    return path


def _record_of(entry: SimulatedRequest) -> int:
    """The record a request belongs to, from its text (the query is in every step's prompt)."""
    text = " ".join(m.content for m in entry.request.messages)
    marker = text.index("record ") + len("record ")
    return int(text[marker : text.index(":", marker)])


def test_the_topology_priorities_reach_the_engine() -> None:
    """Priorities: final < aggregation < drafts, and within a step the older record (lower order) first."""
    engine = unit_engine(policy="priority", lengths=fixed(2))

    async def scenario() -> None:
        topology = presets.aft(engine, max_tokens=64)

        async def one(k: int) -> None:
            await topology.run(f"record {k}: question", order=10 + k)

        async with anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(one, k)

    virtual(scenario)
    steps: dict[int, list[int]] = {}
    for entry in engine.stats.requests:  # a record's requests arrive draft, aggregation, final
        steps.setdefault(_record_of(entry), []).append(entry.priority)
    assert sorted(steps) == [0, 1, 2, 3]
    for k, (draft, aggregation, final) in steps.items():
        assert (draft, aggregation, final) == (priority(2, 10 + k), priority(1, 10 + k), priority(0, 10 + k))
        assert final < aggregation < draft
    for step in range(3):
        assert [steps[k][step] for k in range(4)] == sorted(steps[k][step] for k in range(4))
    assert priority(0, 10**6) < priority(1, 0)  # the youngest record's answer before the oldest's draft


def test_the_runner_gives_each_record_one_age_in_input_order(tmp_path: Path) -> None:
    """Under the runner, a record's three requests share its age, and ages follow the input order."""
    engine = unit_engine(policy="priority", lengths=fixed(2))
    source = _records(tmp_path / "in.jsonl", 6)

    async def run() -> None:
        summary = await Runner(presets.aft(engine, max_tokens=64), source, tmp_path / "out.jsonl").run()
        assert summary.done == 6

    virtual(run)
    ages: dict[int, set[int]] = {}
    for entry in engine.stats.requests:
        assert entry.priority // STEP in (0, 1, 2)
        ages.setdefault(_record_of(entry), set()).add(entry.priority % STEP)
    assert all(len(age) == 1 for age in ages.values())
    in_order = [next(iter(ages[k])) for k in range(6)]
    assert in_order == sorted(in_order)
    assert len(set(in_order)) == 6


def _run_records(tmp_path: Path, policy: str, count: int = 40) -> tuple[SimulatedEngine, dict[str, Any]]:
    engine = SimulatedEngine(
        policy=policy,  # type: ignore[arg-type]
        max_num_seqs=16,
        step_cost=0.01,
        seq_cost=0.0002,
        prefill_cost=0.00001,
        mean_log=2.5,  # about 12 tokens a sample
        sigma_log=0.5,
    )
    source = _records(tmp_path / f"{policy}.in.jsonl", count)
    output = tmp_path / f"{policy}.out.jsonl"

    async def run() -> dict[str, Any]:
        topology = presets.aft(engine, max_tokens=256)
        summary = await Runner(topology, source, output, concurrency=count).run()
        assert summary.done == count
        return summary.to_json()

    return engine, virtual(run)


def _overtakes(engine: SimulatedEngine) -> int:
    """Pairs (final F, another record's draft D) where D arrived before F but F was scheduled first."""
    entries = engine.stats.requests
    finals = [e for e in entries if e.priority < STEP]
    drafts = [e for e in entries if e.priority >= 2 * STEP]
    count = 0
    for final in finals:
        for draft in drafts:
            assert final.scheduled is not None
            assert draft.scheduled is not None
            if (
                _record_of(draft) != _record_of(final)
                and draft.arrival < final.arrival
                and final.scheduled < draft.scheduled
            ):
                count += 1
    return count


def _answer_times(engine: SimulatedEngine) -> list[float]:
    """Per record, from its first request's arrival to its final request's last token."""
    first: dict[int, float] = {}
    answer: dict[int, float] = {}
    for entry in engine.stats.requests:
        record = _record_of(entry)
        first.setdefault(record, entry.arrival)
        if entry.priority < STEP:
            assert entry.finished is not None
            answer[record] = entry.finished
    return [answer[k] - first[k] for k in answer]


def test_under_load_a_records_final_request_overtakes_other_records_drafts(tmp_path: Path) -> None:
    """Must show: on a priority scheduler, finals overtake earlier drafts and records answer sooner.

    40 AFT records at once (200 draft sequences for a batch of 16). With the priority policy many records'
    final requests are scheduled before draft requests of other records that reached the engine earlier;
    with FCFS that cannot happen (the queue is in arrival order), and the median time to answer is lower
    with priority, by the engine's clock and by the runner's own summary.
    """
    fcfs, fcfs_summary = _run_records(tmp_path, "fcfs")
    prio, prio_summary = _run_records(tmp_path, "priority")

    assert _overtakes(fcfs) == 0
    overtaking_finals = {
        _record_of(f)
        for f in prio.stats.requests
        if f.priority < STEP
        and any(
            d.priority >= 2 * STEP and d.arrival < f.arrival and f.scheduled < d.scheduled  # type: ignore[operator]
            for d in prio.stats.requests
        )
    }
    assert len(overtaking_finals) >= 10
    assert _overtakes(prio) >= 100
    assert prio.stats.preemptions > 0

    fcfs_p50 = statistics.median(_answer_times(fcfs))
    prio_p50 = statistics.median(_answer_times(prio))
    assert prio_p50 < 0.75 * fcfs_p50
    assert prio_summary["latency"]["p50"] < 0.75 * fcfs_summary["latency"]["p50"]
    # the same work either way (lengths depend on the request), at about the same throughput
    assert prio.stats.generated_tokens == fcfs.stats.generated_tokens
    assert prio.stats.busy < 1.1 * fcfs.stats.busy
