"""Tests for pipeline.prepare: the digits written as RGB PNGs in stratified, seeded split/class folders, atomically."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.config import PrepareConfig
from pipeline.prepare import SPLITS, WRITTEN, prepare_digits, render_digit, split_indices
from pipeline.validation import ConfigError

CLASSES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def tree(root):
    """Every file under ``root`` as {relative posix path: bytes}."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_rgb_pngs_in_split_class_folders(digits_dir):
    assert sorted(p.name for p in digits_dir.iterdir()) == sorted([*SPLITS, WRITTEN])
    for split in SPLITS:
        assert sorted(p.name for p in (digits_dir / split).iterdir()) == CLASSES, f"{split} lacks a class"
    files = sorted(digits_dir.rglob("*.png"))
    assert len(files) == 100
    # the record of what prepare wrote (hidden, so no image source reads it) lists exactly those files
    assert sorted(json.loads((digits_dir / WRITTEN).read_text())) == [p.relative_to(digits_dir).as_posix() for p in files]
    for path in files:
        assert path.suffix == ".png"
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (16, 16))


def test_each_file_is_its_digit_in_its_label_folder(digits_dir, digits):
    for path in sorted(digits_dir.rglob("*.png")):
        row = int(path.stem.removeprefix("digit_"))
        assert path.parent.name == str(digits.target[row])
        pixels = np.asarray(Image.open(path))
        assert (pixels == pixels[..., :1]).all(), "digits are grey"
        expected = 255 - np.round(digits.images[row] * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(pixels[::2, ::2, 0], expected)
        np.testing.assert_array_equal(pixels[1::2, 1::2, 0], expected)


def test_counts_add_up_and_per_class_limit_is_respected(tmp_path):
    root = tmp_path / "images"
    counts = prepare_digits(root, PrepareConfig(image_size=8, per_class_limit=12, seed=1))
    assert sum(counts.values()) == 120
    assert counts == {split: len(list((root / split).rglob("*.png"))) for split in SPLITS}
    for name in CLASSES:
        assert len(list(root.glob(f"*/{name}/*.png"))) == 12


def test_full_dataset_is_split_by_the_configured_fractions(tmp_path):
    root = tmp_path / "images"
    counts = prepare_digits(root, PrepareConfig(image_size=8, val_fraction=0.2, test_fraction=0.1))
    total = sum(counts.values())
    assert total == 1797
    assert counts["val"] / total == pytest.approx(0.2, abs=0.002)
    assert counts["test"] / total == pytest.approx(0.1, abs=0.002)
    expected = split_indices(load_digits().target, val_fraction=0.2, test_fraction=0.1, seed=0)
    for split in SPLITS:  # the files of each split are the rows split_indices picks
        rows = sorted(int(p.stem.removeprefix("digit_")) for p in (root / split).rglob("*.png"))
        assert rows == expected[split].tolist(), split


def test_same_seed_gives_identical_files_and_another_seed_another_split(tmp_path, digits_dir):
    again = tmp_path / "again"
    prepare_digits(again, PrepareConfig(image_size=16, per_class_limit=10))  # digits_dir's config
    assert tree(again) == tree(digits_dir)

    other = tmp_path / "other"
    prepare_digits(other, PrepareConfig(image_size=16, per_class_limit=10, seed=1))
    assert sorted(tree(other)) != sorted(tree(digits_dir))


def test_rerun_replaces_its_own_folder_and_leaves_no_partial_sibling(tmp_path):
    root = tmp_path / "images"
    prepare_digits(root, PrepareConfig(image_size=8, per_class_limit=10, seed=1))
    first = set(tree(root))
    prepare_digits(root, PrepareConfig(image_size=8, per_class_limit=10))
    assert first - set(tree(root))  # files of the first run that the second does not write are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.mark.parametrize("foreign", ["train/3/my_photo.jpg", "holiday.jpg"])
def test_a_folder_with_files_prepare_did_not_write_is_never_replaced(tmp_path, foreign):
    root = tmp_path / "images"
    prepare_digits(root, PrepareConfig(image_size=8, per_class_limit=10))
    (root / foreign).parent.mkdir(parents=True, exist_ok=True)
    (root / foreign).write_bytes(b"a user's photo")
    before = tree(root)
    with pytest.raises(ConfigError, match=re.escape(f"refusing to replace {root}: it holds 1 file(s) the demo's prepare stage did not write, e.g. {root / foreign}")):
        prepare_digits(root, PrepareConfig(image_size=8, per_class_limit=10))
    assert tree(root) == before and (root / foreign).read_bytes() == b"a user's photo"


def test_a_folder_of_someone_else_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(ConfigError, match=r"refusing to replace .*photos: it holds 1 file"):
        prepare_digits(tmp_path / "photos", PrepareConfig(image_size=8, per_class_limit=10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"] and (tmp_path / "photos" / "cat.jpg").read_bytes() == b"jpeg"


def test_failed_run_leaves_existing_output_untouched_and_no_partial_folder(tmp_path):
    root = tmp_path / "images"
    prepare_digits(root, PrepareConfig(image_size=8, per_class_limit=10))
    before = tree(root)
    # Three digits per class cannot be split 70/15/15 with every class in every split.
    with pytest.raises(ConfigError, match=re.escape("cannot split 30 images of 10 classes with val_fraction=0.15 and test_fraction=0.15")):
        prepare_digits(root, PrepareConfig(image_size=8, per_class_limit=3))
    assert tree(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_split_is_pinned_for_the_default_seed(digits_dir):
    """The split prepare has always written for the default seed: same seed, same files."""
    test_rows = sorted(int(p.stem.removeprefix("digit_")) for p in (digits_dir / "test").rglob("*.png"))
    assert test_rows == [61, 118, 155, 377, 544, 599, 778, 901, 1002, 1105, 1122, 1546, 1701, 1729, 1784]
    assert {split: len(list((digits_dir / split).rglob("*.png"))) for split in SPLITS} == {
        "train": 69, "val": 16, "test": 15,
    }


def test_split_indices_are_disjoint_sorted_complete_and_stratified():
    labels = np.repeat(np.arange(4), 20)
    splits = split_indices(labels, val_fraction=0.25, test_fraction=0.25, seed=3)
    assert sorted(splits) == sorted(SPLITS)
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(80))
    for split, rows in splits.items():
        assert (np.diff(rows) > 0).all(), f"{split} not sorted"
    assert np.bincount(labels[splits["train"]]).tolist() == [10] * 4
    assert np.bincount(labels[splits["val"]]).tolist() == [5] * 4
    assert np.bincount(labels[splits["test"]]).tolist() == [5] * 4


def test_split_indices_depend_only_on_the_seed():
    labels = np.repeat(np.arange(3), 10)
    first = split_indices(labels, 0.15, 0.15, 5)
    assert all(np.array_equal(first[s], split_indices(labels, 0.15, 0.15, 5)[s]) for s in SPLITS)
    assert not np.array_equal(first["test"], split_indices(labels, 0.15, 0.15, 6)["test"])


def test_split_indices_refuse_too_few_images_saying_so():
    labels = np.array([0, 0, 1, 1, 1, 2])
    message = "cannot split 6 images of 3 classes with val_fraction=0.2 and test_fraction=0.2: too few images"
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        split_indices(labels, 0.2, 0.2, 0)
    assert "the smallest class has 1 image(s)" in str(error.value)


def test_render_digit_is_dark_ink_on_white_upscaled_with_nearest():
    pixels = np.zeros((8, 8))
    pixels[0, 0] = 16
    pixels[7, 7] = 8
    img = render_digit(pixels, 24)
    assert (img.mode, img.size) == ("RGB", (24, 24))
    array = np.asarray(img)
    np.testing.assert_array_equal(array[:3, :3], 0)  # full ink is black, one 3x3 block
    np.testing.assert_array_equal(array[21:, 21:], 127)  # half ink: 255 - round(8 * 255 / 16)
    assert (array[3:21] == 255).all() and (array[:, 3:21] == 255).all()  # no ink is white paper
