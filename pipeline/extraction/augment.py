"""Seeded image augmentation (flip, rotation, crop) of decoded uint8 images, the same wherever it runs."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from pipeline.config import AugmentConfig


def view_rng(seed: int, key: str, view: int) -> np.random.Generator:
    """The random stream of one augmented view: decided by the seed, the image (``key``, its content hash) and the
    view number only, so a view does not depend on which other images are extracted with it, or in which order."""
    digest = hashlib.sha256(f"{seed}\0{key}\0{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def augment(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One augmented copy of a ``(h, w, 3)`` uint8 image, same size: flip, rotate (bilinear; the corners it uncovers
    take the median colour of the image's border, so a white background stays white), then crop a random box of at
    least ``config.crop`` of each side and resize it back (bilinear)."""
    # Draw every random number in a fixed order, whatever is turned off, so one setting never shifts another's draws.
    flip_h, flip_v = rng.random(2) < 0.5
    angle = rng.uniform(-config.rotation, config.rotation)
    scale = rng.uniform(config.crop, 1.0)
    corner = rng.random(2)
    out = Image.fromarray(image)
    if config.flip in ("horizontal", "both") and flip_h:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    if config.flip in ("vertical", "both") and flip_v:
        out = out.transpose(Image.FLIP_TOP_BOTTOM)
    if config.rotation:
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        out = out.rotate(angle, resample=Image.BILINEAR, fillcolor=tuple(int(v) for v in np.median(border, axis=0)))
    height, width = image.shape[:2]
    crop_h, crop_w = max(1, round(height * scale)), max(1, round(width * scale))
    if (crop_h, crop_w) != (height, width):
        top, left = (int(c * (extent + 1)) for c, extent in zip(corner, (height - crop_h, width - crop_w)))
        out = out.resize((width, height), Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
    return np.asarray(out, dtype=np.uint8)


def augment_views(images: np.ndarray, keys: list[str], views: int, config: AugmentConfig) -> np.ndarray:
    """``views`` augmented copies of each of ``images`` (``(n, h, w, 3)`` uint8), as ``(views, n, h, w, 3)``: view
    ``v`` of image ``i`` is seeded by ``config.seed``, ``keys[i]`` (its content hash) and ``v``."""
    out = np.empty((views, *images.shape), dtype=np.uint8)
    for i, (image, key) in enumerate(zip(images, keys)):
        for v in range(views):
            out[v, i] = augment(image, config, view_rng(config.seed, key, v))
    return out
