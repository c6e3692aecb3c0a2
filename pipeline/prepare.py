"""Write the built-in default dataset: scikit-learn's digits as RGB PNG files in split/class folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipeline.atomic import atomic_directory
from pipeline.config import PrepareConfig
from pipeline.extraction.dataset import SPLITS
from pipeline.validation import ConfigError

log = logging.getLogger(__name__)

# Inside the demo folder: the files prepare wrote there, so that a re-run replaces only a folder of its own.
WRITTEN = ".prepare-written.json"


def split_indices(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A fixed stratified train/val/test split of row indices, sorted within each split."""
    labels = np.asarray(labels)
    index = np.arange(len(labels))
    val_share = val_fraction / (1 - test_fraction)
    try:
        rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
        train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=seed)
    except ValueError as error:  # too few images for a stratified split
        classes, counts = np.unique(labels, return_counts=True)
        smallest = f"; the smallest class has {counts.min()} image(s)" if len(counts) else ""
        raise ConfigError(
            f"cannot split {len(labels)} images of {len(classes)} classes with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction}: too few images for a stratified split{smallest} ({error})"
        ) from error
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def render_digit(pixels: np.ndarray, size: int) -> Image.Image:
    """Render one 8x8 digit (values 0..16) as dark ink on white paper, upscaled with nearest neighbour."""
    grey = 255 - np.round(pixels.reshape(8, 8) * (255 / 16)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.NEAREST).convert("RGB")


def prepare_digits(out_dir: str | Path, config: PrepareConfig) -> dict[str, int]:
    """Write ``out_dir/<split>/<class>/<index>.png`` for the digits and return the image count per split."""
    digits = load_digits()
    labels = digits.target
    keep = np.arange(len(labels))
    if config.per_class_limit is not None:
        rng = np.random.default_rng(config.seed)
        keep = np.sort(
            np.concatenate(
                [rng.permutation(np.flatnonzero(labels == c))[: config.per_class_limit] for c in np.unique(labels)]
            )
        )
    splits = split_indices(labels[keep], config.val_fraction, config.test_fraction, config.seed)
    check_own_folder(out_dir)
    counts, written = {}, []
    with atomic_directory(out_dir) as tmp:
        for split in SPLITS:
            for row in keep[splits[split]]:
                path = Path(split, str(labels[row]), f"digit_{row:04d}.png")
                (tmp / path.parent).mkdir(parents=True, exist_ok=True)
                render_digit(digits.images[row], config.image_size).save(tmp / path)
                written.append(path.as_posix())
            counts[split] = len(splits[split])
        (tmp / WRITTEN).write_text(json.dumps(written, indent=0) + "\n")
    log.info("wrote %d digit images to %s: %s", sum(counts.values()), out_dir, counts)
    return counts


def check_own_folder(out_dir: str | Path) -> None:
    """Refuse to replace ``out_dir`` if it holds a file an earlier run of prepare did not write there (listed in
    ``WRITTEN``): the demo folder is the pipeline's own, and nothing a user put anywhere is ever deleted."""
    out = Path(out_dir)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise ConfigError(f"the demo images' folder must be a folder of their own; {out} exists and is not one")
    record = out / WRITTEN
    own = set(json.loads(record.read_text())) if record.is_file() else set()
    foreign = sorted(
        path.relative_to(out).as_posix() for path in out.rglob("*") if not path.is_dir() and path != record
    )
    foreign = [name for name in foreign if name not in own]
    if foreign:
        raise ConfigError(
            f"refusing to replace {out}: it holds {len(foreign)} file(s) the demo's prepare stage did not write, e.g. "
            f"{out / foreign[0]}. That folder belongs to the built-in digits; keep your own images elsewhere and point "
            "data.images at them"
        )
