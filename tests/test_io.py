"""The one JSON/JSONL reader (metalm.io): errors name the file, the line and what was expected."""

from __future__ import annotations

import pytest

from metalm.io import JSONFileError, iter_jsonl, read_json, read_jsonl


def test_read_json(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"x": [1, 2]}', encoding="utf-8")
    assert read_json(path, "a test object") == {"x": [1, 2]}
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'none.json'}: missing; expected a test object"):
        read_json(tmp_path / "none.json", "a test object")
    path.write_text('{"x": [1,\n 2', encoding="utf-8")
    with pytest.raises(JSONFileError, match=rf"{path}: not valid JSON at line 2 column 3 .*; expected a test object"):
        read_json(path, "a test object")
    path.write_bytes(b'{"x": "\xff"}')
    with pytest.raises(JSONFileError, match=rf"{path}: not UTF-8 .*; expected a test object"):
        read_json(path, "a test object")


def test_jsonl_lines_are_numbered(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n[1, 2]\n{"a": \n\xff\n{"a": 2}\n')
    rows = list(iter_jsonl(path, "test records"))
    assert [n for n, _ in rows] == [1, 3, 4, 5, 6]  # blank lines are skipped, numbers are the file's
    assert rows[0][1] == {"a": 1} and rows[-1][1] == {"a": 2}
    errors = [obj for _, obj in rows[1:4]]
    assert all(isinstance(e, JSONFileError) for e in errors)
    assert (
        str(errors[0])
        == f"{path}:3: malformed line (expected a JSON object, got list); expected one JSON object per line"
    )
    assert errors[0].detail == "expected a JSON object, got list"
    assert str(errors[1]).startswith(f"{path}:4: malformed line (") and str(errors[2]).startswith(f"{path}:5: ")
    with pytest.raises(JSONFileError, match=rf"{path}:3: malformed line"):
        read_jsonl(path, "test records")
    path.write_text('{"a": 1}\n{"b": 2}\n', encoding="utf-8")
    assert read_jsonl(path, "test records") == [{"a": 1}, {"b": 2}]
    with pytest.raises(FileNotFoundError, match="missing; expected test records"):
        read_jsonl(tmp_path / "none.jsonl", "test records")
