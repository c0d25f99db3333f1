"""Input records and conversations: a turn without 'content' or 'role' is named, with its key path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aftlib import InputError
from aftlib._records import BadLine, InputRecord, parse_input_record, read_records
from aftlib._types import as_conversation


def test_a_turn_without_content_says_missing_content() -> None:
    """A turn with no 'content' key is 'missing 'content'' at its key path, not 'got NoneType'."""
    with pytest.raises(InputError) as info:
        as_conversation([{"role": "system", "content": "s"}, {"role": "user"}])
    assert info.value.where == "conversation[1]"
    assert "missing 'content'" in info.value.message
    assert "NoneType" not in str(info.value)


def test_a_turn_without_role_says_missing_role() -> None:
    """A turn with no 'role' key is 'missing 'role'' at its key path, naming the keys it has."""
    with pytest.raises(InputError) as info:
        as_conversation([{"content": "hi"}])
    assert info.value.where == "conversation[0]"
    assert "missing 'role'" in info.value.message
    assert "'content'" in info.value.message


def test_a_null_content_is_named_as_null() -> None:
    """An explicit JSON null content says null, the word a JSON user wrote."""
    with pytest.raises(InputError, match=r"content must be a string, got null") as info:
        as_conversation([{"role": "user", "content": None}])
    assert info.value.where == "conversation[0].content"


def test_a_record_names_its_own_key_in_the_path() -> None:
    """In a record, the key path starts at the record's key: messages[0], query[1]."""
    with pytest.raises(InputError) as info:
        parse_input_record({"messages": [{"role": "user"}]}, line=3)
    assert str(info.value) == (
        "messages[0]: missing 'content': a turn is {'role': ..., 'content': ...}, this one has 'role'"
    )
    with pytest.raises(InputError) as info:
        parse_input_record({"query": [{"role": "system", "content": "s"}, {"content": "q"}]}, line=1)
    assert info.value.where == "query[1]"
    with pytest.raises(InputError) as info:
        parse_input_record({"messages": {"role": "user", "content": "hi"}}, line=1)
    assert info.value.where == "messages"


def test_the_runner_reader_reports_the_line_of_a_turn_without_content(tmp_path: Path) -> None:
    """read_records turns such a record into a BadLine with its line and the missing key."""
    path = tmp_path / "in.jsonl"
    rows = [{"prompt": "fine"}, {"messages": [{"role": "user", "text": "hi"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    good, bad = read_records(path)
    assert isinstance(good, InputRecord)
    assert isinstance(bad, BadLine)
    assert bad.line == 2
    assert bad.error.startswith("messages[0]: missing 'content'")
    assert "'text'" in bad.error
