"""Incremental extraction: only new or changed images go through the model, and the file equals a from-scratch run."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from synthetic import assert_same_contents, contents

from pipeline.config import ExtractConfig
from pipeline.extraction.dataset import read_split_folders
from pipeline.extraction.extract import extract_features
from pipeline.extraction.reuse import entries, reuse_folder

# oneDNN's CPU kernels can change the last bits of an image's features with its slot in the batch, and inserting or
# removing images moves the slots of those after them: a from-scratch run of the new set computes some unchanged
# images in other slots than the run their reused rows come from (the copied rows themselves are bit-identical).
ROUNDING = 1e-5


@pytest.fixture(scope="module")
def config():
    return ExtractConfig.from_params(
        {"backbone": "mobilenet", "input_size": [32, 32], "batch_size": 8, "layers": ["conv_pw_3_relu"],
         "pixels": 4, "augment_views": 1, "augment": {"rotation": 15, "crop": 0.8, "seed": 3}}
    )


@pytest.fixture
def images(digits_dir, tmp_path):
    """A writable copy of the 100 test digits."""
    return shutil.copytree(digits_dir, tmp_path / "images")


def edit(path, change) -> None:
    """Rewrite the image at ``path`` with ``change`` applied to its pixels (new content, new hash)."""
    pixels = np.asarray(Image.open(path).convert("RGB")).copy()
    Image.fromarray(change(pixels)).save(path)


def grow(images, k: int) -> None:
    """Add ``k`` train images (mirrored copies of existing ones: new content), change one, delete one."""
    sources = sorted((images / "train" / "4").iterdir())
    for index, source in enumerate(sources[:k]):
        target = images / "train" / "4" / f"new_{index}.png"
        shutil.copy(source, target)
        edit(target, lambda pixels: pixels[:, ::-1])
    edit(sorted((images / "train" / "7").iterdir())[0], lambda pixels: 255 - pixels)
    sorted((images / "test" / "2").iterdir())[0].unlink()


def test_only_new_and_changed_images_go_through_the_model(images, config, tmp_path, caplog):
    out = tmp_path / "features.h5"
    first = extract_features(read_split_folders(images), config, out)
    assert (first.computed, first.reused) == (100, 0)
    before = contents(shutil.copy(out, tmp_path / "before.h5"))
    k = 3
    grow(images, k)
    out.unlink()  # as DVC does before it runs the stage: the rows come from the kept file
    caplog.set_level(logging.INFO, logger="pipeline")
    again = extract_features(read_split_folders(images), config, out)
    assert again.computed == k + 1  # counted where images enter the model
    assert again.reused == 100 - 2  # all but the changed and the deleted image
    assert f"{100 - 2} rows reused from earlier extractions, {k + 1} images computed" in caplog.text
    after = contents(out)
    old_rows = {key: row for row, key in enumerate(before["sha256"])}
    kept = [(old_rows[key], row) for row, key in enumerate(after["sha256"]) if key in old_rows]
    assert len(kept) == 98
    for name in ("features/conv_pw_3_relu", "views/conv_pw_3_relu", "features/pixels"):  # copied bit for bit
        np.testing.assert_array_equal(after[name][[r for _, r in kept]], before[name][[r for r, _ in kept]])
    scratch = extract_features(read_split_folders(images), dataclasses.replace(config, reuse=0), tmp_path / "scratch.h5")
    assert scratch.computed == 100 + k - 1
    # every row, path, label, hash and attribute equal; every value and view equal up to the batch slot's rounding
    assert_same_contents(contents(out), contents(scratch.path), float_rtol=ROUNDING)


def test_a_changed_config_reuses_nothing_and_alternating_configs_stay_correct(images, config, tmp_path):
    out = tmp_path / "features.h5"
    other = dataclasses.replace(config, input_size=(48, 48))
    assert extract_features(read_split_folders(images), config, out).computed == 100
    assert extract_features(read_split_folders(images), other, out).computed == 100  # nothing of config is reused
    grow(images, 2)
    back = extract_features(read_split_folders(images), config, out)  # the first config's rows were kept
    assert (back.computed, back.reused) == (3, 98)
    scratch = extract_features(read_split_folders(images), dataclasses.replace(config, reuse=0), tmp_path / "scratch.h5")
    assert_same_contents(contents(out), contents(scratch.path), float_rtol=ROUNDING)
    assert len(entries(out)) == 2


def test_the_kept_files_are_bounded_and_prunable(images, config, tmp_path):
    out = tmp_path / "features.h5"
    one = dataclasses.replace(config, reuse=1)
    extract_features(read_split_folders(images), one, out)
    stale = reuse_folder(out) / f".{entries(out)[0]['config_hash']}.h5.partial"
    stale.write_bytes(b"a link being made when a run was killed")
    extract_features(read_split_folders(images), dataclasses.replace(one, input_size=(48, 48)), out)
    assert not stale.exists()
    kept = entries(out)
    assert [entry["config_hash"] for entry in kept] != [] and len(kept) == 1  # the older config was dropped
    assert kept[0]["shared_with_output"]  # a hard link of the output: no extra disk while the output exists
    listing = subprocess.run(
        [sys.executable, "-m", "pipeline", "reuse", "--features", str(out), "--prune", "0"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "0 config(s) kept" in listing
    assert not reuse_folder(out).exists()
    assert extract_features(read_split_folders(images), dataclasses.replace(one, input_size=(48, 48)), out).reused == 100


def test_reuse_off_keeps_nothing(images, config, tmp_path):
    out = tmp_path / "features.h5"
    extract_features(read_split_folders(images), dataclasses.replace(config, reuse=0), out)
    assert not reuse_folder(out).exists()
    out.unlink()
    assert extract_features(read_split_folders(images), config, out).computed == 100
