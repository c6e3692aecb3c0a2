"""Manifests: which image files, with which label and split, read from a ``<split>/<class>/`` folder tree."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.validation import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Manifest:
    """Row-aligned image paths (relative to ``root``), integer labels and split names."""

    root: Path
    paths: tuple[str, ...]
    labels: np.ndarray
    splits: tuple[str, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, index: int) -> Path:
        return self.root / self.paths[index]


def _image_files(folder: Path, root: Path) -> list[Path]:
    """Sorted image files under ``folder``; other files are reported, links escaping ``root`` are refused."""
    files, ignored = [], []
    for path in sorted(folder.rglob("*")):
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
            for path in _image_files(folder, root):
                paths.append(path.relative_to(root).as_posix())
                labels.append(label)
                splits.append(split)
    if not paths:
        raise ConfigError(f"no images with extensions {list(IMAGE_EXTENSIONS)} found under {root}")
    log.info("found %d images in %d classes under %s", len(paths), len(class_names), root)
    return Manifest(root, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(splits), tuple(class_names))
