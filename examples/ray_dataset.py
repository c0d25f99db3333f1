"""A Ray Dataset mapped through a topology: one topology and its engines per Ray actor.

``aftlib.ray.map_topology`` sends the rows of a Ray Dataset to a pool of actors. Each actor builds the
topology once (from a config file, or from a factory: engines cannot be pickled, so they are built in
the actor), starts its engines, and answers the records of its batches concurrently. Every output row
keeps its input columns and adds ``response``, ``status``, ``error``, ``usage`` and ``timings``; a record
that fails is a row with ``status: error``, and the job goes on.

By default the script starts a vLLM OpenAI-compatible server on the tiny random-weight Llama of
``aftlib.testing`` (built on first use and run on CPU: its text is meaningless, but every request is
real) and two actors answer the sample prompts through it, each with an ``OpenAIEngine`` built by a
factory. ``--dry-run`` maps the same prompts through ``examples/configs/dry_run.yaml`` (a fake engine,
no model) instead. With ``--config`` any topology file is used, as ``aftlib run --config`` takes it.

``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` when it is set, and otherwise starts a local
one on this machine.

Run it with::

    python examples/ray_dataset.py                  # a tiny vLLM server and 2 actors (a minute on CPU)
    python examples/ray_dataset.py --dry-run        # a fake engine: no model, a few seconds
    python examples/ray_dataset.py --config topology.yaml --input prompts.jsonl --output answers/
    python examples/ray_dataset.py --config topology.yaml --actors 4 --concurrency 64 --num-gpus 1
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.resources
import os
from collections.abc import Iterator
from pathlib import Path

import ray
import ray.data

import aftlib.ray
from aftlib import Topology, presets
from aftlib.engines import OpenAIEngine

DRY_RUN = Path(__file__).resolve().parent / "configs" / "dry_run.yaml"


def served_topology(base_url: str) -> Topology:
    """The factory each actor calls: AFT with two drafts, on the server at ``base_url``."""
    engine = OpenAIEngine("tiny-served", base_url, name="tiny")
    return presets.aft(engine, n=2, num_aggregation=1, max_tokens=24, seed=0)


@contextlib.contextmanager
def tiny_server() -> Iterator[str]:
    """A vLLM OpenAI-compatible server on the tiny model, on a loopback port, for the script's run."""
    from aftlib.testing import tiny_model_path, vllm_server

    print("starting a vLLM server on the tiny model (a minute or so on a small CPU machine)", flush=True)
    with vllm_server(tiny_model_path(), served_model_name="tiny-served") as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="a topology file (default: a tiny vLLM server)")
    source.add_argument("--dry-run", action="store_true", help="a fake engine instead of a model")
    parser.add_argument("--input", help="a JSONL file of records (default: aftlib's sample prompts)")
    parser.add_argument("--output", help="a folder to write the answers to as JSON lines")
    parser.add_argument("--actors", type=int, default=2, help="actors, one topology each (default 2)")
    parser.add_argument("--concurrency", type=int, default=16, help="records in flight per actor")
    parser.add_argument("--num-gpus", type=float, help="GPUs reserved per actor (for vllm engines)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    prompts = args.input or str(importlib.resources.files("aftlib") / "data" / "sample_prompts.jsonl")
    with contextlib.ExitStack() as stack:
        if args.config is not None or args.dry_run:
            options = {"config": args.config or DRY_RUN}
        else:
            url = stack.enter_context(tiny_server())
            options = {"topology": functools.partial(served_topology, url)}
        ray.init(include_dashboard=False, log_to_driver=False)
        stack.callback(ray.shutdown)
        ray.data.DataContext.get_current().enable_progress_bars = False

        ds = ray.data.read_json(prompts)
        out = aftlib.ray.map_topology(
            ds,
            actors=args.actors,
            concurrency=args.concurrency,
            num_cpus=0.5,  # the actors mostly wait on their engines
            num_gpus=args.num_gpus,
            **options,
        )
        if args.output:
            out.write_json(args.output)
            out = ray.data.read_json(args.output)
        rows = sorted(out.take_all(), key=lambda row: str(row["id"]))
    for row in rows:
        answer = " ".join((row["response"] or row["error"] or "").split())[:70]
        usage, elapsed = row["usage"], row["timings"]["elapsed"]
        print(f"{row['id']}: [{row['status']}] {answer}")
        print(f"    {usage['requests']} requests, {usage['completion_tokens']} tokens, {elapsed:.2f} s")
    done = sum(row["status"] == "done" for row in rows)
    print(f"records: {len(rows)}, done: {done}, failed: {len(rows) - done}")
    if args.output:
        print(f"answers written to {args.output}/")


# The vLLM server and Ray's workers start new processes: run only as a script.
if __name__ == "__main__":
    main()
