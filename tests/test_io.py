"""The I/O module: JSON records with their lines, YAML, atomic writes, staged folders, locks, digests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aftlib import ConfigError, InputError
from aftlib._io import (
    atomic_write,
    exclusive_lock,
    fingerprint,
    iter_json,
    read_yaml,
    side_path,
    staged_dir,
    write_json_atomic,
    write_text_atomic,
)

# --- iter_json ------------------------------------------------------------------------------------


def test_jsonl_gives_each_value_with_its_line_and_reports_a_bad_line(tmp_path: Path) -> None:
    """Blank lines are skipped but counted; a bad line comes out with its line number, the rest is read."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n\n   \n{"b": \n[1, 2]\n', encoding="utf-8")
    items = list(iter_json(path))
    assert [(i.line, i.ok) for i in items] == [(1, True), (4, False), (5, True)]
    assert items[0].value == {"a": 1}
    assert items[2].value == [1, 2]
    bad = items[1]
    assert bad.value is None
    assert bad.text == '{"b": '
    assert bad.error is not None
    assert bad.error.startswith("not valid JSON: ")
    assert "(column" in bad.error


def test_jsonl_offsets_point_at_each_line(tmp_path: Path) -> None:
    """Each JSONL item knows the byte where its line starts, so it can be read again with one seek."""
    path = tmp_path / "in.jsonl"
    path.write_bytes('{"k": "é"}\r\n\n{"k": 2}\n'.encode())
    items = list(iter_json(path))
    with path.open("rb") as handle:
        for item in items:
            assert item.offset is not None
            handle.seek(item.offset)
            assert json.loads(handle.readline()) == item.value
    assert items[0].text == '{"k": "é"}'  # no line ending kept


def test_a_line_that_is_not_utf8_is_a_bad_line_not_a_crash(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 make that line bad (with its number); the next line is still read."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": "\xff"}\n{"b": 1}\n')
    first, second = iter_json(path)
    assert (first.line, first.ok) == (1, False)
    assert first.error is not None
    assert "not UTF-8" in first.error
    assert (second.line, second.value) == (2, {"b": 1})


def test_a_byte_order_mark_is_allowed(tmp_path: Path) -> None:
    """A UTF-8 file saved with a byte order mark reads like one without it, JSONL or JSON array."""
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert [i.value for i in iter_json(jsonl)] == [{"a": 1}]
    array = tmp_path / "in.json"
    array.write_bytes(b'\xef\xbb\xbf[{"a": 1}]')
    assert [i.value for i in iter_json(array)] == [{"a": 1}]


def test_a_json_array_gives_items_by_position_with_their_text(tmp_path: Path) -> None:
    """A file holding one JSON array gives one item per element, numbered by position, text as written."""
    path = tmp_path / "in.json"
    path.write_text('\n  [\n  {"a": 1},\n  {"b": [2, 3]} ,\n  "x"\n]\n', encoding="utf-8")
    items = list(iter_json(path))
    assert [(i.line, i.value) for i in items] == [(1, {"a": 1}), (2, {"b": [2, 3]}), (3, "x")]
    assert items[1].text == '{"b": [2, 3]}'
    assert all(i.ok and i.offset is None for i in items)


def test_a_broken_json_array_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    """No item of a broken array can be trusted: InputError at FILE:LINE of the break."""
    path = tmp_path / "in.json"
    path.write_text('[\n  {"a": 1},\n  {"b": \n]\n', encoding="utf-8")
    with pytest.raises(InputError) as info:
        list(iter_json(path))
    assert info.value.where == f"{path}:4"
    assert info.value.message.startswith("not a valid JSON array")


def test_an_empty_or_blank_file_gives_nothing(tmp_path: Path) -> None:
    """An empty file and a file of blank lines have no records (and no error)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\t\n")
    assert list(iter_json(empty)) == []
    assert list(iter_json(blank)) == []


def test_a_missing_file_or_a_directory_is_a_clear_input_error(tmp_path: Path) -> None:
    """A missing file says 'no such ... file', a directory says so; both name the path."""
    with pytest.raises(InputError) as missing:
        list(iter_json(tmp_path / "absent.jsonl", what="training data"))
    assert str(missing.value) == f"{tmp_path / 'absent.jsonl'}: no such training data file"
    with pytest.raises(InputError) as folder:
        list(iter_json(tmp_path))
    assert str(folder.value) == f"{tmp_path}: the input is a directory, not a file"


# --- read_yaml ------------------------------------------------------------------------------------


def test_read_yaml_reads_and_reports_the_line_of_a_syntax_error(tmp_path: Path) -> None:
    """Valid YAML is read safely; a syntax error is a ConfigError naming FILE:LINE."""
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\nb: [x, y]\n")
    assert read_yaml(good) == {"a": 1, "b": ["x", "y"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [x, y\nc: 3\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(bad)
    assert info.value.source is not None
    assert info.value.source.startswith(f"{bad}:")
    assert int(info.value.source.rsplit(":", 1)[1]) in (3, 4)
    assert "not valid YAML" in info.value.message
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError):
        read_yaml(unsafe)


def test_read_yaml_of_a_missing_file_says_it_cannot_read_it(tmp_path: Path) -> None:
    """A missing YAML file is a ConfigError naming the file, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read the config") as info:
        read_yaml(tmp_path / "absent.yaml")
    assert info.value.source == str(tmp_path / "absent.yaml")


# --- atomic writes --------------------------------------------------------------------------------


def test_atomic_write_replaces_the_file_when_the_block_ends(tmp_path: Path) -> None:
    """The new text appears at once and whole; no temporary file is left."""
    path = tmp_path / "out.json"
    path.write_text("old")
    with atomic_write(path) as handle:
        handle.write("new")
        assert path.read_text() == "old"  # nothing is visible before the block ends
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.json"]


def test_atomic_write_leaves_the_old_file_when_the_block_raises(tmp_path: Path) -> None:
    """An error in the block leaves the earlier file untouched and removes the temporary file."""
    path = tmp_path / "out.json"
    path.write_text("old")

    def write_half() -> None:
        with atomic_write(path) as handle:
            handle.write("half")
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_half()
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_write_text_and_json_atomic(tmp_path: Path) -> None:
    """write_text_atomic writes text; write_json_atomic writes UTF-8 JSON, indented, newline-terminated."""
    text = tmp_path / "t.txt"
    write_text_atomic(text, "héllo")
    assert text.read_text(encoding="utf-8") == "héllo"
    data = tmp_path / "d.json"
    write_json_atomic(data, {"name": "café", "n": [1, 2]})
    raw = data.read_text(encoding="utf-8")
    assert raw.endswith("}\n")
    assert "café" in raw  # not ASCII-escaped
    assert json.loads(raw) == {"name": "café", "n": [1, 2]}
    assert oct(data.stat().st_mode & 0o777) == "0o644"


def test_side_path_sits_beside_the_output(tmp_path: Path) -> None:
    """A side file keeps the output's whole name and adds its suffix."""
    assert side_path(tmp_path / "out.jsonl", ".summary.json") == tmp_path / "out.jsonl.summary.json"
    assert side_path("out", ".lock") == Path("out.lock")


# --- staged folders -------------------------------------------------------------------------------


def test_staged_dir_moves_the_folder_into_place(tmp_path: Path) -> None:
    """The folder is built under another name and appears whole, readable by others, when done."""
    target = tmp_path / "deep" / "model"
    with staged_dir(target) as staging:
        assert staging.parent == target.parent
        assert staging != target
        (staging / "weights.bin").write_text("w")
        assert not target.exists()
    assert (target / "weights.bin").read_text() == "w"
    assert oct(target.stat().st_mode & 0o777) == "0o755"
    assert os.listdir(target.parent) == ["model"]


def test_staged_dir_cleans_up_on_error_and_keeps_the_old_folder(tmp_path: Path) -> None:
    """An error removes the staging folder; an existing target is left as it was."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")

    def build() -> None:
        with staged_dir(target, replace=True) as staging:
            (staging / "new.bin").write_text("new")
            raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        build()
    assert os.listdir(target) == ["old.bin"]
    assert os.listdir(tmp_path) == ["model"]


def test_staged_dir_replace_swaps_the_folder(tmp_path: Path) -> None:
    """replace=True puts the new folder in place of the old one and removes the old one."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with staged_dir(target, replace=True) as staging:
        (staging / "new.bin").write_text("new")
    assert os.listdir(target) == ["new.bin"]
    assert os.listdir(tmp_path) == ["model"]


def test_staged_dir_without_replace_refuses_a_full_target(tmp_path: Path) -> None:
    """Without replace, a non-empty target is never overwritten: FileExistsError, nothing left behind."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "mine.txt").write_text("mine")
    with pytest.raises(FileExistsError), staged_dir(target) as staging:
        (staging / "new.bin").write_text("new")
    assert os.listdir(target) == ["mine.txt"]
    assert os.listdir(tmp_path) == ["model"]


# --- locks ----------------------------------------------------------------------------------------

_HOLD = textwrap.dedent(
    """
    import sys, time
    from aftlib._io import exclusive_lock
    with exclusive_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def _holder(output: Path) -> subprocess.Popen[str]:
    """Another process that takes the lock on ``output`` and keeps it."""
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(output)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_second_lock_fails_naming_the_holders_pid(tmp_path: Path) -> None:
    """While another process holds the lock, taking it fails with a ConfigError naming that pid."""
    output = tmp_path / "out.jsonl"
    process = _holder(output)
    try:
        with pytest.raises(ConfigError) as info, exclusive_lock(output):
            pass
        assert f"pid {process.pid}" in str(info.value)
        assert "in use by another aftlib process" in str(info.value)
    finally:
        process.kill()
        process.wait()


def test_a_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    """A holder killed with SIGKILL leaves no stale lock: the next process takes it at once."""
    output = tmp_path / "out.jsonl"
    process = _holder(output)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with exclusive_lock(output):
        assert side_path(output, ".lock").read_text().strip() == str(os.getpid())
    assert not side_path(output, ".lock").exists()  # released and removed


def test_the_lock_is_taken_again_after_release(tmp_path: Path) -> None:
    """A lock released in this process can be taken again (the lock file is removed on release)."""
    output = tmp_path / "out.jsonl"
    with exclusive_lock(output):
        pass
    with exclusive_lock(output):
        assert side_path(output, ".lock").exists()


# --- fingerprints ---------------------------------------------------------------------------------


def test_fingerprint_is_stable_under_key_order_and_changes_with_values() -> None:
    """The same settings in another key order give the same digest; another value another one."""
    a = fingerprint({"model": "m", "k": 4, "sampling": {"temperature": 0.7, "top_p": 1.0}})
    b = fingerprint({"sampling": {"top_p": 1.0, "temperature": 0.7}, "k": 4, "model": "m"})
    assert a == b
    assert len(a) == 16
    assert fingerprint({"model": "m", "k": 5, "sampling": {"temperature": 0.7, "top_p": 1.0}}) != a
