"""aftlib.ray maps a Ray Dataset through a topology on a local Ray cluster, one topology per actor."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aftlib.ray
from aftlib import ChatRequest, ConfigError, MissingExtraError, Topology, presets
from aftlib.engines import FakeEngine

pytestmark = [
    pytest.mark.ray,
    # Ray Data's own defaults name options that it has deprecated itself
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

FAKE_CONFIG = """
engines:
  fake: {type: fake}
agents:
  propose: {engine: fake, template: aft_propose, sampling: {n: 2}}
  final: {role: aggregator, engine: fake, template: aft_aggregate}
layers:
  - [propose]
final: final
"""


def _question(request: ChatRequest) -> str:
    return next(m.content for m in reversed(request.messages) if m.role == "user")


class ClosingEngine(FakeEngine):
    """A FakeEngine that, when closed, writes which heavy modules its process loaded into ``marks``."""

    marks: Path | None = None

    async def aclose(self) -> None:
        if self.marks is not None:
            loaded = sorted(m for m in ("vllm", "torch") if m in sys.modules)
            (self.marks / f"closed-{os.getpid()}.json").write_text(json.dumps(loaded), encoding="utf-8")


def scripted_topology(marks: Path | None = None) -> Topology:
    """AFT on a FakeEngine that echoes the question, fails on 'boom', and reports its peak in flight."""
    engine: FakeEngine

    def handler(request: ChatRequest, index: int) -> str:
        question = _question(request)
        if "boom" in question:
            raise RuntimeError(f"the model broke on {question!r}")
        return f"echo: {question} | peak {engine.peak_in_flight}"

    engine = ClosingEngine(handler=handler, latency=0.05, name="scripted")
    engine.marks = marks
    return presets.aft(engine, n=2, num_aggregation=1, max_tokens=16)


def _closed(marks: Path, count: int, timeout: float = 20.0) -> list[list[str]]:
    """The marks of ``count`` closed engines, waiting for them (Ray releases its actors after the job)."""
    deadline = time.monotonic() + timeout
    while len(found := sorted(marks.glob("closed-*.json"))) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return [json.loads(path.read_text(encoding="utf-8")) for path in found]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One small local Ray cluster (2 CPUs, no dashboard) for the session, shut down at the end."""
    try:
        import ray
        import ray.cloudpickle
        import ray.data
    except ImportError:
        pytest.fail("Ray is not installed: pip install -e '.[dev]' (the ray extra)")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        object_store_memory=100 * 1024**2,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    # the factories of this file go to the actors by value: the workers need not import the tests
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()


def _records(count: int) -> list[dict[str, Any]]:
    """Records in three input shapes, each with an extra column to carry through."""
    rows: list[dict[str, Any]] = []
    for i in range(count):
        if i % 3 == 0:
            rows.append({"id": i, "query": [{"role": "user", "content": f"question {i}"}], "tag": f"t{i}"})
        elif i % 3 == 1:
            rows.append({"id": i, "instruction": f"question {i}", "tag": f"t{i}"})
        else:
            rows.append({"id": i, "prompt": f"question {i}", "tag": f"t{i}"})
    return rows


def test_a_config_maps_forty_rows_through_two_actors(ray_cluster: Any, tmp_path: Path) -> None:
    """40 rows through 2 actors of a FakeEngine config: each row once, answered, its columns kept."""
    config = tmp_path / "topology.yaml"
    config.write_text(FAKE_CONFIG, encoding="utf-8")
    ds = ray_cluster.data.from_items(_records(40))
    out = aftlib.ray.map_topology(ds, config, actors=2, concurrency=8, num_cpus=0.25).take_all()
    assert sorted(row["id"] for row in out) == list(range(40))
    for row in out:
        assert row["tag"] == f"t{row['id']}"
        assert row["status"] == "done", row
        assert row["error"] is None
        assert re.fullmatch(r"fake answer [0-9a-f]{8} sample 0", row["response"]), row["response"]
        assert row["usage"]["requests"] == 2  # one draft request (n=2), one final request
        assert row["usage"]["completion_tokens"] == 3 * 5  # 2 drafts + 1 answer, 5 words each
        assert row["timings"]["elapsed"] >= row["timings"]["first_token"] >= 0
    assert {json.dumps(r["query"]) for r in out if r["id"] % 3 == 0} == {
        json.dumps([{"role": "user", "content": f"question {i}"}]) for i in range(0, 40, 3)
    }


def test_a_factory_gives_scripted_answers_and_failed_records_become_error_rows(
    ray_cluster: Any, tmp_path: Path
) -> None:
    """Scripted answers, concurrent inside each actor; failures are error rows; engines close at the end."""
    rows = [{"id": i, "prompt": f"question {i}", "tag": f"t{i}"} for i in range(24)]
    rows[5]["prompt"] = "boom 5"
    rows[9] = {"id": 9, "tag": "t9"}  # no prompt: not a record
    ds = ray_cluster.data.from_items(rows)
    factory = functools.partial(scripted_topology, tmp_path)
    mapped = aftlib.ray.map_topology(ds, topology=factory, actors=2, concurrency=6, num_cpus=0.25)
    out = {row["id"]: row for row in mapped.take_all()}
    assert sorted(out) == list(range(24))
    for i, row in out.items():
        assert row["tag"] == f"t{i}"
        if i in (5, 9):
            continue
        assert row["status"] == "done", row
        assert row["error"] is None
        assert re.fullmatch(rf"echo: question {i} \| peak \d+", row["response"]), row["response"]
    assert max(int(row["response"].rsplit(" ", 1)[1]) for row in out.values() if row["response"]) > 1
    assert out[5]["status"] == "error"
    assert out[5]["response"] is None
    assert "the model broke on 'boom 5'" in out[5]["error"]
    assert out[9]["status"] == "error"
    assert out[9]["error"].startswith("InputError: unrecognised record")
    assert out[9]["usage"]["requests"] == 0
    # each actor closed its engine when Ray released it, and never loaded vLLM or torch
    assert _closed(tmp_path, 2) == [[], []]


@pytest.mark.vllm
def test_an_openai_engine_on_a_real_vllm_server(ray_cluster: Any, openai_server: str, tmp_path: Path) -> None:
    """An OpenAIEngine topology on a loopback vLLM server answers every row through a Ray actor."""
    config = tmp_path / "remote.yaml"
    config.write_text(
        f"""
engines:
  remote: {{type: openai, model: tiny-served, base_url: "{openai_server}"}}
agents:
  draft: {{engine: remote, template: passthrough, sampling: {{n: 2, max_tokens: 8, seed: 1}}}}
  final: {{role: aggregator, engine: remote, template: moa_aggregate, sampling: {{max_tokens: 8, seed: 2}}}}
layers: [[draft]]
final: final
""",
        encoding="utf-8",
    )
    ds = ray_cluster.data.from_items([{"instruction": f"Say {word}."} for word in ("one", "two", "three")])
    out = aftlib.ray.map_topology(ds, config, concurrency=4, num_cpus=0.25).take_all()
    assert sorted(row["instruction"] for row in out) == ["Say one.", "Say three.", "Say two."]
    for row in out:
        assert row["status"] == "done", row["error"]
        assert isinstance(row["response"], str)
        assert row["usage"]["requests"] == 2
        assert 0 < row["usage"]["completion_tokens"] <= 3 * 8


def test_the_mapper_closes_its_engines(tmp_path: Path) -> None:
    """A TopologyMapper starts its engines once, answers a pyarrow batch, and closes them on close()."""
    import pyarrow as pa

    mapper = aftlib.ray.TopologyMapper(topology=functools.partial(scripted_topology, tmp_path), concurrency=4)
    batch = pa.Table.from_pylist([{"prompt": "hi", "response": "old"}, {"prompt": "boom"}])
    out = mapper(batch).to_pylist()
    assert out[0]["status"] == "done"
    assert out[0]["response"].startswith("echo: hi")  # an input column named like an added one is replaced
    assert out[1]["status"] == "error"
    assert list(mapper(batch.slice(0, 0)).column_names) == ["prompt", *aftlib.ray.ADDED_COLUMNS]
    assert _closed(tmp_path, 1, timeout=0) == []
    mapper.close()
    assert len(_closed(tmp_path, 1, timeout=0)) == 1
    mapper.close()  # a second close does nothing
    with pytest.raises(RuntimeError, match="closed"):
        mapper(batch)


def test_bad_arguments_are_refused_before_any_actor_starts(ray_cluster: Any, tmp_path: Path) -> None:
    """A missing or invalid config, both or neither source, or a count below 1 raise ConfigError."""
    ds = ray_cluster.data.from_items([{"prompt": "x"}])
    with pytest.raises(ConfigError, match="not both or neither"):
        aftlib.ray.map_topology(ds)
    with pytest.raises(ConfigError, match="not both or neither"):
        aftlib.ray.map_topology(ds, tmp_path / "x.yaml", topology=scripted_topology)
    with pytest.raises(ConfigError, match=r"x\.yaml"):
        aftlib.ray.map_topology(ds, tmp_path / "x.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(FAKE_CONFIG.replace("engine: fake, template: aft_propose", "engine: nope"), "utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        aftlib.ray.map_topology(ds, bad)
    with pytest.raises(ConfigError, match="actors must be"):
        aftlib.ray.map_topology(ds, topology=scripted_topology, actors=0)
    with pytest.raises(ConfigError, match="concurrency must be"):
        aftlib.ray.map_topology(ds, topology=scripted_topology, concurrency=0)


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Ray installed, map_topology raises MissingExtraError naming the ray extra."""
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"aftlib\[ray\]"):
        aftlib.ray.map_topology(object(), topology=scripted_topology)  # type: ignore[arg-type]


def test_importing_aftlib_ray_does_not_import_ray() -> None:
    """``import aftlib.ray`` is light: Ray is imported when a dataset is mapped."""
    probe = "import sys, aftlib.ray; print('ray' in sys.modules, 'pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out
