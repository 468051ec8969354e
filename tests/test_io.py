from pathlib import Path

import pytest

from phaseflip.io import DataError, atomic_path, read_json, write_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    write_json(target, {"b": 2})
    assert read_json(target) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_truncated_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text('{"a": ')
    with pytest.raises(DataError, match="run.json: cannot read JSON"):
        read_json(path)
