"""Tests for pipeline.extraction.dataset: split folders, class folders, flat folders and CSV files become one manifest."""

from __future__ import annotations

import hashlib
import logging
import math
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.config import SplitConfig
from pipeline.extraction.dataset import (
    IMAGE_EXTENSIONS,
    SPLITS,
    UNLABELLED,
    content_split,
    read_csv,
    read_folder,
    read_images,
    read_split_folders,
)
from pipeline.extraction.hashing import file_sha256
from pipeline.validation import ConfigError


def make_tree(root, *files):
    """Create ``files`` (paths relative to ``root``): tiny real images for image suffixes, each of a colour drawn
    from its name (so distinct names give distinct content, and a split by content), text otherwise."""
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            colour = tuple(hashlib.sha256(name.encode()).digest()[:3])
            Image.new("RGB", (4, 4), colour).save(path, format=Image.registered_extensions()[path.suffix.lower()])
        else:
            path.write_text("not an image")
    return root


def write_csv(path, *lines):
    """Write ``lines`` as a text file (one per line) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def class_tree(root, counts, suffix=".png"):
    """``counts[name]`` images per class folder ``name`` under ``root``."""
    return make_tree(root, *(f"{name}/{i:02d}{suffix}" for name, n in counts.items() for i in range(n)))


def write_png(path, number):
    """A 4x4 PNG at ``path`` whose pixels encode ``number`` (below 2**24): distinct numbers, distinct content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (number & 255, number >> 8 & 255, number >> 16)).save(path)
    return path


def split_by_content(manifest):
    """{content sha256: split} of a manifest's rows, checking its hashes are those of its files."""
    assert manifest.hashes is not None
    assert [file_sha256(manifest.absolute(i)) for i in range(len(manifest))] == list(manifest.hashes)
    return dict(zip(manifest.hashes, manifest.splits))


def split_counts(manifest):
    """{class name: [train, val, test] image counts}."""
    splits = np.asarray(manifest.splits)
    return {
        name: [int(np.sum((manifest.labels == label) & (splits == s))) for s in SPLITS]
        for label, name in enumerate(manifest.class_names)
    }


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
    with caplog.at_level(logging.WARNING, logger="pipeline.extraction.dataset"):
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


# read_images on folders


def test_folder_with_split_folders_is_read_as_split_folders(tmp_path):
    root = make_tree(tmp_path, "train/b/1.png", "train/a/1.png", "test/a/2.png")
    manifest, direct = read_images(root), read_split_folders(root)
    assert manifest.paths == direct.paths and manifest.splits == direct.splits
    assert manifest.labels.tolist() == direct.labels.tolist() and manifest.class_names == direct.class_names
    assert manifest.paths == ("train/a/1.png", "train/b/1.png", "test/a/2.png")
    assert manifest.splits == ("train", "train", "test")


def test_folder_with_val_but_no_train_folder_says_train_is_missing(tmp_path):
    root = make_tree(tmp_path, "val/a/1.png", "test/a/1.png")
    with pytest.raises(ConfigError, match=re.escape("(at least 'train')")):
        read_images(root)


def test_class_folders_give_sorted_rows_hashed_and_split_by_content(tmp_path):
    root = class_tree(tmp_path / "images", {"dog": 10, "cat": 10, "bird": 10})
    config = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=1)
    manifest = read_folder(root, split=config)
    assert manifest.root == root
    assert manifest.class_names == ("bird", "cat", "dog")
    assert manifest.paths == tuple(sorted(manifest.paths)) and len(manifest) == 30
    assert manifest.paths[:2] == ("bird/00.png", "bird/01.png") and manifest.paths[-1] == "dog/09.png"
    assert manifest.labels.dtype == np.int64
    for i, path in enumerate(manifest.paths):
        assert path.split("/")[0] == manifest.class_names[manifest.labels[i]]
        assert manifest.absolute(i).is_file()
    split_by_content(manifest)  # the hashes are the files' sha256, kept so that extraction does not hash again
    assert manifest.hashed() is manifest
    assert manifest.splits == tuple(content_split(h, config) for h in manifest.hashes)
    assert set(manifest.splits) == set(SPLITS)


def test_class_folder_split_is_seeded_and_independent_of_creation_order(tmp_path):
    counts = {"b": 8, "a": 8}
    first = class_tree(tmp_path / "first", counts)
    names = [f"{name}/{i:02d}.png" for name, n in counts.items() for i in range(n)]
    second = make_tree(tmp_path / "second", *reversed(names))  # files created in the opposite order
    config = SplitConfig(seed=4)
    one, two = read_folder(first, split=config), read_folder(second, split=config)
    assert (one.paths, one.labels.tolist(), one.splits) == (two.paths, two.labels.tolist(), two.splits)
    other = read_folder(first, split=SplitConfig(seed=5))
    assert other.paths == one.paths and other.splits != one.splits


def test_class_folders_read_nested_images_and_report_the_rest(tmp_path, caplog):
    root = make_tree(
        tmp_path, "a/1.png", "a/deep/2.jpg", "a/notes.txt", "a/.hidden.png", "b/1.png", "b/2.png", "a/3.png",
        "b/3.png", "loose.png", ".git/x.png", "empty/readme.md",
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.extraction.dataset"):
        manifest = read_folder(root, SplitConfig(val_fraction=0.3, test_fraction=0.3))
    assert manifest.class_names == ("a", "b")
    assert manifest.paths == ("a/1.png", "a/3.png", "a/deep/2.jpg", "b/1.png", "b/2.png", "b/3.png")
    assert manifest.labels.tolist() == [0, 0, 0, 1, 1, 1]
    warnings = " | ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "notes.txt" in warnings and "loose.png" in warnings and f"ignored {root / 'empty'}" in warnings
    assert ".hidden" not in warnings and ".git" not in warnings


def test_a_class_too_small_for_every_split_is_named_in_a_warning(tmp_path, caplog):
    root = class_tree(tmp_path, {"big": 60, "tiny": 1})
    with caplog.at_level(logging.WARNING, logger="pipeline.extraction.dataset"):
        manifest = read_images(root)
    counts = split_counts(manifest)
    assert sum(counts["tiny"]) == 1 and min(counts["big"]) > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    per_split = ", ".join(f"{s} {n}" for s, n in zip(SPLITS, counts["tiny"]))
    assert warnings[0].startswith(f"class 'tiny' of {root} has no image in ")
    assert f"(images per split: {per_split}, with val_fraction=0.15, test_fraction=0.15)" in warnings[0]


def test_a_source_with_no_image_in_train_is_refused_naming_it_and_the_fractions(tmp_path):
    config = SplitConfig(val_fraction=0.45, test_fraction=0.45, seed=0)
    root = tmp_path / "one"
    for n in range(100):  # one image whose content falls outside train
        if content_split(file_sha256(write_png(root / "a" / "1.png", n)), config) != "train":
            break
    message = (
        f"{root} has no train/val/test split of its own, so each image's split comes from its content hash, and at "
        "least one of its 1 image(s) must fall in train: none does."
    )
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        read_folder(root, config)
    assert str(error.value).endswith(
        "Received: extract.split.val_fraction=0.45, extract.split.test_fraction=0.45, extract.split.seed=0"
    )


def test_class_folder_symlink_escaping_the_root_is_refused(tmp_path):
    outside = make_tree(tmp_path, "outside/secret.png") / "outside"
    root = class_tree(tmp_path / "images", {"a": 3})
    (root / "b").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match=re.escape(f"outside the image root {root}")):
        read_images(root)


def test_flat_folder_is_unlabelled(tmp_path, caplog):
    root = make_tree(tmp_path / "photos", "z.png", "a.JPG", "m.webp", "notes.txt", ".thumb.png")
    with caplog.at_level(logging.WARNING, logger="pipeline.extraction.dataset"):
        manifest = read_images(root)
    assert manifest.paths == ("a.JPG", "m.webp", "z.png")
    assert manifest.labels.tolist() == [-1, -1, -1] and manifest.labels.dtype == np.int64
    assert manifest.class_names == ()
    assert manifest.splits == (UNLABELLED,) * 3 == ("unlabelled",) * 3
    assert any("notes.txt" in r.getMessage() for r in caplog.records)


def test_folder_without_images_is_refused_naming_the_layouts(tmp_path):
    root = make_tree(tmp_path / "images", "readme.md", "sub/notes.txt")
    message = f"no images with extensions {list(IMAGE_EXTENSIONS)} found in {root}: expected split folders"
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_images(root)


def test_missing_source_and_non_csv_file_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"image folder not found: {tmp_path / 'nope'}")):
        read_images(tmp_path / "nope")
    with pytest.raises(ConfigError, match=re.escape(f"CSV manifest not found: {tmp_path / 'nope.csv'}")):
        read_images(tmp_path / "nope.csv")
    make_tree(tmp_path, "list.txt")
    with pytest.raises(ConfigError, match=re.escape("data.images must be a folder or a .csv file. Received: data.images=")):
        read_images(tmp_path / "list.txt")


def test_image_root_with_a_folder_source_is_refused(tmp_path):
    root = class_tree(tmp_path / "images", {"a": 5})
    with pytest.raises(ConfigError, match=re.escape("data.image_root must be null for a folder source (it applies to a .csv source only")):
        read_images(root, image_root=tmp_path)


# the split of a source without one of its own: by content hash


def test_content_split_is_the_documented_keyed_hash():
    config = SplitConfig(val_fraction=0.2, test_fraction=0.1, seed=7)
    key = hashlib.sha256(b"7").digest()
    seen = set()
    for n in range(200):
        content = hashlib.sha256(str(n).encode()).hexdigest()
        u = (int.from_bytes(hashlib.blake2b(content.encode(), key=key, digest_size=8).digest(), "big") >> 11) / 2**53
        expected = "test" if u < 0.1 else "val" if u < 0.3 else "train"
        assert content_split(content, config) == expected
        seen.add(expected)
    assert seen == set(SPLITS)


def test_class_folder_splits_do_not_move_as_images_are_added_removed_or_renamed(tmp_path):
    root = tmp_path / "images"
    for n in range(200):
        write_png(root / "abcd"[n % 4] / f"{n:03d}.png", n)
    before = split_by_content(read_images(root))
    assert len(before) == 200
    for n in range(200, 220):  # grow by 10%
        write_png(root / "abcd"[n % 4] / f"new_{n:03d}.png", n)
    for n in (0, 41, 102):
        (root / "abcd"[n % 4] / f"{n:03d}.png").unlink()
    for n in (5, 66, 199):
        (root / "abcd"[n % 4] / f"{n:03d}.png").rename(root / "abcd"[n % 4] / f"renamed_{n:03d}.png")
    after = read_images(root)
    assert len(after) == 217 and sum(p.split("/")[1].startswith("renamed_") for p in after.paths) == 3
    kept = {h: s for h, s in split_by_content(after).items() if h in before}
    assert len(kept) == 197
    moved = {h: (before[h], s) for h, s in kept.items() if before[h] != s}
    assert moved == {}


def test_csv_splits_do_not_move_as_rows_are_added_removed_or_renamed(tmp_path):
    for n in range(200):
        write_png(tmp_path / "img" / f"{n:03d}.png", n)
    rows = {f"img/{n:03d}.png": "abcd"[n % 4] for n in range(200)}
    source = tmp_path / "list.csv"
    write_csv(source, "filename,label", *(f"{f},{label}" for f, label in rows.items()))
    before = split_by_content(read_images(source))
    for n in range(200, 220):
        rows[f"img/{write_png(tmp_path / 'img' / f'{n:03d}.png', n).name}"] = "abcd"[n % 4]
    for n in (3, 77, 150):
        del rows[f"img/{n:03d}.png"]
    for n in (8, 90, 181):
        (tmp_path / "img" / f"{n:03d}.png").rename(tmp_path / "img" / f"moved_{n:03d}.png")
        rows[f"img/moved_{n:03d}.png"] = rows.pop(f"img/{n:03d}.png")
    write_csv(source, "filename,label", *(f"{f},{label}" for f, label in reversed(rows.items())))  # and reordered
    after = read_images(source)
    assert len(after) == 217
    kept = {h: s for h, s in split_by_content(after).items() if h in before}
    assert len(kept) == 197
    assert {h: (before[h], s) for h, s in kept.items() if before[h] != s} == {}


def test_per_class_fractions_on_1000_images_are_within_three_binomial_deviations(tmp_path):
    sizes = {"a": 400, "b": 300, "c": 200, "d": 100}
    n = 0
    for name, size in sizes.items():
        for i in range(size):
            write_png(tmp_path / name / f"{i:03d}.png", n)
            n += 1
    config = SplitConfig()  # 0.7 / 0.15 / 0.15
    manifest = read_folder(tmp_path, config)
    assert len(set(manifest.hashes)) == len(manifest) == 1000
    targets = {"train": 1 - config.val_fraction - config.test_fraction, "val": config.val_fraction,
               "test": config.test_fraction}
    for name, counts in split_counts(manifest).items():
        size = sizes[name]
        assert sum(counts) == size
        for split, count in zip(SPLITS, counts):
            p = targets[split]
            tolerance = 3 * math.sqrt(p * (1 - p) / size)
            assert abs(count / size - p) <= tolerance, f"{name}, {split}: {count}/{size} vs {p} +- {tolerance:.3f}"


def test_copies_of_a_picture_under_different_names_share_a_split(tmp_path):
    for n in range(40):
        picture = write_png(tmp_path / "a" / f"{n:02d}.png", n)
        (tmp_path / "b" / f"copy_of_{n:02d}.png").parent.mkdir(exist_ok=True)
        (tmp_path / "b" / f"copy_of_{n:02d}.png").write_bytes(picture.read_bytes())
    manifest = read_folder(tmp_path)
    split = dict(zip(manifest.paths, manifest.splits))
    assert len(set(split.values())) == 3
    assert all(split[f"a/{n:02d}.png"] == split[f"b/copy_of_{n:02d}.png"] for n in range(40))


def test_the_split_changes_with_the_seed_and_only_with_it(tmp_path):
    for n in range(100):
        write_png(tmp_path / "a" / f"{n:03d}.png", n)
    one, again = read_folder(tmp_path, SplitConfig(seed=0)), read_folder(tmp_path, SplitConfig(seed=0))
    other = read_folder(tmp_path, SplitConfig(seed=1))
    assert one.splits == again.splits
    assert other.paths == one.paths and other.hashes == one.hashes
    changed = sum(a != b for a, b in zip(one.splits, other.splits))
    assert changed > 20, changed  # independent draws: about 1 - (0.7**2 + 2 * 0.15**2) = 46% differ


def test_sources_with_their_own_split_are_not_hashed_on_reading(tmp_path):
    root = make_tree(tmp_path / "images", "train/a/1.png", "val/a/2.png")
    assert read_images(root).hashes is None
    source = write_csv(tmp_path / "m.csv", "filename,label,split", "images/train/a/1.png,a,train")
    assert read_images(source).hashes is None


# read_images on CSV files


def test_csv_without_split_keeps_file_order_sorted_class_names_and_splits_by_content(tmp_path):
    names = [f"img/{i:02d}.png" for i in range(20)]
    root = make_tree(tmp_path, *names)
    rows = [f"{name},{'zebra' if i % 2 else 'apple'}" for i, name in enumerate(reversed(names))]
    source = write_csv(tmp_path / "train.csv", "filename,label", *rows)
    config = SplitConfig(val_fraction=0.2, test_fraction=0.2, seed=2)
    manifest = read_csv(source, split=config)
    assert manifest.root == root
    assert manifest.paths == tuple(reversed(names))
    assert manifest.class_names == ("apple", "zebra")
    assert manifest.labels.tolist() == [i % 2 for i in range(20)] and manifest.labels.dtype == np.int64
    split_by_content(manifest)
    assert manifest.hashed() is manifest
    assert manifest.splits == tuple(content_split(h, config) for h in manifest.hashes)
    assert read_csv(source, split=config).splits == manifest.splits


def test_csv_split_column_is_used_as_given_and_columns_may_come_in_any_order(tmp_path):
    make_tree(tmp_path / "pics", "a.png", "b.png", "c.png", "d.png")
    source = write_csv(
        tmp_path / "meta" / "list.csv", "split, label, filename", "val, 2, a.png", "train, 10, b.png",
        "test, 2, c.png", "", "train, 2, d.png",
    )
    manifest = read_csv(source, image_root=tmp_path / "pics")
    assert manifest.root == tmp_path / "pics"
    assert manifest.paths == ("a.png", "b.png", "c.png", "d.png")
    assert manifest.splits == ("val", "train", "test", "train")
    assert manifest.class_names == ("10", "2")
    assert manifest.labels.tolist() == [1, 0, 1, 1]
    # read_images, what extraction uses, groups the rows by split (stable within a split): contiguous in HDF5
    grouped = read_images(source, image_root=tmp_path / "pics")
    assert grouped.paths == ("b.png", "d.png", "a.png", "c.png")
    assert grouped.splits == ("train", "train", "val", "test")
    assert grouped.labels.tolist() == [0, 1, 1, 1] and grouped.class_names == manifest.class_names


def test_csv_without_label_column_is_unlabelled(tmp_path):
    make_tree(tmp_path, "x/2.png", "x/1.png")
    source = write_csv(tmp_path / "predict.csv", "filename", "x/2.png", "./x/1.png")
    manifest = read_csv(source)
    assert manifest.paths == ("x/2.png", "x/1.png")
    assert manifest.labels.tolist() == [-1, -1]
    assert manifest.class_names == () and manifest.splits == (UNLABELLED, UNLABELLED)


def test_csv_with_byte_order_mark_and_quoted_commas_is_read(tmp_path):
    make_tree(tmp_path, "a, b.png", "c.png")
    source = tmp_path / "excel.csv"
    source.write_text('\ufefffilename,label,split\n"a, b.png",x,train\nc.png,"y, z",val\n', encoding="utf-8")
    manifest = read_images(source)
    assert manifest.paths == ("a, b.png", "c.png")
    assert manifest.class_names == ("x", "y, z")


def test_csv_bad_split_value_names_the_line_and_the_allowed_values(tmp_path):
    make_tree(tmp_path, "a.png", "b.png")
    source = write_csv(tmp_path / "m.csv", "filename,label,split", "a.png,cat,train", "b.png,cat,training")
    message = f"{source}, line 3: split must be one of ['test', 'train', 'val']. Received: split='training'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_images(source)


def test_csv_unknown_column_lists_the_allowed_columns(tmp_path):
    make_tree(tmp_path, "a.png")
    source = write_csv(tmp_path / "m.csv", "filename,labels", "a.png,cat")
    message = (
        "unknown column 'labels' in the header (line 1). Columns must be among ['filename', 'label', 'split']. "
        "Received: ['filename', 'labels']. Did you mean 'label'?"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_images(source)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("label,split", "must name a 'filename' column"),
        ("filename,label,filename", "repeats column(s) ['filename']"),
        ("filename,split", "a 'split' column needs a 'label' column"),
    ],
)
def test_csv_header_problems_are_named(tmp_path, header, message):
    make_tree(tmp_path, "a.png")
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_images(write_csv(tmp_path / "m.csv", header, "a.png,train,x"))


def test_csv_without_rows_or_train_rows_is_refused(tmp_path):
    make_tree(tmp_path, "a.png")
    with pytest.raises(ConfigError, match="lists no images below its header"):
        read_images(write_csv(tmp_path / "empty.csv", "filename,label", ""))
    with pytest.raises(ConfigError, match=re.escape("no row has split 'train'; splits found: ['val']")):
        read_images(write_csv(tmp_path / "val.csv", "filename,label,split", "a.png,cat,val"))


@pytest.mark.parametrize(
    ("row", "line", "message"),
    [
        ("/etc/passwd,cat", 3, "filename '/etc/passwd' is an absolute path"),
        ("C:\\images\\a.png,cat", 3, "filename 'C:\\\\images\\\\a.png' is an absolute path"),
        ("../outside/secret.png,cat", 3, "filename '../outside/secret.png' contains '..'"),
        ("sub/../../outside/secret.png,cat", 3, "filename 'sub/../../outside/secret.png' contains '..'"),
        ("escape.png,cat", 3, "filename 'escape.png' resolves to"),
        ("linked/secret.png,cat", 3, "filename 'linked/secret.png' resolves to"),
        ("missing.png,cat", 3, "filename 'missing.png' not found"),
        ("sub,cat", 3, "filename 'sub' is a folder, not an image file"),
        (",cat", 3, "empty filename"),
        ("sub/b.png,", 3, "empty label for 'sub/b.png'"),
        ("sub/b.png", 3, "expected 2 fields ['filename', 'label'], found 1"),
    ],
)
def test_csv_row_problems_name_the_line_and_the_value(tmp_path, row, line, message):
    root = make_tree(tmp_path / "images", "a.png", "sub/b.png")
    outside = make_tree(tmp_path, "outside/secret.png") / "outside"
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    source = write_csv(root / "m.csv", "filename,label", "a.png,cat", row, "sub/b.png,dog")
    with pytest.raises(ConfigError, match=re.escape(f"{source}, line {line}: {message}")) as error:
        read_images(source)
    if "resolves to" in message:
        assert f"{outside / 'secret.png'}, outside the image root {root}" in str(error.value)


def test_csv_line_numbers_count_blank_lines(tmp_path):
    make_tree(tmp_path, "a.png")
    source = write_csv(tmp_path / "m.csv", "filename,label", "", "a.png,cat", "", "", "../x.png,cat")
    with pytest.raises(ConfigError, match=re.escape(f"{source}, line 6: filename '../x.png' contains '..'")):
        read_images(source)


def test_csv_duplicate_filenames_name_both_lines(tmp_path):
    make_tree(tmp_path, "a.png", "b.png")
    source = write_csv(tmp_path / "m.csv", "filename,label", "a.png,cat", "b.png,dog", "./a.png,dog")
    with pytest.raises(ConfigError, match=re.escape(f"{source}: lines 2 and 4 both name the image 'a.png'")):
        read_images(source)


def test_csv_symlink_inside_the_root_is_accepted(tmp_path):
    root = make_tree(tmp_path / "images", "real/a.png")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    source = write_csv(tmp_path / "m.csv", "filename", "alias/a.png", "real/a.png")
    manifest = read_images(source, image_root=root)
    assert manifest.paths == ("alias/a.png", "real/a.png")
    assert manifest.absolute(0).resolve() == manifest.absolute(1).resolve()


def test_csv_missing_file_or_image_root_is_named(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"CSV manifest not found: {tmp_path / 'm.csv'}")):
        read_csv(tmp_path / "m.csv")
    source = write_csv(tmp_path / "m.csv", "filename", "a.png")
    with pytest.raises(ConfigError, match=re.escape(f"image_root of {source} must be an existing folder")):
        read_images(source, image_root=tmp_path / "nope")
