"""The request cache: samples keyed by engine, messages, sampling and index, generated once."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from structlog.testing import capture_logs

from aftlib import ChatRequest, Message, SamplingParams, Usage
from aftlib.engines import CachingEngine, FakeEngine, collect
from aftlib.engines._cache import CACHE_FORMAT

pytestmark = pytest.mark.anyio

HELLO = [Message("user", "hello there")]


def _request(
    n: int = 1, *, seed: int | None = None, content: str = "hello there", **sampling: object
) -> ChatRequest:
    return ChatRequest([Message("user", content)], SamplingParams(n=n, seed=seed, **sampling))  # type: ignore[arg-type]


def _counter() -> FakeEngine:
    """A fake engine whose texts differ per call, so a reused sample is told from a regenerated one."""
    calls = [0]

    def handler(request: ChatRequest, index: int) -> str:
        calls[0] += 1
        return f"text number {calls[0]} of sample {index}"

    return FakeEngine(handler=handler, name="fake")


async def test_same_request_twice_makes_one_engine_call(tmp_path: Path) -> None:
    """The second identical request is served from the cache: the engine sees one request, same texts."""
    fake = _counter()
    engine = CachingEngine(fake, tmp_path / "cache", reuse_unseeded=True)
    async with engine:
        first = await engine.generate(_request(2))
        second = await engine.generate(_request(2))
    assert len(fake.requests) == 1
    assert [s.text for s in second.samples] == [s.text for s in first.samples]
    assert [s.index for s in second.samples] == [0, 1]
    assert engine.hits == 2
    assert engine.misses == 2
    assert engine.calls == 1


async def test_more_samples_later_asks_only_for_the_missing_ones(tmp_path: Path) -> None:
    """n=3 then n=5: the second request sends n=2, and the first three samples are the stored ones."""
    fake = _counter()
    engine = CachingEngine(fake, tmp_path / "cache", reuse_unseeded=True)
    first = await engine.generate(_request(3))
    second = await engine.generate(_request(5))
    assert [r.sampling.n for r in fake.requests] == [3, 2]
    assert [s.text for s in second.samples[:3]] == [s.text for s in first.samples]
    assert [s.index for s in second.samples] == [0, 1, 2, 3, 4]
    assert second.usage.requests == 1
    assert second.usage.reused_tokens == sum(s.completion_tokens for s in first.samples)
    assert second.usage.completion_tokens == sum(s.completion_tokens for s in second.samples[3:])
    third = await engine.generate(_request(1))  # a prefix of what is stored: no call
    assert len(fake.requests) == 2
    assert third.samples[0].text == first.samples[0].text


async def test_seeded_missing_samples_move_the_seed_to_the_first_missing_index(tmp_path: Path) -> None:
    """A seeded n=2 then n=4: the engine is asked for n=2 with seed+2 (vLLM seeds sample i with seed+i)."""
    fake = _counter()
    engine = CachingEngine(fake, tmp_path / "cache")
    await engine.generate(_request(2, seed=10))
    await engine.generate(_request(4, seed=10))
    assert [(r.sampling.n, r.sampling.seed) for r in fake.requests] == [(2, 10), (2, 12)]


async def test_different_sampling_messages_or_engine_miss(tmp_path: Path) -> None:
    """Another temperature, max_tokens, seed, stop, message or model is another key: each one is generated."""
    fake = _counter()
    engine = CachingEngine(fake, tmp_path / "cache")
    variants = [
        _request(),
        _request(temperature=0.2),
        _request(max_tokens=7),
        _request(seed=1),
        _request(stop=["x"]),
        _request(logprobs=2),
        _request(content="hello here"),
        ChatRequest(HELLO, SamplingParams(), lora="adapter"),
    ]
    for request in variants:
        await engine.generate(request)
    assert len(fake.requests) == len(variants)
    other = _counter()
    other.name = "other-model"
    await CachingEngine(other, tmp_path / "cache").generate(_request())
    assert len(other.requests) == 1  # same request, another engine: not shared


async def test_unseeded_requests_are_not_reused_across_runs_unless_asked(tmp_path: Path) -> None:
    """By default, as with aftlib run --cache, only seeded requests come from an earlier run's cache.

    reuse_unseeded=True (a sweep's common random numbers) serves unseeded ones from it too.
    """
    first = CachingEngine(_counter(), tmp_path / "cache")
    assert first.reuse_unseeded is False
    await first.generate(_request())
    await first.generate(_request(seed=3))
    fake = _counter()
    strict = CachingEngine(fake, tmp_path / "cache")
    await strict.generate(_request())
    await strict.generate(_request(seed=3))
    assert [r.sampling.seed for r in fake.requests] == [None]  # the seeded one was reused
    again = _counter()
    reuse = CachingEngine(again, tmp_path / "cache", reuse_unseeded=True)
    await reuse.generate(_request())
    assert again.requests == []


async def test_a_cache_of_another_format_is_ignored_with_a_warning(tmp_path: Path) -> None:
    """A folder marked with another cache format is never read: requests are generated, a warning says why."""
    folder = tmp_path / "cache"
    engine = CachingEngine(_counter(), folder)
    await engine.generate(_request())
    (folder / "aftlib-cache.json").write_text(json.dumps({"format": CACHE_FORMAT + 1}))
    fake = _counter()
    later = CachingEngine(fake, folder)
    with capture_logs() as logs:
        await later.generate(_request())
        await later.generate(_request())
    assert len(fake.requests) == 2
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert warnings
    assert "another cache format" in warnings[0]["event"]
    assert warnings[0]["found"] == CACHE_FORMAT + 1


async def test_a_cached_answer_reports_reused_tokens(tmp_path: Path) -> None:
    """A whole hit: completion_tokens=0, requests=0, reused_tokens = the samples' tokens; sums add it."""
    engine = CachingEngine(_counter(), tmp_path / "cache", reuse_unseeded=True)
    fresh = await engine.generate(_request(2))
    hit = await engine.generate(_request(2))
    tokens = sum(s.completion_tokens for s in fresh.samples)
    assert fresh.usage.reused_tokens == 0
    assert fresh.usage.completion_tokens == tokens
    assert (hit.usage.completion_tokens, hit.usage.requests, hit.usage.reused_tokens) == (0, 0, tokens)
    assert hit.usage.prompt_tokens == fresh.usage.prompt_tokens
    assert [s.completion_tokens for s in hit.samples] == [s.completion_tokens for s in fresh.samples]
    assert Usage.sum([fresh.usage, hit.usage]).reused_tokens == tokens


async def test_streams_give_cached_deltas_then_the_completion(tmp_path: Path) -> None:
    """A partly cached stream gives every sample's text at its index and stores the new ones."""
    fake = _counter()
    engine = CachingEngine(fake, tmp_path / "cache", reuse_unseeded=True)
    await engine.generate(_request(1))
    texts: dict[int, str] = {}
    async with engine.stream(_request(3)) as items:
        async for item in items:
            if not hasattr(item, "samples"):
                texts[item.index] = texts.get(item.index, "") + item.text  # type: ignore[union-attr]
            else:
                completion = item
    assert [s.text for s in completion.samples] == [texts[0], texts[1], texts[2]]
    assert [r.sampling.n for r in fake.requests] == [1, 2]
    again = await collect(engine.stream(_request(3)))
    assert [s.text for s in again.samples] == [s.text for s in completion.samples]
    assert len(fake.requests) == 2


async def test_concurrent_identical_requests_generate_once(tmp_path: Path) -> None:
    """Two identical requests in flight at once: the second waits for the first and reuses its samples."""
    fake = FakeEngine(latency=0.05, name="slow")
    engine = CachingEngine(fake, tmp_path / "cache", reuse_unseeded=True)
    out = []

    async def ask() -> None:
        out.append(await engine.generate(_request(2)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        tg.start_soon(ask)
    assert len(fake.requests) == 1
    assert out[0].samples == out[1].samples


async def test_logprobs_survive_the_cache(tmp_path: Path) -> None:
    """A request for log probabilities gets them back from the cache as they were generated."""
    engine = CachingEngine(FakeEngine(name="fake"), tmp_path / "cache", reuse_unseeded=True)
    fresh = await engine.generate(_request(logprobs=1))
    hit = await engine.generate(_request(logprobs=1))
    assert hit.usage.requests == 0
    assert hit.samples[0].logprobs == fresh.samples[0].logprobs is not None


def test_aftlib_run_cache_reuses_seeded_requests_across_runs(tmp_path: Path) -> None:
    """``aftlib run --cache DIR``: a second run reuses the seeded drafts only; --cache-unseeded reuses all."""
    import yaml

    from aftlib.cli import main

    topology = {
        "engines": {"model": {"type": "fake"}},
        "agents": {
            "draft": {"engine": "model", "sampling": {"n": 2, "seed": 7}},
            "final": {"role": "aggregator", "engine": "model"},
        },
        "layers": [["draft"]],
        "final": "final",
    }
    (tmp_path / "moa.yaml").write_text(yaml.safe_dump(topology))
    (tmp_path / "in.jsonl").write_text('{"prompt": "one"}\n{"prompt": "two"}\n')

    def run(name: str, *extra: str) -> list[dict[str, object]]:
        args = ["run", "--config", str(tmp_path / "moa.yaml"), "--input", str(tmp_path / "in.jsonl")]
        args += ["--output", str(tmp_path / name), "--cache", str(tmp_path / "cache"), *extra]
        assert main(args) == 0
        return [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]

    first = run("a.jsonl")
    assert all(line["usage"]["reused_tokens"] == 0 for line in first)  # type: ignore[index]
    second = run("b.jsonl")
    earlier = {line["id"]: line for line in first}  # records finish in any order
    assert sorted(earlier) == sorted(line["id"] for line in second)
    for line in second:
        before = earlier[line["id"]]
        usage: dict[str, int] = line["usage"]  # type: ignore[assignment]
        assert usage["reused_tokens"] > 0  # the seeded drafts
        assert usage["requests"] == 1  # the unseeded final aggregation was generated again
        assert line["response"] == before["response"]
    third = run("c.jsonl", "--cache-unseeded")
    assert all(line["usage"]["requests"] == 0 for line in third)  # type: ignore[index]
