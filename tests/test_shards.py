"""A dataset split over machines: ``--shard I/N`` runs one part, ``aftlib merge`` joins the parts.

The spec and how records are assigned, each shard an ordinary resumable output (killed and rerun), the
merge into input order, and every way a set of outputs that do not belong together is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from aftlib import ConfigError, Runner, Shard, merge_shards, presets
from aftlib._io import exclusive_lock
from aftlib.cli import main
from aftlib.run import percentiles
from aftlib.testing import FakeEngine

FAST = """\
engines:
  fake: {type: fake}
agents:
  draft: {engine: fake, sampling: {n: 2}}
  final: {role: aggregator, engine: fake}
layers:
  - [draft]
final: final
"""
"""Instant fake engines: a run of a dozen records takes a few milliseconds."""

SLOW = FAST.replace("{type: fake}", "{type: fake, latency: 0.03}")
"""The same topology, 0.06 s a record (two requests in turn): a shard of ten at concurrency 1, 0.6 s."""

UNREACHABLE = (
    "engines:\n  api: {type: openai, model: m, base_url: 'http://127.0.0.1:9/v1'}\n"
    "agents:\n  a: {engine: api}\n  j: {engine: api, role: aggregator}\n"
    "layers: [[a]]\nfinal: j\n"
)
"""An engine that cannot start: a command that got as far as starting it would exit 1."""


def prompts(path: Path, count: int, start: int = 0, bad: tuple[int, ...] = ()) -> Path:
    """``count`` prompt records with ids ``start...``; the positions in ``bad`` are broken JSON."""
    rows = [
        "{broken" if i in bad else json.dumps({"id": start + i, "prompt": f"q{start + i}"})
        for i in range(count)
    ]
    path.write_text("".join(row + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("aftlib:")]


def cli(*args: str | Path) -> int:
    return main([str(arg) for arg in args])


# --- the spec --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "index", "count"), [("0/1", 0, 1), ("3/4", 3, 4), (" 2/5 ", 2, 5), ("0/100", 0, 100)]
)
def test_a_shard_spec_is_index_slash_count(spec: str, index: int, count: int) -> None:
    """``I/N`` parses to Shard(I, N), counting from 0; it prints back as I/N and records as a dict."""
    shard = Shard.parse(spec)
    assert shard == Shard(index, count)
    assert str(shard) == f"{index}/{count}"
    assert shard.as_dict() == {"index": index, "count": count}


@pytest.mark.parametrize(
    ("spec", "wrong"),
    [
        ("3/2", "I must be less than N, and 3 is not below 2"),
        ("2/2", "I must be less than N"),
        ("0/0", "N must be at least 1, got 0"),
        ("-1/2", "I must be 0 or more, got -1"),
        ("a/b", "I and N must be whole numbers"),
        ("1", "it has no '/'"),
        ("1/2/3", "whole numbers"),
    ],
)
def test_a_bad_shard_spec_says_what_a_spec_is_and_what_is_wrong(spec: str, wrong: str) -> None:
    """Each bad spec is a ConfigError naming the spec, what a spec is (I/N from 0), and what is wrong."""
    with pytest.raises(ConfigError) as caught:
        Shard.parse(spec)
    message = str(caught.value)
    assert message.startswith(f"invalid shard {spec!r}: a shard is I/N: part I of N, counting from 0")
    assert message.endswith(wrong) or wrong in message


def test_sizes_add_up_to_the_input() -> None:
    """Shard.size(total) is how many of the first total items a shard holds; the sizes sum to total."""
    for count in (1, 2, 3, 4, 7):
        for total in (0, 1, 6, 40, 41):
            sizes = [Shard(i, count).size(total) for i in range(count)]
            assert sum(sizes) == total
            assert sizes == [sum(1 for p in range(total) if Shard(i, count).holds(p)) for i in range(count)]


# --- the runner with a shard -----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
async def test_every_item_lands_in_exactly_one_shard(tmp_path: Path, count: int) -> None:
    """Over N shards, each record is answered by one shard, each bad line reported by one, by position."""
    data = prompts(tmp_path / "in.jsonl", 13, bad=(2, 9))
    answered: dict[int, int] = {}
    reported: dict[int, int] = {}
    for index in range(count):
        out = tmp_path / f"out.{index}.jsonl"
        summary = await Runner(
            presets.aft(FakeEngine(), n=1, num_aggregation=1), data, out, shard=f"{index}/{count}"
        ).run()
        for line in read_jsonl(out):
            assert line["id"] not in answered
            answered[line["id"]] = index
        errors = tmp_path / f"out.{index}.jsonl.errors.jsonl"
        for entry in read_jsonl(errors) if errors.exists() else []:
            assert entry["line"] not in reported
            reported[entry["line"]] = index
        assert summary.records == Shard(index, count).size(13)
    assert answered == {p: p % count for p in range(13) if p not in (2, 9)}
    assert reported == {p + 1: p % count for p in (2, 9)}  # lines count from 1, positions from 0


@pytest.mark.anyio
async def test_limit_counts_input_records_before_sharding(tmp_path: Path) -> None:
    """--limit 10 with shard 1/4: the positions 1, 5, 9 of the first ten input records."""
    data = prompts(tmp_path / "in.jsonl", 20)
    out = tmp_path / "out.jsonl"
    await Runner(
        presets.aft(FakeEngine(), n=1, num_aggregation=1), data, out, limit=10, shard=Shard(1, 4)
    ).run()
    assert sorted(line["id"] for line in read_jsonl(out)) == [1, 5, 9]
    origin = json.loads((tmp_path / "out.jsonl.run.json").read_text())
    assert (origin["shard"], origin["limit"]) == ({"index": 1, "count": 4}, 10)


def test_a_bad_spec_on_the_command_line_is_one_line_before_any_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad --shard (run 3/2, demo 0/0): exit 2, one line, nothing written; the engine never starts."""
    (tmp_path / "remote.yaml").write_text(UNREACHABLE)
    data = prompts(tmp_path / "in.jsonl", 2)
    status = cli(
        "run",
        "--config",
        tmp_path / "remote.yaml",
        "--input",
        data,
        "--output",
        tmp_path / "o.jsonl",
        "--shard",
        "3/2",
    )
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1
    assert err.startswith("aftlib: error: invalid shard '3/2': a shard is I/N")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "remote.yaml"]
    assert cli("demo", "--shard", "0/0", "--output", tmp_path / "d.jsonl") == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("aftlib: error: invalid shard '0/0'")
    assert line.endswith("N must be at least 1, got 0")


def test_rerunning_a_shard_output_with_another_spec_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An output of shard 0/4, rerun as 1/4 or without --shard: exit 2 naming both; nothing is added."""
    (tmp_path / "fast.yaml").write_text(FAST)
    data = prompts(tmp_path / "in.jsonl", 8)
    out = tmp_path / "out.jsonl"
    base = ("run", "--config", tmp_path / "fast.yaml", "--input", data, "--output", out)
    assert cli(*base, "--shard", "0/4") == 0
    made = out.read_text()
    assert cli(*base, "--shard", "0/4") == 0  # the same spec resumes
    capsys.readouterr()
    assert cli(*base, "--shard", "1/4") == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "holds the answers of another run" in line
    assert ", shard 0/4; this run gives " in line
    assert line.count(", shard 1/4.") == 1
    assert cli(*base) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert ", shard 0/4; this run gives " in line
    assert ", no shard." in line
    assert out.read_text() == made
    assert json.loads((tmp_path / "out.jsonl.run.json").read_text())["shard"] == {"index": 0, "count": 4}


# --- four machines, one killed: the must-show --------------------------------------------------------


def start(tmp_path: Path, index: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aftlib",
            "run",
            "--config",
            "slow.yaml",
            "--input",
            "in.jsonl",
            "--output",
            f"out.{index}.jsonl",
            "--shard",
            f"{index}/4",
            "--concurrency",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_four_shards_one_killed_and_resumed_merge_into_the_input_in_order(tmp_path: Path) -> None:
    """Four shards of 40 records via the CLI, shard 2 killed (SIGKILL) mid-run and rerun, then merged.

    The rerun resumes (the records shard 2 had are kept, not run again), and the merge gives the 40
    records in input order, each exactly once, with a summary that counts them all and has p50/p90.
    """
    (tmp_path / "slow.yaml").write_text(SLOW)
    prompts(tmp_path / "in.jsonl", 40)
    runs = {index: start(tmp_path, index) for index in range(4)}
    journal = tmp_path / "out.2.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and runs[2].poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.01)
    runs[2].send_signal(signal.SIGKILL)
    runs[2].communicate(timeout=30)
    assert runs[2].returncode == -signal.SIGKILL
    kept = [text for text in journal.read_text().splitlines(keepends=True) if text.endswith("\n")]
    assert 3 <= len(kept) < 10, "shard 2 was not killed mid-run"
    for index in (0, 1, 3):
        _, err = runs[index].communicate(timeout=60)
        assert runs[index].returncode == 0, err

    rerun = start(tmp_path, 2)
    _, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err
    lines = journal.read_text().splitlines(keepends=True)
    assert lines[: len(kept)] == kept  # what shard 2 had is kept as it was, not answered again
    assert sorted(json.loads(text)["id"] for text in lines) == list(range(2, 40, 4))
    summary = json.loads((tmp_path / "out.2.jsonl.summary.json").read_text())
    assert (summary["records"]["resumed"], summary["records"]["done"]) == (len(kept), 10 - len(kept))

    merge = subprocess.run(
        [
            sys.executable,
            "-m",
            "aftlib",
            "merge",
            "--output",
            "all.jsonl",
            *(f"out.{i}.jsonl" for i in (3, 1, 0, 2)),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert merge.returncode == 0, merge.stderr
    merged = read_jsonl(tmp_path / "all.jsonl")
    assert [line["id"] for line in merged] == list(range(40))
    assert all(line["status"] == "done" and line["prompt"] == f"q{line['id']}" for line in merged)
    report = json.loads((tmp_path / "all.jsonl.summary.json").read_text())
    assert report["records"] == {"read": 40, "done": 40, "failed": 0, "bad": 0, "missing": 0}
    assert report["latency"]["p50"] is not None
    assert report["latency"]["p90"] is not None
    assert "merged 4 shards: 40 records read, 40 done" in merge.stderr


# --- merge: what it writes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shard outputs made once for the merge tests (which only read them), and some that do not fit.

    ``a0..a3``: the four shards of ``a.jsonl`` (12 records, a bad line at position 5); ``a0bis``:
    shard 0/4 again, to another output; ``b3``: shard 3/4 of another input; ``c3``: shard 3/4 of
    another config; ``h1``: shard 1/2 of ``a.jsonl``; ``whole``: ``a.jsonl`` without --shard; ``aft``
    and ``alpaca``: ``a.jsonl`` without --shard in those formats.
    """
    root = tmp_path_factory.mktemp("shards")
    (root / "fast.yaml").write_text(FAST)
    (root / "other.yaml").write_text(FAST.replace("n: 2", "n: 3"))
    a = prompts(root / "a.jsonl", 12, bad=(5,))
    b = prompts(root / "b.jsonl", 12, start=100)
    paths: dict[str, Path] = {"root": root, "a": a}

    def make(
        name: str, source: Path, *options: str, config: str = "fast.yaml", suffix: str = ".jsonl"
    ) -> None:
        paths[name] = root / f"{name}{suffix}"
        status = cli("run", "--config", root / config, "--input", source, "--output", paths[name], *options)
        assert status in (0, 1)  # 1: the bad line

    for index in range(4):
        make(f"a{index}", a, "--shard", f"{index}/4")
    make("a0bis", a, "--shard", "0/4")
    make("b3", b, "--shard", "3/4")
    make("c3", a, "--shard", "3/4", config="other.yaml")
    make("h1", a, "--shard", "1/2")
    make("whole", a)
    make("aft", a, "--format", "aft", suffix=".json")
    make("alpaca", a, "--format", "alpaca_eval", suffix=".json")
    return paths


def shards(made: dict[str, Path], *names: str) -> list[Path]:
    return [made[name] for name in names]


FOUR = ("a0", "a1", "a2", "a3")


def test_merge_writes_every_record_once_in_input_order_with_a_summary(
    made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The merged JSONL is the shards' lines in input order; the bad line is listed; exit 1 for it.

    The summary sums the counts and usage and recomputes the percentiles from every line's timings.
    """
    out = tmp_path / "all.jsonl"
    assert cli("merge", "--output", out, *shards(made, "a2", "a0", "a3", "a1")) == 1  # the bad line
    assert "1 bad lines" in capsys.readouterr().err
    lines = read_jsonl(out)
    assert [line["id"] for line in lines] == [i for i in range(12) if i != 5]
    by_id = {line["id"]: line for name in FOUR for line in read_jsonl(made[name])}
    assert lines == [by_id[line["id"]] for line in lines]
    (bad,) = read_jsonl(tmp_path / "all.jsonl.errors.jsonl")
    assert (bad["line"], bad["file"]) == (6, str(made["a"]))
    report = json.loads((tmp_path / "all.jsonl.summary.json").read_text())
    assert report["records"] == {"read": 12, "done": 11, "failed": 0, "bad": 1, "missing": 0}
    whole = json.loads((made["root"] / "whole.jsonl.summary.json").read_text())
    assert report["usage"] == whole["usage"]
    elapsed = [line["timings"]["elapsed"] for line in lines]
    first = [line["timings"]["first_token"] for line in lines]
    assert report["latency"] == {**percentiles(elapsed), "first_token": percentiles(first)}


@pytest.mark.parametrize(("fmt", "whole"), [("aft", "aft"), ("alpaca_eval", "alpaca")])
def test_merge_writes_a_format_as_run_does(
    made: dict[str, Path], tmp_path: Path, fmt: str, whole: str
) -> None:
    """Merging with --format aft / alpaca_eval writes the same file as one unsharded aftlib run --format."""
    out = tmp_path / "all.json"
    summary = merge_shards(shards(made, *FOUR), out, format=fmt)
    assert (summary.done, summary.bad) == (11, 1)
    assert json.loads(out.read_text()) == json.loads(made[whole].read_text())


def test_merge_takes_the_input_from_another_path_when_it_is_the_same_file(
    made: dict[str, Path], tmp_path: Path
) -> None:
    """--input names the input where it is here (shards made on other machines); the same bytes merge."""
    moved = shutil.copy(made["a"], tmp_path / "moved.jsonl")
    out = tmp_path / "all.jsonl"
    assert cli("merge", "--output", out, "--input", moved, *shards(made, *FOUR)) == 1  # the bad line
    assert [line["id"] for line in read_jsonl(out)] == [i for i in range(12) if i != 5]


# --- merge: what it refuses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "says"),
    [
        (
            ("a0", "a1", "a2", "b3"),
            ["the shards were made from different inputs", "a.jsonl (fingerprint", "b.jsonl (fingerprint"],
        ),
        (
            ("a0", "a1", "a2", "c3"),
            ["made with different topologies", "config", "other.yaml (topology fingerprint"],
        ),
        (("a0", "h1", "a2", "a3"), ["shards of different splits", "of N = 4", "h1.jsonl of N = 2"]),
        (("a0", "a1", "a3"), ["missing shard(s) 2 of 4", "given 0/4 (", "a3.jsonl)"]),
        (("a0", "a1", "a2", "a3", "a0bis"), ["shard 0/4 is given 2 times:", "a0.jsonl and ", "a0bis.jsonl"]),
        (("a0", "a1", "a2", "whole"), ["whole.jsonl: is not a shard: its run had no --shard"]),
        (
            ("a0", "a1", "a2", "a"),
            ["a.jsonl: is not the output of an aftlib run: it has no a.jsonl.run.json"],
        ),
    ],
    ids=[
        "another-input",
        "another-config",
        "another-N",
        "missing",
        "duplicate",
        "not-a-shard",
        "not-an-output",
    ],
)
def test_merge_refuses_outputs_that_do_not_belong_together(
    made: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    names: tuple[str, ...],
    says: list[str],
) -> None:
    """Another input, another config, another N, a missing or duplicate shard, a non-shard: exit 2, named."""
    out = tmp_path / "all.jsonl"
    assert cli("merge", "--output", out, *shards(made, *names)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("aftlib: error: ")
    for text in says:
        assert text in line
    assert list(tmp_path.iterdir()) == []


def test_merge_refuses_an_input_that_changed(
    made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--input with other bytes than the shards were made from: exit 2, both fingerprints named."""
    edited = prompts(tmp_path / "edited.jsonl", 13, bad=(5,))
    assert cli("merge", "--output", tmp_path / "all.jsonl", "--input", edited, *shards(made, *FOUR)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"the input {edited} is not the file the shards were made from" in line
    assert not (tmp_path / "all.jsonl").exists()


def copy_shards(made: dict[str, Path], folder: Path) -> list[Path]:
    """Copy the four shard outputs (and their side files) into ``folder``; their paths, in shard order."""
    copies = []
    for name in FOUR:
        for path in made["root"].glob(f"{name}.jsonl*"):
            shutil.copy(path, folder / path.name)
        copies.append(folder / f"{name}.jsonl")
    return copies


def test_a_shard_that_is_not_complete_is_refused_unless_partial(
    made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard with records that have no line: refused naming it and how many; --partial merges, exit 1."""
    copies = copy_shards(made, tmp_path)
    lines = copies[2].read_text().splitlines(keepends=True)
    copies[2].write_text(lines[0] + lines[1][:10])  # of positions 2, 6, 10: one kept, one torn, one dropped
    out = tmp_path / "all.jsonl"
    assert cli("merge", "--output", out, *copies) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"not every shard is complete: shard 2/4 ({copies[2]}) lacks 2 of its 3 records" in line
    assert "--partial" in line
    assert not out.exists()
    assert cli("merge", "--output", out, "--partial", *copies) == 1
    err = capsys.readouterr().err
    assert "aftlib: warning: merging shards that are not complete: shard 2/4" in err
    kept = json.loads(lines[0])["id"]
    assert [line["id"] for line in read_jsonl(out)] == [
        i for i in range(12) if i != 5 and (i % 4 != 2 or i == kept)
    ]
    assert json.loads((tmp_path / "all.jsonl.summary.json").read_text())["records"]["missing"] == 2


def test_a_failed_record_is_merged_as_its_error_line_and_exits_1(
    made: dict[str, Path], tmp_path: Path
) -> None:
    """An error record in a shard is carried to the merged JSONL as it is, and counted as failed."""
    copies = copy_shards(made, tmp_path)
    rows = read_jsonl(copies[3])
    rows[0] = {
        "id": rows[0]["id"],
        "prompt": rows[0]["prompt"],
        "status": "error",
        "error": "EngineError: down",
    }
    copies[3].write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = merge_shards(copies, tmp_path / "all.jsonl")
    assert (summary.done, summary.failed, summary.bad, summary.ok) == (10, 1, 1, False)
    assert read_jsonl(tmp_path / "all.jsonl")[3] == rows[0]


def test_merge_refuses_a_shard_still_running(
    made: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard whose run still holds its lock is refused (exit 2, the holder named), not read half-done."""
    with exclusive_lock(made["a2"]):
        assert cli("merge", "--output", tmp_path / "all.jsonl", *shards(made, *FOUR)) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"shard output {made['a2']} is in use by another aftlib process (pid {os.getpid()})" in line
    assert not (tmp_path / "all.jsonl").exists()


def test_a_glob_that_also_matches_side_files_merges(made: dict[str, Path], tmp_path: Path) -> None:
    """A glob such as out.*.jsonl* matches the shards' side files too (errors, summary): they are left out."""
    matched = sorted(made["root"].glob("a[0-3].jsonl*"))
    assert made["root"] / "a1.jsonl.errors.jsonl" in matched
    summary = merge_shards(matched, tmp_path / "all.jsonl")
    assert (summary.shards, summary.done, summary.bad) == (4, 11, 1)


def test_shards_run_in_another_format_merge_from_their_journals(
    made: dict[str, Path], tmp_path: Path
) -> None:
    """Shards written with --format aft keep their records in OUT.journal.jsonl; the merge reads those."""
    outputs = [tmp_path / f"s{index}.json" for index in range(4)]
    for index, out in enumerate(outputs):
        options = ("--output", out, "--format", "aft", "--shard", f"{index}/4")
        assert cli("run", "--config", made["root"] / "fast.yaml", "--input", made["a"], *options) in (0, 1)
        assert (tmp_path / f"s{index}.json.journal.jsonl").is_file()
    merged = tmp_path / "all.json"
    summary = merge_shards(outputs, merged, format="aft")
    assert (summary.done, summary.bad) == (11, 1)
    assert json.loads(merged.read_text()) == json.loads(made["aft"].read_text())
