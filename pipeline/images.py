"""The one image decode function (orientation, mode to RGB, resize) and a prefetching batch reader."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.validation import UserError, check_one_of


class ImageDecodeError(UserError, ValueError):
    """A file could not be decoded as an image; the message names the file and the reason."""

# The same names and PIL filters as keras.utils.load_img; "bilinear" is also image_dataset_from_directory's default.
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "hamming": Image.Resampling.HAMMING,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


def decode_image(path: str | Path, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Decode one file to a ``(height, width, 3)`` uint8 RGB array.

    EXIF orientation is applied, the image is converted to RGB, then resized with PIL's filter of the same
    name as ``keras.utils.load_img(path, target_size=size, interpolation=interpolation)`` uses.
    """
    check_one_of("interpolation", interpolation, RESAMPLING)
    height, width = size
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), RESAMPLING[interpolation])
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from error


def iter_batches(
    paths: Sequence[str | Path],
    size: tuple[int, int],
    interpolation: str = "bilinear",
    batch_size: int = 32,
    prefetch: int = 2,
    workers: int | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_row, uint8 batch)`` in order, decoding up to ``prefetch`` batches ahead in threads.

    At most ``(prefetch + 1) * batch_size`` decoded images are held at once, whatever the number of paths.
    """
    starts = iter(range(0, len(paths), batch_size))
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:

        def submit(start: int):
            return start, [pool.submit(decode_image, p, size, interpolation) for p in paths[start : start + batch_size]]

        pending = deque(submit(start) for _, start in zip(range(prefetch + 1), starts))
        while pending:
            start, futures = pending.popleft()
            batch = np.stack([future.result() for future in futures])
            following = next(starts, None)
            if following is not None:
                pending.append(submit(following))
            yield start, batch
