"""Tests for pipeline.store: the HDF5 features layout, the atomic FeatureWriter and the readers."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from synthetic import N_ROWS, ROW, WIDE, assert_same_contents, contents

from pipeline.atomic import temporary_sibling
from pipeline.store import (
    CHUNK_BYTES,
    OVERHEAD_BYTES,
    FeatureReader,
    FeatureWriter,
    iter_chunks,
    load_dask,
    load_layers,
    load_split,
    open_features,
    read_attrs,
    rows_per_chunk,
    split_nbytes,
    split_rows,
    stored_resume_key,
)
from pipeline.validation import ConfigError, UserError, format_bytes

SPLITS = ["train", "val", "train", "test", "train"]  # train rows 0, 2, 4 are not contiguous
LABELS = np.array([0, 1, 2, 1, 0])
PATHS = [f"{split}/{label}/{row}.png" for row, (split, label) in enumerate(zip(SPLITS, LABELS))]
LAYERS = {"pooled": ((6,), "float32"), "maps": ((2, 2, 3), "float16")}
POOLED = np.arange(30, dtype=np.float32).reshape(5, 6)
MAPS = np.linspace(0, 1, 60).reshape(5, 2, 2, 3)


def writer(path, **overrides):
    """A FeatureWriter with room for the five rows above; ``overrides`` replace its keyword arguments."""
    kwargs = {"capacity": 5, "layers": LAYERS, "attrs": {"backbone": "mobilenet"}, "resume_key": "key-1"}
    return FeatureWriter(path, **{**kwargs, **overrides})


def write_batch(w, start, stop, splits=SPLITS):
    w.write(stop, {"pooled": POOLED[start:stop], "maps": MAPS[start:stop]}, PATHS[start:stop], LABELS[start:stop], splits[start:stop])


def kill_after_first_batch(path):
    """Leave at ``path``'s temporary sibling the partial work of a writer stopped after its first batch."""
    with pytest.raises(RuntimeError):
        with writer(path) as w:
            write_batch(w, 0, 3)
            raise RuntimeError("killed")


def write_rows(w, splits=SPLITS):
    write_batch(w, 0, 3, splits)
    write_batch(w, 3, 5, splits)


@pytest.fixture
def features(tmp_path):
    """A complete features file of the five rows, written in two batches."""
    path = tmp_path / "features.h5"
    with writer(path) as w:
        write_rows(w)
    return path


# --- rows_per_chunk -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row_shape", "dtype", "rows"),
    [((1024,), "float32", 256), ((1024,), "float16", 512), ((7, 7, 1024), "float16", 10), ((1 << 19,), "float32", 1)],
)
def test_rows_per_chunk_fills_about_one_mebibyte(row_shape, dtype, rows):
    assert CHUNK_BYTES == 1 << 20
    assert rows_per_chunk(row_shape, dtype) == rows


@pytest.mark.parametrize(("row_shape", "dtype"), [((3,), "float32"), ((5, 5, 7), "float16"), ((1000,), "float64")])
def test_rows_per_chunk_is_the_most_rows_within_the_target(row_shape, dtype):
    row_bytes = np.prod(row_shape) * np.dtype(dtype).itemsize
    rows = rows_per_chunk(row_shape, dtype, target_bytes=100_000)
    assert rows * row_bytes <= 100_000 < (rows + 1) * row_bytes


# --- FeatureWriter --------------------------------------------------------------------------------------------


def test_layout_is_row_aligned_with_chunked_feature_datasets(features):
    with h5py.File(features, "r") as f:
        assert sorted(f) == ["features", "labels", "paths", "progress", "sha256", "skipped", "split", "split_code"]
        assert f["progress"][()].tolist() == [5, 5]
        assert f["paths"].asstr()[()].tolist() == PATHS
        assert f["split"].asstr()[()].tolist() == SPLITS
        assert f["labels"].dtype == np.int64 and f["labels"][()].tolist() == LABELS.tolist()
        pooled, maps = f["features/pooled"], f["features/maps"]
        assert (pooled.shape, pooled.dtype, pooled.chunks) == ((5, 6), np.float32, (5, 6))
        assert (maps.shape, maps.dtype, maps.chunks) == ((5, 2, 2, 3), np.float16, (5, 2, 2, 3))
        np.testing.assert_array_equal(pooled[()], POOLED)
        np.testing.assert_array_equal(maps[()], MAPS.astype(np.float16))
        assert f.attrs["complete"] is np.True_
        assert f.attrs["n_rows"] == 5
        assert f.attrs["backbone"] == "mobilenet"


def test_chunks_hold_rows_per_chunk_rows_of_a_big_layer(tmp_path):
    n = 600
    layers = {"wide": ((1024,), "float32"), "narrow": ((3,), "float16")}
    with writer(tmp_path / "f.h5", capacity=n, layers=layers):
        pass
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f["features/wide"].chunks == (rows_per_chunk((1024,), "float32"), 1024) == (256, 1024)
        assert f["features/narrow"].chunks == (n, 3)


def test_json_attrs_are_stored_as_json_text(tmp_path):
    attrs = {"pooling": {"a": "avg"}, "layers": ["a", "b"], "input_size": (64, 64), "seed": 3}
    with writer(tmp_path / "f.h5", attrs=attrs):
        pass
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f.attrs["pooling"] == '{"a": "avg"}'
        assert f.attrs["layers"] == '["a", "b"]'
        assert f.attrs["input_size"] == "[64, 64]"
        assert f.attrs["seed"] == 3


def test_file_appears_complete_only_after_a_clean_exit(tmp_path):
    path = tmp_path / "features.h5"
    with writer(path) as w:
        write_rows(w)
        assert w.tmp == temporary_sibling(path) and w.tmp.is_file()
        assert w.file.attrs["complete"] is np.False_
        assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5"]
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"] is np.True_


def test_error_inside_the_with_leaves_no_file_at_the_final_path(tmp_path):
    path = tmp_path / "features.h5"
    with pytest.raises(RuntimeError, match="backbone failed"):
        with writer(path) as w:
            write_batch(w, 0, 3)
            raise RuntimeError("backbone failed")
    assert not path.exists()
    assert temporary_sibling(path).is_file()  # kept for the next run to resume


def test_error_inside_the_with_keeps_the_previous_file(features):
    before = load_split(features, "pooled", "train").X
    with pytest.raises(RuntimeError, match="interrupted"):
        with writer(features, attrs={"backbone": "other"}):
            raise RuntimeError("interrupted")
    assert read_attrs(features)["backbone"] == "mobilenet"
    np.testing.assert_array_equal(load_split(features, "pooled", "train").X, before)


def test_a_new_writer_with_the_same_key_resumes_after_the_last_batch(tmp_path):
    path = tmp_path / "features.h5"
    kill_after_first_batch(path)
    with writer(path) as w:
        assert (w.position, w.rows) == (3, 3)
        write_batch(w, 3, 5)
    np.testing.assert_array_equal(load_split(path, "pooled", "train").X, POOLED[[0, 2, 4]])
    with h5py.File(path, "r") as f:
        assert f["paths"].asstr()[()].tolist() == PATHS


def test_rows_written_without_a_position_count_only_once_a_later_write_marks_one(tmp_path):
    path = tmp_path / "features.h5"
    with pytest.raises(RuntimeError):
        with writer(path) as w:
            write_batch(w, 0, 2)
            w.write(None, {"pooled": POOLED[2:4], "maps": MAPS[2:4]}, PATHS[2:4], LABELS[2:4], SPLITS[2:4])
            assert (w.position, w.rows) == (2, 4)
            raise RuntimeError("killed before the piece was marked")
    with writer(path) as w:
        assert (w.position, w.rows) == (2, 2)  # the unmarked piece is written again
        w.write(None, {"pooled": POOLED[2:3], "maps": MAPS[2:3]}, PATHS[2:3], LABELS[2:3], SPLITS[2:3])
        write_batch(w, 3, 5)
    with h5py.File(path, "r") as f:
        assert f["paths"].asstr()[()].tolist() == PATHS and f["progress"][()].tolist() == [5, 5]
        np.testing.assert_array_equal(f["features/pooled"][()], POOLED)


def test_a_different_key_discards_the_partial_work(tmp_path, caplog):
    path = tmp_path / "features.h5"
    kill_after_first_batch(path)
    with writer(path, resume_key="key-2") as w:
        assert (w.position, w.rows) == (0, 0)
        write_rows(w)
    assert "discarding partial work" in caplog.text and "config or the image list changed" in caplog.text


def test_an_unreadable_partial_file_is_discarded(tmp_path, caplog):
    path = tmp_path / "features.h5"
    temporary_sibling(path).write_bytes(b"half a file")
    with writer(path) as w:
        assert w.position == 0
        write_rows(w)
    assert "discarding partial work" in caplog.text and "it is unreadable" in caplog.text
    assert read_attrs(path)["n_rows"] == 5


def test_skipped_rows_shrink_the_file_and_are_recorded(tmp_path):
    path = tmp_path / "features.h5"
    with writer(path) as w:
        keep = [0, 1, 3]
        w.write(
            5, {"pooled": POOLED[keep], "maps": MAPS[keep]}, [PATHS[i] for i in keep], LABELS[keep],
            [SPLITS[i] for i in keep], skipped=[(PATHS[2], "cannot decode image: truncated"), (PATHS[4], "empty file")],
        )
        assert w.skipped() == [(PATHS[2], "cannot decode image: truncated"), (PATHS[4], "empty file")]
    with h5py.File(path, "r") as f:
        assert f["features/pooled"].shape == (3, 6) and f["paths"].shape == (3,)
        assert f["skipped/path"].asstr()[()].tolist() == [PATHS[2], PATHS[4]]
        assert f.attrs["n_rows"] == 3


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_is_lossless(tmp_path, compression):
    path = tmp_path / "features.h5"
    with writer(path, compression=compression) as w:
        write_rows(w)
    with h5py.File(path, "r") as f:
        assert f["features/pooled"].compression == compression
    np.testing.assert_array_equal(load_split(path, "pooled", "train").X, POOLED[[0, 2, 4]])


def test_no_rows_to_write_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"no images to extract into {tmp_path / 'f.h5'}")):
        writer(tmp_path / "f.h5", capacity=0)


def test_strings_have_a_fixed_length_and_longer_ones_are_refused(tmp_path):
    path = tmp_path / "features.h5"
    with writer(path, path_bytes=16, split_bytes=5) as w:
        write_batch(w, 0, 3)
        message = r"^/paths holds strings of at most 16 bytes \(UTF-8\). Received: 'ééééééééx' \(17 bytes\)$"
        with pytest.raises(ValueError, match=message):
            w.write(None, {"pooled": POOLED[3:4], "maps": MAPS[3:4]}, ["é" * 8 + "x"], LABELS[3:4], SPLITS[3:4])
        write_batch(w, 3, 5)
    with h5py.File(path, "r") as f:
        assert tuple(h5py.check_string_dtype(f["paths"].dtype)) == ("utf-8", 16)
        assert tuple(h5py.check_string_dtype(f["split"].dtype)) == ("utf-8", 5)
        assert f["paths"].asstr()[()].tolist() == PATHS and f["split"].asstr()[()].tolist() == SPLITS


# --- crash safety ---------------------------------------------------------------------------------------------


def test_rows_reach_the_file_before_the_progress_that_counts_them(tmp_path, monkeypatch):
    flush, progress = h5py.File.flush, []

    def recording(f):
        progress.append(f["progress"][()].tolist())  # what this flush writes
        flush(f)

    monkeypatch.setattr(h5py.File, "flush", recording)
    with writer(tmp_path / "features.h5") as w:
        write_batch(w, 0, 3)
        write_batch(w, 3, 5)
    assert progress == [[0, 0], [3, 3], [3, 3], [5, 5]]  # each batch: its rows flushed, then its progress


# Run in a child process that dies (os._exit: no cleanup, no HDF5 close, as after SIGKILL) at one finishing step.
DIE_AT = """
import os, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_store
from pipeline import store

path, point, compression = Path(sys.argv[1]), sys.argv[2], sys.argv[3] or None
partial, undo = store.temporary_sibling(path), store.temporary_sibling(path, ".undo.partial")
replace, unlink = os.replace, Path.unlink
if point == "undo saved":
    store.FeatureWriter._finish = lambda self: os._exit(9)
if point == "finished in place":
    os.replace = lambda source, target: os._exit(9) if Path(source) == partial else replace(source, target)
if point == "renamed":
    Path.unlink = lambda self, **kwargs: os._exit(9) if self == undo and path.exists() else unlink(self, **kwargs)
test_store.write_skipping(path, compression)
"""


def write_skipping(path, compression=None):
    """The five rows of seven images in two batches, two images skipped; a resumed writer writes the batches left."""
    with writer(path, capacity=7, compression=compression) as w:
        if w.position < 3:
            write_rows_of(w, 3, slice(0, 2), skipped=[("x.png", "bad")])
        if w.position < 7:
            write_rows_of(w, 7, slice(2, 5), skipped=[("y.png", "é")])


def write_rows_of(w, position, rows, skipped=()):
    """Rows ``rows`` of the five, marked done up to ``position``, with the files ``skipped`` among them."""
    values = {"pooled": POOLED[rows], "maps": MAPS[rows]}
    w.write(position, values, PATHS[rows], LABELS[rows], SPLITS[rows], skipped=skipped)


def die_at(path, point, compression):
    code = DIE_AT.format(tests=str(Path(__file__).parent))
    args = [sys.executable, "-c", code, str(path), point, compression or ""]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 9, done.stderr


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("point", ["undo saved", "finished in place", "half the finishing writes on disk", "renamed"])
def test_a_run_killed_in_its_finishing_steps_is_finished_by_the_next(tmp_path, point, compression, caplog):
    uninterrupted = tmp_path / "reference" / "features.h5"
    write_skipping(uninterrupted, compression)
    path = tmp_path / "features.h5"
    die_at(path, "finished in place" if point == "half the finishing writes on disk" else point, compression)
    undo = temporary_sibling(path, ".undo.partial")
    assert undo.exists()
    if point == "half the finishing writes on disk":  # a kill in HDF5's flush: some of its writes landed, some not
        with undo.open("rb") as saved, temporary_sibling(path).open("r+b") as partial:
            for k, (offset, length) in enumerate(json.loads(saved.readline())["gaps"]):
                before = saved.read(length)
                if k % 2:
                    partial.seek(offset)
                    partial.write(before)
    caplog.set_level(logging.INFO, logger="pipeline.store")
    write_skipping(path, compression)
    if point != "renamed":
        assert "rolled back the interrupted finishing steps" in caplog.text and "resuming" in caplog.text
    assert_same_contents(contents(path), contents(uninterrupted))
    assert path.read_bytes() == uninterrupted.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5", "reference"]  # no temporary files left
    with h5py.File(path, "r") as f:
        assert f["skipped/path"].asstr()[()].tolist() == ["x.png", "y.png"]
        assert f["skipped/reason"].asstr()[()].tolist() == ["bad", "é"]


def test_the_skipped_log_keeps_only_marked_batches_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "features.h5"
    with pytest.raises(RuntimeError):
        with writer(path, capacity=7) as w:
            write_rows_of(w, 3, slice(0, 2), skipped=[("x.png", "bad")])
            write_rows_of(w, None, slice(2, 3), skipped=[("y.png", "not marked")])
            raise RuntimeError("killed")
    log_file = temporary_sibling(path, ".skipped.partial")
    with log_file.open("a") as f:
        f.write('[3, "z.png", "torn')
    with writer(path, capacity=7) as w:
        assert w.skipped() == [("x.png", "bad")] and (w.position, w.rows) == (3, 2)
        write_rows_of(w, 7, slice(2, 5), skipped=[("y.png", "é")])
    with h5py.File(path, "r") as f:
        assert f["skipped/path"].asstr()[()].tolist() == ["x.png", "y.png"]


def damage(path, how):
    partial = temporary_sibling(path)
    if how == "truncated":
        os.truncate(partial, partial.stat().st_size // 2)
    elif how == "dataset missing":
        with h5py.File(partial, "r+") as f:
            del f["labels"]
    elif how == "impossible progress":
        with h5py.File(partial, "r+") as f:
            f["progress"][:] = (9, 9)
    elif how == "skipped log missing":
        temporary_sibling(path, ".skipped.partial").unlink()
    elif how == "undo of another file":
        temporary_sibling(path, ".undo.partial").write_text('{"inode": -1, "size": 0, "gaps": []}\n')


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("truncated", "it is unreadable"),
        ("dataset missing", "/labels is missing or has another shape or type"),
        ("impossible progress", "its progress record is impossible (9 images done, 9 rows written)"),
        ("skipped log missing", "its log of skipped images"),
        ("undo of another file", "was saved from another file"),
    ],
)
def test_a_partial_file_that_cannot_be_continued_is_discarded_with_a_log_line(tmp_path, how, why, caplog):
    path = tmp_path / "features.h5"
    kill_after_first_batch(path)
    damage(path, how)
    with writer(path) as w:
        assert (w.position, w.rows) == (0, 0)
        write_rows(w)
    assert "discarding partial work" in caplog.text and why in caplog.text and "starting again" in caplog.text
    with h5py.File(path, "r") as f:
        assert f["paths"].asstr()[()].tolist() == PATHS


def test_an_hdf5_error_while_writing_removes_the_partial_file_and_says_so_in_one_line(tmp_path, monkeypatch):
    def damaged(*args):
        raise OSError("Can't synchronously write data (bad heap index, heap object = {43562e0, 195})")

    path = tmp_path / "features.h5"
    pattern = (r"^cannot write .*\.features\.h5\.partial: Can't synchronously write data \(bad heap index.*\); it was "
               r"removed, so the same command starts over$")
    with pytest.raises(UserError, match=pattern):
        with writer(path) as w:
            write_batch(w, 0, 3)
            monkeypatch.setattr(h5py.Dataset, "__setitem__", damaged)
            write_batch(w, 3, 5)
    monkeypatch.undo()
    assert sorted(tmp_path.iterdir()) == []  # no trap left for the next run
    with writer(path) as w:
        assert w.position == 0
        write_rows(w)


def test_a_disk_without_room_for_the_file_is_refused_before_any_row(tmp_path, monkeypatch):
    free = OVERHEAD_BYTES + 1000
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**6, 10**6 - free, free))
    row = 6 * 4 + 2 * 2 * 3 * 2 + 255 + 8 + 16 + 64 + 1  # features, paths, labels, split, sha256, split code
    needed = format_bytes(OVERHEAD_BYTES + 4 * row)
    message = (f"not enough disk space to write {tmp_path / 'features.h5'}: it needs {needed}, and {tmp_path} has "
               f"{format_bytes(free)} free")
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        writer(tmp_path / "features.h5", capacity=4)
    assert list(tmp_path.iterdir()) == []
    with writer(tmp_path / "small.h5", capacity=2):  # 784 bytes and the overhead: room enough
        pass


def test_a_resumed_file_needs_only_the_room_it_does_not_hold_yet(tmp_path, monkeypatch):
    path = tmp_path / "features.h5"
    kill_after_first_batch(path)
    free = OVERHEAD_BYTES  # less than a new file needs, more than the finishing steps of this one need
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**6, 10**6 - free, free))
    with writer(path) as w:  # allocated in full when it was created
        assert w.position == 3
        write_batch(w, 3, 5)
    with pytest.raises(UserError, match="not enough disk space"):
        writer(tmp_path / "other.h5")


def test_a_compressed_file_is_not_checked_against_free_space_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**6, 10**6, 0))
    caplog.set_level(logging.INFO, logger="pipeline.store")
    with writer(tmp_path / "features.h5", compression="gzip") as w:
        write_rows(w)
    assert "its size is not known in advance, so free disk space is not checked" in caplog.text


# --- readers --------------------------------------------------------------------------------------------------


def test_open_features_opens_a_complete_file_for_reading(features):
    with open_features(features) as f:
        assert f.mode == "r" and f["features/pooled"].shape == (5, 6)


def test_open_features_refuses_a_missing_file_naming_it(tmp_path):
    path = tmp_path / "features.h5"
    with pytest.raises(ConfigError, match=re.escape(f"features file not found: {path}")):
        open_features(path)


@pytest.mark.parametrize("attrs", [{"complete": False}, {}], ids=["complete=False", "no complete attribute"])
def test_open_features_refuses_an_incomplete_file_naming_it(tmp_path, attrs):
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update(attrs)
        f.create_dataset("labels", data=LABELS)
    with pytest.raises(ConfigError, match=re.escape(f"features file {path} is incomplete (attribute complete is not True)")):
        open_features(path)
    with h5py.File(path, "r+"):  # fails with "already open for read-only" unless the refused file was closed
        pass


@pytest.mark.parametrize(("split", "rows"), [("train", [0, 2, 4]), ("val", [1]), ("test", [3])])
def test_load_split_selects_that_splits_rows(features, split, rows):
    loaded = load_split(features, "pooled", split)
    np.testing.assert_array_equal(loaded.X, POOLED[rows])
    np.testing.assert_array_equal(loaded.y, LABELS[rows])
    maps = load_split(features, "maps", split)
    np.testing.assert_array_equal(maps.X, MAPS[rows].astype(np.float16))


def test_load_split_of_contiguous_rows(tmp_path):
    path = tmp_path / "features.h5"
    splits = ["train", "train", "train", "val", "val"]
    with writer(path) as w:
        write_rows(w, splits)
    np.testing.assert_array_equal(load_split(path, "pooled", "train").X, POOLED[:3])
    np.testing.assert_array_equal(load_split(path, "pooled", "val").y, LABELS[3:])


@pytest.mark.parametrize(
    ("splits", "split", "expected"),
    [(SPLITS, "train", [0, 2, 4]), (SPLITS, "val", slice(1, 2)), (["val", "val", "train", "train", "test"], "train", slice(2, 4))],
)
def test_split_rows_by_code_and_by_the_strings_agree(tmp_path, splits, split, expected):
    path = tmp_path / "features.h5"
    with writer(path) as w:
        write_rows(w, splits)
    with h5py.File(path, "r") as f:
        names = json.loads(f["split_code"].attrs["names"])
        assert names == sorted(set(splits))
        assert [names[code] for code in f["split_code"][()]] == splits
    for drop_codes in (False, True):  # True: a file written by hand, with /split only
        if drop_codes:
            with h5py.File(path, "r+") as f:
                del f["split_code"]
        with open_features(path) as f:
            rows = split_rows(f, split)
            assert rows == expected if isinstance(expected, slice) else rows.tolist() == expected
            with pytest.raises(ConfigError, match=re.escape("split must be one of ['test', 'train', 'val']. Received")):
                split_rows(f, "valid")


def test_load_split_flatten_gives_one_row_per_image(features):
    loaded = load_split(features, "maps", "train", flatten=True)
    assert loaded.X.shape == (3, 12)
    np.testing.assert_array_equal(loaded.X, MAPS[[0, 2, 4]].reshape(3, 12).astype(np.float16))


def test_load_split_names_the_allowed_splits_and_layers(features):
    with pytest.raises(ConfigError, match=re.escape("split must be one of ['test', 'train', 'val']. Received: split='valid'")):
        load_split(features, "pooled", "valid")
    with pytest.raises(ConfigError, match=re.escape("layer must be one of ['maps', 'pooled']. Received: layer='conv'")):
        load_split(features, "conv", "train")


def test_a_split_without_rows_is_named_with_the_file_and_why_it_can_be_empty(tmp_path):
    path = tmp_path / "features.h5"
    with writer(path) as w:
        write_rows(w, ["train", "val", "train", "val", "train"])
    message = f"split must be one of ['train', 'val']. Received: split='test': {path} has no rows in it. (A source"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_split(path, "pooled", "test")


def test_load_split_refuses_an_incomplete_file(features):
    with h5py.File(features, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(ConfigError, match=re.escape(f"features file {features} is incomplete")):
        load_split(features, "pooled", "train")


def test_read_attrs_decodes_json_and_numpy_scalars(tmp_path):
    attrs = {"pooling": {"a": "avg"}, "input_size": (64, 64), "seed": 3, "scale": 0.5, "backbone": "mobilenet"}
    with writer(tmp_path / "f.h5", attrs=attrs):
        pass
    decoded = read_attrs(tmp_path / "f.h5")
    assert decoded == {**attrs, "input_size": [64, 64], "complete": True, "n_rows": 0, "resume_key": "key-1"}
    assert type(decoded["complete"]) is bool and type(decoded["n_rows"]) is int and type(decoded["scale"]) is float


@pytest.mark.parametrize("text", ["[2024] scans/images", ""])
def test_read_attrs_returns_plain_text_attrs_unchanged(tmp_path, text):
    # Provenance holds free text such as the image root (str(manifest.root)), which may start with a bracket.
    with writer(tmp_path / "f.h5", attrs={"image_root": text}):
        pass
    assert read_attrs(tmp_path / "f.h5")["image_root"] == text


# --- FeatureReader: the rows another file copies (reuse, shards) ------------------------------------------------------


def test_a_feature_reader_gives_hashes_splits_and_rows_by_dataset_name(tmp_path):
    path = tmp_path / "f.h5"
    hashes = [f"{row:064x}" for row in range(5)]
    with writer(path, attrs={"versions": {"numpy": "2"}}) as w:
        w.write(5, {"pooled": POOLED, "maps": MAPS}, PATHS, LABELS, SPLITS, hashes=hashes)
    with FeatureReader(path) as reader:
        assert reader.copyable()
        assert reader.attrs()["versions"] == {"numpy": "2"}
        assert reader.hashes() == hashes
        assert reader.in_split("train").tolist() == [True, False, True, False, True]
        assert not reader.in_split("unknown").any()
        rows = reader.read(np.array([4, 0, 4]), ["features/pooled", "features/maps"])
    np.testing.assert_array_equal(rows["features/pooled"], POOLED[[4, 0, 4]])
    np.testing.assert_array_equal(rows["features/maps"], MAPS[[4, 0, 4]].astype(np.float16))


def test_a_partial_file_is_not_copyable_and_records_its_resume_key(tmp_path):
    kill_after_first_batch(tmp_path / "f.h5")
    partial = temporary_sibling(tmp_path / "f.h5")
    assert stored_resume_key(partial) == "key-1"
    with FeatureReader(partial) as reader:
        assert not reader.copyable()


def test_empty_rows_have_the_shape_and_dtype_of_the_named_datasets(tmp_path):
    with writer(tmp_path / "f.h5", views=2) as w:
        rows = w.empty_rows(["features/maps", "views/pooled"], 3)
    assert (rows["features/maps"].shape, rows["features/maps"].dtype) == ((3, 2, 2, 3), np.float16)
    assert (rows["views/pooled"].shape, rows["views/pooled"].dtype) == ((3, 2, 6), np.float32)


@pytest.mark.parametrize(("split", "rows"), [("train", [0, 2, 4]), (None, [0, 1, 2, 3, 4])])
def test_load_dask_is_lazy_and_equals_the_numpy_reader(features, split, rows):
    X, y = load_dask(features, "maps", split)
    assert X.shape == (len(rows), 2, 2, 3)
    np.testing.assert_array_equal(X.compute(), MAPS[rows].astype(np.float16))
    np.testing.assert_array_equal(y, LABELS[rows])


def test_load_dask_chunks_are_whole_multiples_of_the_hdf5_chunks(tmp_path):
    path = tmp_path / "big.h5"
    n = 1000
    with writer(path, capacity=n, layers={"wide": ((1024,), "float32")}) as w:
        w.write(n, {"wide": np.ones((n, 1024), np.float32)}, ["p"] * n, np.zeros(n, int), ["train"] * n)
    X, _ = load_dask(path, "wide", chunk_bytes=3 << 20)
    with h5py.File(path, "r") as f:
        hdf5_rows = f["features/wide"].chunks[0]
    assert X.chunks[0][0] % hdf5_rows == 0 and X.chunks[0][0] == 3 * hdf5_rows
    assert float(X.sum().compute()) == n * 1024


def concatenated(blocks):
    blocks = list(blocks)
    return np.concatenate([b.X for b in blocks]), np.concatenate([b.y for b in blocks])


# --- iter_chunks and split_nbytes, on synthetic files with interleaved or grouped splits ------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [("wide",), ("maps",), ("maps", "wide")], ids="+".join)
@pytest.mark.parametrize("split", ["train", "val", "test", None])
def test_blocks_in_file_order_concatenate_to_load_layers(synthetic, layers, split):
    expected = load_layers(synthetic, layers, split)
    blocks = list(iter_chunks(synthetic, layers, split, chunk_bytes=100 * ROW))
    X, y = concatenated(blocks)
    assert len(blocks) > 1 or layers == ("maps",)
    assert X.dtype == expected.X.dtype == (np.float16 if layers == ("maps",) else np.float32)
    np.testing.assert_array_equal(X, expected.X)
    np.testing.assert_array_equal(y, expected.y)


@pytest.mark.parametrize("layers", [("wide",), ("maps", "wide")], ids="+".join)
@pytest.mark.parametrize("split", ["train", "test", None])
def test_split_nbytes_is_what_load_layers_holds(synthetic, layers, split):
    assert split_nbytes(synthetic, layers, split) == load_layers(synthetic, layers, split).X.nbytes


def test_seeded_blocks_are_a_permutation_of_the_rows_fixed_by_the_seed(interleaved):
    expected = load_layers(interleaved, ["wide"], "train")

    def rows(seed):
        return concatenated(iter_chunks(interleaved, ["wide"], "train", chunk_bytes=100 * ROW, seed=seed))

    X, y = rows(3)
    ids = X[:, 0]
    order = np.argsort(ids)
    np.testing.assert_array_equal(X[order], expected.X)
    np.testing.assert_array_equal(y[order], expected.y)
    assert not np.all(np.diff(ids[:100]) > 0)  # rows are shuffled within the first block too
    np.testing.assert_array_equal(rows(3)[0], X)
    assert not np.array_equal(rows(4)[0][:, 0], ids)


def test_blocks_fill_chunk_bytes_and_end_where_an_hdf5_chunk_starts(synthetic):
    with open_features(synthetic) as f:
        assert f["features/wide"].chunks == (256, WIDE)
    blocks = list(iter_chunks(synthetic, ["wide"], None, chunk_bytes=600 * ROW))
    assert [len(b.y) for b in blocks] == [512, 512, 176]  # 600 rows fit; two whole chunks are read per block
    train = list(iter_chunks(synthetic, ["maps", "wide"], "train", chunk_bytes=600 * ROW))
    assert all(b.X.nbytes <= 600 * ROW for b in train)
    first_ids, last_ids = (np.array([b.X[i, 32] for b in train]) for i in (0, -1))  # wide column 0: row number
    assert np.all(last_ids[:-1] // 256 < first_ids[1:] // 256)  # no HDF5 chunk is split between two blocks


def test_seeded_blocks_mix_whole_hdf5_chunks_from_across_the_split(synthetic):
    blocks = list(iter_chunks(synthetic, ["wide"], None, chunk_bytes=600 * ROW, seed=0))
    chunks = [set((b.X[:, 0] // 256).astype(int).tolist()) for b in blocks]  # HDF5 chunks of 256 rows
    assert sum(len(b.y) for b in blocks) == N_ROWS and all(len(b.y) <= 600 for b in blocks)
    assert sorted(c for block in chunks for c in block) == [0, 1, 2, 3, 4]  # each chunk read by one block
    assert any(max(block) - min(block) >= len(block) for block in chunks)  # a block of chunks that are not neighbours


def test_a_budget_under_one_row_still_gives_one_row_a_block(interleaved):
    blocks = list(iter_chunks(interleaved, ["wide"], "val", chunk_bytes=1))
    assert {len(b.y) for b in blocks} == {1}
    assert len(blocks) == len(load_layers(interleaved, ["wide"], "val").y)


def test_unknown_layer_names_the_stored_ones(interleaved):
    with pytest.raises(ConfigError, match=r"layer must be one of \['maps', 'wide'\]. Received: layer='deep'"):
        next(iter_chunks(interleaved, ["wide", "deep"], "train", chunk_bytes=1 << 20))
