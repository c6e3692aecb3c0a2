"""Write the built-in default dataset: scikit-learn's digits as RGB PNG files in split/class folders."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.atomic import atomic_directory
from pipeline.config import PrepareConfig
from pipeline.dataset import SPLITS, split_indices

log = logging.getLogger(__name__)


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
    counts = {}
    with atomic_directory(out_dir) as tmp:
        for split in SPLITS:
            for row in keep[splits[split]]:
                folder = tmp / split / str(labels[row])
                folder.mkdir(parents=True, exist_ok=True)
                render_digit(digits.images[row], config.image_size).save(folder / f"digit_{row:04d}.png")
            counts[split] = len(splits[split])
    log.info("wrote %d digit images to %s: %s", sum(counts.values()), out_dir, counts)
    return counts
