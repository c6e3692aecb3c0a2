"""Tests for pipeline.atomic: outputs appear at their final path only when complete, and failures leave no trace."""

from __future__ import annotations

import json

import pytest

from pipeline.atomic import atomic_directory, atomic_file, temporary_sibling, write_json


def test_temporary_sibling_is_a_hidden_file_beside_the_final_path(tmp_path):
    assert temporary_sibling(tmp_path / "data" / "features.h5") == tmp_path / "data" / ".features.h5.partial"
    assert temporary_sibling("out", suffix=".tmp").name == ".out.tmp"


def test_atomic_directory_moves_a_finished_directory_into_place(tmp_path):
    final = tmp_path / "deep" / "images"
    with atomic_directory(final) as tmp:
        assert tmp == temporary_sibling(final) and list(tmp.iterdir()) == []
        (tmp / "a.txt").write_text("a")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "a"
    assert not tmp.exists()


def test_atomic_directory_replaces_the_old_directory_entirely(tmp_path):
    final = tmp_path / "images"
    (final / "old").mkdir(parents=True)
    with atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]


def test_atomic_directory_failure_keeps_the_old_directory_and_removes_the_temporary(tmp_path):
    final = tmp_path / "images"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"]


def test_atomic_directory_failure_creates_nothing_at_a_new_path(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "images") as tmp:
            (tmp / "half.txt").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_starts_from_empty_after_an_earlier_crash(tmp_path):
    final = tmp_path / "images"
    leftover = temporary_sibling(final)
    leftover.mkdir()
    (leftover / "stale.txt").write_text("stale")
    with atomic_directory(final) as tmp:
        assert list(tmp.iterdir()) == []
    assert list(final.iterdir()) == []


def test_atomic_file_writes_the_final_path_creating_parents(tmp_path):
    final = tmp_path / "a" / "b" / "metrics.json"
    with atomic_file(final) as tmp:
        tmp.write_text("done")
        assert not final.exists()
    assert final.read_text() == "done"
    assert sorted(p.name for p in final.parent.iterdir()) == ["metrics.json"]


def test_atomic_file_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    final = tmp_path / "metrics.json"
    final.write_text("old")
    with pytest.raises(ValueError, match="bad"):
        with atomic_file(final) as tmp:
            tmp.write_text("partial")
            raise ValueError("bad")
    assert final.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_write_json_writes_indented_json_in_insertion_order(tmp_path):
    path = tmp_path / "out" / "report.json"
    write_json(path, {"z": 1, "a": [1, 2], "m": {"x": None}})
    text = path.read_text()
    assert json.loads(text) == {"z": 1, "a": [1, 2], "m": {"x": None}}
    assert text.startswith('{\n  "z": 1,\n  "a": [') and text.endswith("}\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_write_json_refuses_unserialisable_data_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"ok": True})
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
