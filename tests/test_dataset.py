"""Tests for pipeline.dataset: read_split_folders turns <split>/<class>/ folders into a row-aligned manifest."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.dataset import IMAGE_EXTENSIONS, read_split_folders
from pipeline.validation import ConfigError


def make_tree(root, *files):
    """Create ``files`` (paths relative to ``root``): tiny real images for image suffixes, text otherwise."""
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            Image.new("RGB", (4, 4), (10, 20, 30)).save(path, format=Image.registered_extensions()[path.suffix.lower()])
        else:
            path.write_text("not an image")
    return root


def test_digits_manifest_is_row_aligned_and_relative_to_root(manifest, digits_dir):
    assert manifest.root == digits_dir
    assert manifest.class_names == tuple(str(c) for c in range(10))
    assert len(manifest) == len(manifest.labels) == len(manifest.splits) == 100
    assert manifest.labels.dtype == np.int64
    for i, path in enumerate(manifest.paths):
        split, class_name, _ = path.split("/")
        assert (split, class_name) == (manifest.splits[i], manifest.class_names[manifest.labels[i]])
        assert manifest.absolute(i) == digits_dir / path and manifest.absolute(i).is_file()
    assert sorted(set(manifest.splits)) == ["test", "train", "val"]


def test_rows_are_grouped_by_split_then_class_then_file_name(tmp_path):
    root = make_tree(tmp_path, "val/b/2.png", "train/b/1.png", "train/a/9.png", "train/a/10.png", "test/a/1.jpg")
    manifest = read_split_folders(root)
    assert manifest.paths == ("train/a/10.png", "train/a/9.png", "train/b/1.png", "val/b/2.png", "test/a/1.jpg")
    assert manifest.splits == ("train", "train", "train", "val", "test")
    assert manifest.labels.tolist() == [0, 0, 1, 1, 0]


def test_class_names_are_sorted_and_gathered_from_every_split(tmp_path):
    root = make_tree(tmp_path, "train/zebra/1.png", "train/apple/1.png", "train/10/1.png", "val/2/1.png")
    manifest = read_split_folders(root)
    assert manifest.class_names == ("10", "2", "apple", "zebra")
    assert dict(zip(manifest.paths, manifest.labels.tolist())) == {
        "train/10/1.png": 0, "train/apple/1.png": 2, "train/zebra/1.png": 3, "val/2/1.png": 1,
    }


def test_every_image_extension_in_any_case_is_read(tmp_path):
    names = [f"train/a/{i}{ext}" for i, ext in enumerate(IMAGE_EXTENSIONS)] + ["train/a/upper.PNG", "train/a/deep/x.png"]
    manifest = read_split_folders(make_tree(tmp_path, *names))
    assert sorted(manifest.paths) == sorted(names)


def test_other_files_are_reported_not_read(tmp_path, caplog):
    root = make_tree(tmp_path, "train/a/1.png", "train/a/notes.txt", "train/a/.DS_Store", "train/b/labels.csv")
    with caplog.at_level(logging.WARNING, logger="pipeline.dataset"):
        manifest = read_split_folders(root)
    assert manifest.paths == ("train/a/1.png",)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ignored 1 file(s)" in m and "notes.txt" in m for m in warnings), warnings
    assert any("ignored 1 file(s)" in m and "labels.csv" in m for m in warnings), warnings
    assert not any(".DS_Store" in m for m in warnings), "hidden files are skipped quietly"


def test_missing_train_folder_is_named_with_the_folders_found(tmp_path):
    root = make_tree(tmp_path, "val/a/1.png", "Train_old/a/1.png")
    with pytest.raises(ConfigError, match=re.escape("(at least 'train')")) as error:
        read_split_folders(root)
    assert str(root) in str(error.value)
    assert "Found folders: ['Train_old', 'val']" in str(error.value)


def test_missing_root_is_named(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"image folder not found: {tmp_path / 'nope'}")):
        read_split_folders(tmp_path / "nope")


def test_train_without_class_folders_is_refused(tmp_path):
    root = make_tree(tmp_path, "train/loose.png")
    with pytest.raises(ConfigError, match=re.escape(f"{root}/train holds no class folders")):
        read_split_folders(root)


def test_class_folders_without_images_are_refused_naming_the_extensions(tmp_path):
    root = make_tree(tmp_path, "train/a/readme.md")
    with pytest.raises(ConfigError, match=re.escape(f"no images with extensions {list(IMAGE_EXTENSIONS)} found under {root}")):
        read_split_folders(root)


def test_symlink_escaping_the_root_is_refused_naming_it(tmp_path):
    outside = make_tree(tmp_path, "outside/secret.png") / "outside" / "secret.png"
    root = make_tree(tmp_path / "images", "train/a/1.png")
    link = root / "train" / "a" / "2.png"
    link.symlink_to(outside)
    with pytest.raises(ConfigError, match=re.escape(f"image {link} resolves to {outside}, outside the image root {root}")):
        read_split_folders(root)


def test_symlink_within_the_root_is_read(tmp_path):
    root = make_tree(tmp_path, "train/a/1.png")
    (root / "train" / "b").mkdir()
    (root / "train" / "b" / "1.png").symlink_to(root / "train" / "a" / "1.png")
    assert read_split_folders(root).paths == ("train/a/1.png", "train/b/1.png")
