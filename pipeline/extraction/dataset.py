"""Manifests: image files with labels and splits, from split folders, class folders, a flat folder or a CSV file."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from pipeline.config import SplitConfig
from pipeline.extraction.hashing import hash_files
from pipeline.validation import ConfigError, check_one_of, did_you_mean

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
UNLABELLED = "unlabelled"  # the split name of every row of a source without labels; such rows have label -1
CSV_COLUMNS = ("filename", "label", "split")
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Manifest:
    """Row-aligned image paths (relative to ``root``), integer labels and split names, and once ``hashed`` the
    sha256 of each file's content (what identifies an image for reuse, seeds its augmented views and, in a source
    without a split of its own, gives its split: such sources are hashed as they are read)."""

    root: Path
    paths: tuple[str, ...]
    labels: np.ndarray
    splits: tuple[str, ...]
    class_names: tuple[str, ...]
    hashes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, index: int) -> Path:
        return self.root / self.paths[index]

    def hashed(self, show_progress: bool = True) -> Manifest:
        """This manifest with the content hash of every file (itself when it has them)."""
        if self.hashes is not None:
            return self
        paths = [self.absolute(i) for i in range(len(self))]
        return dataclasses.replace(self, hashes=tuple(hash_files(paths, show_progress=show_progress)))

    def take(self, rows: Sequence[int]) -> Manifest:
        """The manifest of ``rows`` (positions, in the order given), with their hashes."""
        rows = list(rows)
        hashes = None if self.hashes is None else tuple(self.hashes[i] for i in rows)
        return Manifest(
            self.root, tuple(self.paths[i] for i in rows), self.labels[rows], tuple(self.splits[i] for i in rows),
            self.class_names, hashes,
        )

    def grouped_by_split(self) -> Manifest:
        """The same rows, stably reordered train, val, test, then unlabelled: each split is then one contiguous run
        of rows in the features file, which reads at the speed of ``np.load`` (scattered rows read at about half)."""
        rank = {name: i for i, name in enumerate((*SPLITS, UNLABELLED))}
        return self.take(sorted(range(len(self)), key=lambda i: rank[self.splits[i]]))


def content_split(content_hash: str, split: SplitConfig) -> str:
    """The split of an image from its content hash alone (its sha256, ``hashing.UNREADABLE`` for an unreadable file)
    and ``split``: u, the top 53 bits of blake2b(content_hash, key=sha256(str(seed))) as a number in [0, 1), gives
    test when u < test_fraction, val when u < test_fraction + val_fraction, else train. Other images, the file's name
    and the order of the rows play no part, so a split never moves as a source grows, and copies of a picture share
    one. (The key is the seed's digest so that any integer fits blake2b's 64-byte key.)"""
    key = hashlib.sha256(str(split.seed).encode()).digest()
    digest = hashlib.blake2b(content_hash.encode(), key=key, digest_size=8).digest()
    u = (int.from_bytes(digest, "big") >> 11) / 2**53
    if u < split.test_fraction:
        return "test"
    if u < split.test_fraction + split.val_fraction:
        return "val"
    return "train"


def _assign_splits(
    hashes: Sequence[str], labels: np.ndarray, class_names: Sequence[str], split: SplitConfig, source: Path
) -> tuple[str, ...]:
    """The split of each row of a source without a split of its own, by ``content_split``; warns naming each class
    left without an image in some split, refuses a source with no image in train.

    Not stratified: each image is an independent draw, so a class of n images has a binomial share in each split,
    within about sqrt(p(1-p)/n) of the split's fraction p (one standard deviation; within three for all but about
    3 in 1,000 class-split pairs). E.g. 250 images and p = 0.15: 0.15 +- 0.023. That is what keeps every image's
    split fixed as images are added, removed or renamed."""
    splits = tuple(content_split(content_hash, split) for content_hash in hashes)
    if "train" not in splits:
        raise ConfigError(
            f"{source} has no train/val/test split of its own, so each image's split comes from its content hash, "
            f"and at least one of its {len(splits)} image(s) must fall in train: none does. Add images, lower "
            "extract.split.val_fraction / extract.split.test_fraction or change extract.split.seed, or give the split "
            "(split folders or a 'split' column). Received: "
            f"extract.split.val_fraction={split.val_fraction!r}, extract.split.test_fraction={split.test_fraction!r}, "
            f"extract.split.seed={split.seed!r}"
        )
    counts = np.zeros((len(class_names), len(SPLITS)), dtype=np.int64)
    np.add.at(counts, (labels, [SPLITS.index(name) for name in splits]), 1)
    for name, row in zip(class_names, counts.tolist()):
        empty = [s for s, n in zip(SPLITS, row) if n == 0]
        if empty:
            log.warning(
                "class %r of %s has no image in %s (images per split: %s, with val_fraction=%s, test_fraction=%s): "
                "scores on %s leave it out; add images to it, or give the split (split folders or a 'split' column)",
                name, source, " or ".join(empty), ", ".join(f"{s} {n}" for s, n in zip(SPLITS, row)),
                split.val_fraction, split.test_fraction, " and ".join(empty),
            )
    return splits


def image_files(folder: Path, root: Path, recursive: bool = True) -> list[Path]:
    """Sorted image files under ``folder``; other files are reported, links escaping ``root`` are refused."""
    files, ignored = [], []
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or path.is_dir():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored.append(path)
            continue
        if not path.resolve().is_relative_to(root.resolve()):
            raise ConfigError(f"image {path} resolves to {path.resolve()}, outside the image root {root}")
        files.append(path)
    if ignored:
        log.warning(
            "ignored %d file(s) without an image extension %s under %s, e.g. %s",
            len(ignored), list(IMAGE_EXTENSIONS), folder, ignored[0],
        )
    return files


def read_split_folders(root: str | Path) -> Manifest:
    """Read ``root/<split>/<class>/*`` (splits: train, val, test); class names are the sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"image folder not found: {root}")
    present = [split for split in SPLITS if (root / split).is_dir()]
    if "train" not in present:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ConfigError(
            f"{root} must contain split folders {list(SPLITS)} (at least 'train'), each holding one folder "
            f"per class. Found folders: {found}"
        )
    for extra in sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.name not in SPLITS):
        log.warning("ignored %s: only the split folders %s are read", extra, list(SPLITS))
    for split in present:
        for loose in sorted(p for p in (root / split).iterdir() if p.is_file() and not p.name.startswith(".")):
            log.warning("ignored %s: images must sit in a class folder, %s/<class>/", loose, split)
    class_names = sorted(
        {c.name for split in present for c in (root / split).iterdir() if c.is_dir() and not c.name.startswith(".")}
    )
    if not class_names:
        raise ConfigError(f"{root}/train holds no class folders")
    paths, labels, splits = [], [], []
    for split in present:
        for label, name in enumerate(class_names):
            folder = root / split / name
            if not folder.is_dir():
                continue
            for path in image_files(folder, root):
                paths.append(path.relative_to(root).as_posix())
                labels.append(label)
                splits.append(split)
    if not paths:
        raise ConfigError(f"no images with extensions {list(IMAGE_EXTENSIONS)} found under {root}")
    log.info("found %d images in %d classes under %s", len(paths), len(class_names), root)
    return Manifest(root, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(splits), tuple(class_names))


def _unlabelled(root: Path, paths: list[str]) -> Manifest:
    labels = np.full(len(paths), -1, dtype=np.int64)
    return Manifest(root, tuple(paths), labels, (UNLABELLED,) * len(paths), ())


def read_folder(root: str | Path, split: SplitConfig = SplitConfig()) -> Manifest:
    """Read a folder without split folders.

    ``root/<class>/*``: class names are the sorted folder names, the rows are sorted by class, then path, and
    the files are hashed (kept in the manifest) to give each image its split by content (``content_split``).
    Images directly in ``root`` and no class folders: an unlabelled manifest (label -1, no class names, split
    ``unlabelled``).
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"image folder not found: {root}")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    by_class = {}
    for folder in (p for p in entries if p.is_dir()):
        files = image_files(folder, root)
        if files:
            by_class[folder.name] = files
        else:
            log.warning("ignored %s: it holds no images with extensions %s", folder, list(IMAGE_EXTENSIONS))
    if not by_class:
        paths = [p.relative_to(root).as_posix() for p in image_files(root, root, recursive=False)]
        if not paths:
            raise ConfigError(
                f"no images with extensions {list(IMAGE_EXTENSIONS)} found in {root}: expected split folders "
                f"{list(SPLITS)}, one folder per class, or image files"
            )
        log.info("found %d unlabelled images in %s", len(paths), root)
        return _unlabelled(root, paths)
    loose = [p for p in entries if p.is_file()]
    if loose:
        log.warning(
            "ignored %d file(s) directly in %s: next to class folders, images must sit in a class folder, e.g. %s",
            len(loose), root, loose[0],
        )
    class_names = sorted(by_class)
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for path in by_class[name]:
            paths.append(path.relative_to(root).as_posix())
            labels.append(label)
    labels = np.asarray(labels, dtype=np.int64)
    hashes = hash_files([root / path for path in paths])
    splits = _assign_splits(hashes, labels, class_names, split, root)
    log.info("found %d images in %d class folders under %s", len(paths), len(class_names), root)
    return Manifest(root, tuple(paths), labels, splits, tuple(class_names), tuple(hashes))


def _csv_image_path(value: str, root: Path, where: str) -> str:
    """The normalised relative path of a CSV ``filename`` value, refused unless it names a file inside ``root``."""
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).anchor:
        raise ConfigError(
            f"{where}: filename {value!r} is an absolute path; it must be relative to the image root {root}"
        )
    if ".." in re.split(r"[\\/]", value):
        raise ConfigError(f"{where}: filename {value!r} contains '..'; it must stay inside the image root {root}")
    relative = PurePosixPath(value)
    full = root / relative
    try:
        resolved = full.resolve()
        inside = resolved.is_relative_to(root.resolve())
        is_file = full.is_file()
    except (OSError, RuntimeError, ValueError) as error:  # unreadable, a link loop, a NUL byte
        raise ConfigError(
            f"{where}: filename {value!r} cannot be resolved under the image root {root}: {error}"
        ) from error
    if not inside:
        raise ConfigError(
            f"{where}: filename {value!r} resolves to {resolved}, outside the image root {root} "
            "(a symbolic link leads out)"
        )
    if not is_file:
        what = "is a folder, not an image file" if full.is_dir() else "not found"
        raise ConfigError(f"{where}: filename {value!r} {what} (looked for {full})")
    return relative.as_posix()


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The stripped header and the non-blank rows of a CSV file, each row with its line number (header: line 1)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, skipinitialspace=True)
            header = next(reader, None)
            rows = [(reader.line_num, [cell.strip() for cell in row]) for row in reader if any(c.strip() for c in row)]
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text: {error}") from error
    except csv.Error as error:
        raise ConfigError(f"{path} is not a valid CSV file: {error}") from error
    if not header or not any(cell.strip() for cell in header):
        raise ConfigError(f"{path} must start with a header line naming its columns, from {list(CSV_COLUMNS)}")
    return [cell.strip() for cell in header], rows


def _check_header(path: Path, columns: list[str]) -> None:
    for column in columns:
        if column not in CSV_COLUMNS:
            raise ConfigError(
                f"{path}: unknown column {column!r} in the header (line 1). Columns must be among {list(CSV_COLUMNS)}. "
                f"Received: {columns}.{did_you_mean(column, CSV_COLUMNS)}"
            )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise ConfigError(f"{path}: the header (line 1) repeats column(s) {repeated}. Received: {columns}")
    if "filename" not in columns:
        raise ConfigError(f"{path}: the header (line 1) must name a 'filename' column. Received: {columns}")
    if "split" in columns and "label" not in columns:
        raise ConfigError(
            f"{path}: a 'split' column needs a 'label' column; a CSV without labels is read unlabelled, "
            f"so give only 'filename'. Received: {columns}"
        )


def read_csv(path: str | Path, image_root: str | Path | None = None, split: SplitConfig = SplitConfig()) -> Manifest:
    """Read a CSV manifest with columns ``filename`` (required), ``label`` and ``split`` (optional), in file order.

    Filenames are relative to ``image_root`` (default: the CSV's folder) and must name files inside it. Class names
    are the sorted label strings. Without a ``split`` column the files are hashed (kept in the manifest) to give each
    image its split by content (``content_split``); without a ``label`` column the manifest is unlabelled (label -1,
    no class names, split ``unlabelled``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"CSV manifest not found: {path}")
    root = path.parent if image_root is None else Path(image_root)
    if not root.is_dir():
        raise ConfigError(f"data.image_root of {path} must be an existing folder. Received: data.image_root={str(root)!r}")
    columns, rows = _csv_rows(path)
    _check_header(path, columns)
    if not rows:
        raise ConfigError(f"{path} lists no images below its header")
    paths, label_names, splits, seen = [], [], [], {}
    for line, row in rows:
        where = f"{path}, line {line}"
        if len(row) != len(columns):
            raise ConfigError(f"{where}: expected {len(columns)} fields {columns}, found {len(row)}: {row}")
        record = dict(zip(columns, row))
        if not record["filename"]:
            raise ConfigError(f"{where}: empty filename")
        relative = _csv_image_path(record["filename"], root, where)
        if relative in seen:
            raise ConfigError(
                f"{path}: lines {seen[relative]} and {line} both name the image {relative!r}; list each image once"
            )
        seen[relative] = line
        paths.append(relative)
        if "label" in record:
            if not record["label"]:
                raise ConfigError(f"{where}: empty label for {record['filename']!r}")
            label_names.append(record["label"])
        if "split" in record:
            try:
                splits.append(check_one_of("split", record["split"], SPLITS))
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from None
    if "label" not in columns:
        log.info("read %d unlabelled images from %s", len(paths), path)
        return _unlabelled(root, paths)
    class_names = sorted(set(label_names))
    index = {name: label for label, name in enumerate(class_names)}
    labels = np.asarray([index[name] for name in label_names], dtype=np.int64)
    hashes = None
    if "split" in columns:
        if "train" not in splits:
            raise ConfigError(f"{path}: no row has split 'train'; splits found: {sorted(set(splits))}")
    else:
        hashes = tuple(hash_files([root / relative for relative in paths]))
        splits = _assign_splits(hashes, labels, class_names, split, path)
    log.info("read %d images in %d classes from %s (image root %s)", len(paths), len(class_names), path, root)
    return Manifest(root, tuple(paths), labels, tuple(splits), tuple(class_names), hashes)


def read_images(
    source: str | Path, image_root: str | Path | None = None, split: SplitConfig = SplitConfig()
) -> Manifest:
    """Read any image source into a Manifest, its rows grouped by split (``Manifest.grouped_by_split``).

    - a folder with split folders (``train/`` and optionally ``val/``, ``test/``): ``read_split_folders``;
    - any other folder: ``read_folder`` (one folder per class, split by content hash and ``split``; or loose images,
      unlabelled);
    - a ``.csv`` file: ``read_csv`` with paths relative to ``image_root`` (default: the CSV's folder).
    """
    return _read_source(Path(source), image_root, split).grouped_by_split()


def _read_source(source: Path, image_root: str | Path | None, split: SplitConfig) -> Manifest:
    if source.suffix.lower() == ".csv" and not source.is_dir():
        return read_csv(source, image_root, split)
    if source.is_file():
        raise ConfigError(f"data.images must be a folder or a .csv file. Received: data.images={str(source)!r}")
    if not source.is_dir():
        raise ConfigError(f"image folder not found: {source}")
    if image_root is not None:
        raise ConfigError(
            f"data.image_root must be null for a folder source (it applies to a .csv source only; the folder {source} "
            f"is its own image root). Received: data.image_root={str(image_root)!r}"
        )
    if any((source / name).is_dir() for name in SPLITS):
        return read_split_folders(source)  # with val/ or test/ but no train/, it says train/ is missing
    return read_folder(source, split)
