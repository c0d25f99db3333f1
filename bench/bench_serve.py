"""`aftlib serve` under load: 50 concurrent streaming clients over a FakeEngine topology with latency.

The app runs under uvicorn on a loopback port (in a thread of this process, with its own event loop);
the clients stream with httpx. A client answered 429 (the run limit and the queue are full) waits for
its ``retry-after`` (scaled down here) and tries again: the 429s are counted, not errors, and every
client must finish with the whole answer. Side by side, the same topology is run in process with the
same limit, to give the server's added latency per request and the throughput of both. Memory: the
process's RSS after a warm-up wave and after the measured waves.

    .venv/bin/python bench/bench_serve.py [--clients 50] [--waves 20] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import threading
import time
from typing import Any

import anyio
import httpx
import uvicorn

from aftlib import Aggregator, Proposer, SamplingParams, Topology
from aftlib.serve import create_app
from aftlib.testing import FakeEngine

QUESTION = [{"role": "user", "content": "Name a prime number."}]


def topology(latency: float) -> Topology:
    """Three drafts from two proposers, then an aggregator; every request waits ``latency`` seconds."""
    engine = FakeEngine(name="fake", latency=latency)
    return Topology(
        [[Proposer(engine, name="a", sampling=SamplingParams(n=2)), Proposer(engine, name="b")]],
        Aggregator(engine, name="final"),
    )


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class Served:
    """The app under uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", backlog=512)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


async def stream_once(client: httpx.AsyncClient, url: str, counts: dict[str, int]) -> tuple[float, str]:
    """One streamed request to its end, retrying after 429s; returns its latency (first try on) and text."""
    body = {"model": "bench", "messages": QUESTION, "stream": True}
    start = time.perf_counter()
    while True:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code == 429:
                counts["429"] += 1
                await anyio.sleep(float(response.headers["retry-after"]) / 20)
                continue
            if response.status_code != 200:
                counts["errors"] += 1
                raise RuntimeError(f"status {response.status_code}")
            parts, done = [], False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        counts["errors"] += 1
                        raise RuntimeError(chunk["error"]["message"])
                    if chunk["choices"]:
                        parts.append(chunk["choices"][0]["delta"].get("content") or "")
            if not done:
                counts["errors"] += 1
                raise RuntimeError("stream ended without [DONE]")
            return time.perf_counter() - start, "".join(parts)


async def wave(url: str, clients: int, counts: dict[str, int]) -> tuple[float, list[float], list[str]]:
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    latencies: list[float] = []
    texts: list[str] = []
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one() -> None:
            latency, text = await stream_once(client, url, counts)
            latencies.append(latency)
            texts.append(text)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(one)
        return time.perf_counter() - start, latencies, texts


async def in_process_wave(top: Topology, clients: int, limit: int) -> tuple[float, list[float]]:
    limiter = anyio.CapacityLimiter(limit)
    latencies: list[float] = []

    async def one() -> None:
        start = time.perf_counter()
        async with limiter, top.stream(QUESTION) as events:
            async for _ in events:
                pass
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(one)
    return time.perf_counter() - start, latencies


async def single_latencies(url: str, top: Topology, reps: int) -> tuple[list[float], list[float]]:
    """One request at a time: through the server, and in process."""
    served, direct = [], []
    counts = {"429": 0, "errors": 0}
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(reps):
            served.append((await stream_once(client, url, counts))[0])
            start = time.perf_counter()
            async with top.stream(QUESTION) as events:
                async for _ in events:
                    pass
            direct.append(time.perf_counter() - start)
    return served, direct


async def main(clients: int, waves: int, latency: float, max_in_flight: int, max_queue: int) -> None:
    served_top, direct_top = topology(latency), topology(latency)
    expected = (await direct_top.run(QUESTION)).text
    app = create_app({"bench": served_top}, max_in_flight=max_in_flight, max_queue=max_queue, retry_after=1)
    counts = {"429": 0, "errors": 0}
    with Served(app) as served:
        await wave(served.url, clients, counts)  # warm-up
        rss_before = rss_mb()
        walls, latencies, rss = [], [], []
        for _ in range(waves):
            wall, lat, texts = await wave(served.url, clients, counts)
            if len(texts) != clients or any(t != expected for t in texts):
                raise RuntimeError("a client did not get the whole answer")
            walls.append(wall)
            latencies += lat
            rss.append(rss_mb())
        rss_after = rss[-1]
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"{served.url}/health")).json()
        one_served, one_direct = await single_latencies(served.url, direct_top, 30)
    direct_walls = []
    for _ in range(waves):
        wall, _lat = await in_process_wave(direct_top, clients, max_in_flight)
        direct_walls.append(wall)
    total = clients * waves
    served_rps = total / sum(walls)
    direct_rps = total / sum(direct_walls)
    added_ms = 1000 * (statistics.median(one_served) - statistics.median(one_direct))
    if health["peak_in_flight"] > max_in_flight or counts["errors"]:
        raise RuntimeError(f"the limit or the streams failed: {health}, {counts}")
    print(
        f"clients {clients} x {waves} waves, FakeEngine latency {latency} s per request (3 requests per run),"
    )
    print(f"--max-in-flight {max_in_flight}, --max-queue {max_queue}\n")
    print("| measure | through `aftlib serve` | in process |")
    print("|---|---|---|")
    print(f"| requests completed | {total} of {total} | {total} of {total} |")
    print(f"| requests / s (50 concurrent) | {served_rps:.1f} | {direct_rps:.1f} |")
    print(
        f"| median time to answer, one at a time | {1000 * statistics.median(one_served):.1f} ms | "
        f"{1000 * statistics.median(one_direct):.1f} ms |"
    )
    print(f"| added latency per request | {added_ms:.1f} ms | |")
    print(
        f"| p50 / p95 latency under load | {1000 * statistics.median(latencies):.0f} / "
        f"{1000 * statistics.quantiles(latencies, n=20)[-1]:.0f} ms | |"
    )
    print(f"| 429 answers (retried) | {counts['429']} | |")
    print(f"| errors | {counts['errors']} | |")
    print(f"| peak runs in flight (limit {max_in_flight}) | {health['peak_in_flight']} | |")
    middle = rss[len(rss) // 2]
    print(
        f"| RSS after warm-up / wave {len(rss) // 2 + 1} / wave {waves} | {rss_before:.0f} / {middle:.0f} / "
        f"{rss_after:.0f} MB | |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--waves", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=8)
    args = parser.parse_args()
    anyio.run(main, args.clients, args.waves, args.latency, args.max_in_flight, args.max_queue)
