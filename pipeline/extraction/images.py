"""The one image decode function (orientation, mode to RGB, resize) and a prefetching batch reader."""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.config import DECODE_MODES, INTERPOLATIONS, ON_ERROR
from pipeline.validation import ConfigError, UserError, check_int, check_one_of


class ImageDecodeError(UserError, ValueError):
    """A file could not be decoded as an image; the message names the file and the reason."""


# PIL's filters by the names keras.utils.load_img uses; "bilinear" is also image_dataset_from_directory's default.
RESAMPLING = {name: getattr(Image.Resampling, name.upper()) for name in INTERPOLATIONS}

# Leading bytes of image formats PIL cannot read (named in the error), and of ones it can (a failure is damage).
_UNSUPPORTED_SIGNATURES = {
    b"ftypheic": "HEIC", b"ftypheix": "HEIC", b"ftyphevc": "HEIC", b"ftypheif": "HEIF", b"ftypmif1": "HEIF",
    b"ftypavif": "AVIF", b"JXL ": "JPEG XL", b"%PDF": "PDF", b"<svg": "SVG",
}
_IMAGE_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*")

ORIENTATION = 0x0112  # the EXIF tag
TRANSPOSING = (5, 6, 7, 8)  # its values that swap width and height


def decode_image(
    path: str | Path, size: tuple[int, int], interpolation: str = "bilinear", decode: str = "exact"
) -> np.ndarray:
    """Decode one file to a ``(height, width, 3)`` uint8 RGB array.

    The whole file is decoded (a truncated file raises rather than being padded), the first frame of an
    animation is taken, EXIF orientation is applied, 16-bit greys are scaled to 8 bits (``value >> 8``),
    transparency is composited onto white, then the image is resized with PIL's filter of the same name as
    ``keras.utils.load_img(path, target_size=size, interpolation=interpolation)`` uses; with ``decode="exact"``
    the result for an opaque RGB file equals that call's exactly. With ``decode="fast"`` a JPEG at least twice
    ``size`` in both sides is decoded reduced in the DCT domain (by 2, 4 or 8, to no less than ``size``; Pillow's
    ``draft``), then resized the same way: several times faster on camera photos, values within the tolerance
    the tests state. Raises ImageDecodeError naming the file and the reason.
    """
    check_one_of("interpolation", interpolation, RESAMPLING)
    check_one_of("decode", decode, DECODE_MODES)
    height, width = size
    try:
        with Image.open(path) as img:
            if decode == "fast" and img.format == "JPEG":
                _reduce_while_decoding(img, (width, height))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # no copy when there is no orientation to apply
            img = to_rgb(img)
    except (OSError, ValueError, EOFError, SyntaxError, struct.error, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"cannot decode image {path}: {_reason(path, error)}") from error
    if img.size != (width, height):
        img = img.resize((width, height), RESAMPLING[interpolation])
    return np.asarray(img, dtype=np.uint8)


def _reduce_while_decoding(img: Image.Image, size: tuple[int, int]) -> None:
    """Have the JPEG decoder scale by the largest of 1/2, 1/4 and 1/8 that keeps it at least ``size`` (width,
    height) once its EXIF orientation is applied; nothing when it is not twice that in both sides."""
    if img.getexif().get(ORIENTATION, 1) in TRANSPOSING:
        size = size[::-1]  # stored on its side: the decoder's width becomes the image's height
    img.draft(None, size)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB, compositing any transparency onto white."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        img = _grey_to_8bit(img)
    if img.has_transparency_data:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        # round(c * a/255 + 255 * (1 - a/255)); never a tie, as 255 is odd. The sum fits in uint16.
        return Image.fromarray(((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8), "RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """Scale a 16-bit (or 32-bit integer) grey image to mode L by keeping the high byte, as PIL does for 16-bit RGB."""
    values = np.asarray(img)
    grey = np.clip(values.astype(np.int64) >> 8, 0, 255).astype(np.uint8)
    transparent = img.info.get("transparency")
    if isinstance(transparent, int):  # a tRNS grey value: that exact 16-bit value is fully transparent
        return Image.fromarray(np.dstack([grey, np.where(values == transparent, 0, 255).astype(np.uint8)]), "LA")
    return Image.fromarray(grey, "L")


def _reason(path: str | Path, error: BaseException) -> str:
    """A short reason why ``path`` could not be decoded, from the error PIL or the OS raised."""
    if isinstance(error, Image.DecompressionBombError):
        return f"decompression bomb refused ({error})"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, UnidentifiedImageError):
        try:
            with open(path, "rb") as file:
                head = file.read(512)
        except OSError as reading:
            return f"cannot read file ({reading.strerror or reading})"
        if not head:
            return "empty file"
        for signature, name in _UNSUPPORTED_SIGNATURES.items():
            if signature in head[:64]:
                return f"unsupported format ({name})"
        if head.startswith(_IMAGE_SIGNATURES):
            return "truncated or corrupt image"
        if b"\0" not in head and head.decode("utf-8", errors="replace").count("\ufffd") <= 1:
            return "not an image (text file)"
        return "not an image or unsupported format"
    message = str(error)
    if isinstance(error, EOFError) or "truncated" in message.lower():
        return f"truncated image ({message})" if message else "truncated image"
    if "not available" in message or "not supported" in message or "Ghostscript" in message:
        return f"unsupported format ({message})"
    return f"corrupt image ({type(error).__name__}: {message})"


@dataclass(frozen=True)
class Batch:
    """One batch of ``iter_batches``: the images of ``paths[start:stop]`` that decoded, and why the others did not."""

    start: int  # position in `paths` of this batch's first path
    stop: int  # one past its last path
    indices: np.ndarray  # positions (int64, ascending) of the paths that decoded
    images: np.ndarray  # (len(indices), height, width, 3) uint8
    errors: tuple[tuple[int, str], ...]  # (position, message) of each path that could not be decoded


def pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
    """``images`` with zero rows appended up to ``batch_size``, so that a short last batch has the shape of the
    others: one input shape, one traced model function. The caller keeps only its first ``len(images)`` outputs."""
    n = len(images)
    if n >= batch_size:
        return images
    return np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), dtype=images.dtype)])


def iter_batches(
    paths: Sequence[str | Path],
    size: tuple[int, int],
    interpolation: str = "bilinear",
    decode: str = "exact",
    batch_size: int = 32,
    prefetch: int = 2,
    workers: int | None = None,
    on_error: str = "skip",
    start: int = 0,
) -> Iterator[Batch]:
    """Yield the Batches of ``paths[start:]`` in order, decoding up to ``prefetch`` batches ahead in threads.

    Batches are ``[start, start + batch_size)``, ``[start + batch_size, ...)``, ... ; each position is in exactly
    one. The reader holds at most ``(prefetch + 1) * batch_size`` decoded images at once (the batch it yields
    and the ones decoding ahead), whatever the number of paths. A file that raises ImageDecodeError is listed in
    ``Batch.errors`` with ``on_error="skip"``; with ``on_error="fail"`` the first such file in path order raises
    (after the batches before it were yielded). Any other exception propagates. Arguments are checked at call
    time, not at the first ``next``.
    """
    check_one_of("interpolation", interpolation, RESAMPLING)
    check_one_of("decode", decode, DECODE_MODES)
    check_one_of("on_error", on_error, ON_ERROR)
    # a resume position or batch size read from HDF5 or numpy arrives as np.integer
    batch_size, start = (int(n) if isinstance(n, np.integer) else n for n in (batch_size, start))
    check_int("batch_size", batch_size, 1)
    check_int("prefetch", prefetch, 0)
    if workers is not None:
        check_int("workers", workers, 1)
    check_int("start", start, 0)
    if start > len(paths):
        raise ConfigError(f"start must be at most len(paths)={len(paths)}. Received: start={start}")
    return _batches(paths, tuple(size), (interpolation, decode), batch_size, prefetch, workers, on_error, start)


def _decode_or_error(path: str | Path, size: tuple[int, int], how: tuple[str, str]) -> np.ndarray | ImageDecodeError:
    """decode_image, returning (not raising) an ImageDecodeError so the reader can list it; other errors raise."""
    try:
        return decode_image(path, size, *how)
    except ImageDecodeError as error:
        return error


def _batches(paths, size, how, batch_size, prefetch, workers, on_error, start) -> Iterator[Batch]:
    height, width = size
    starts = iter(range(start, len(paths), batch_size))
    pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1, thread_name_prefix="decode")

    def submit(first: int) -> tuple[int, list[Future]]:
        return first, [pool.submit(_decode_or_error, p, size, how) for p in paths[first : first + batch_size]]

    try:
        pending = deque(submit(first) for _, first in zip(range(prefetch + 1), starts))
        while pending:
            first, futures = pending.popleft()
            indices, images, errors = [], [], []
            for position, future in enumerate(futures, start=first):
                result = future.result()  # re-raises anything but ImageDecodeError
                if isinstance(result, ImageDecodeError):
                    if on_error == "fail":
                        raise result
                    errors.append((position, str(result)))
                else:
                    indices.append(position)
                    images.append(result)
            del futures
            batch = Batch(
                start=first,
                stop=min(first + batch_size, len(paths)),
                indices=np.asarray(indices, dtype=np.int64),
                images=np.stack(images) if images else np.empty((0, height, width, 3), dtype=np.uint8),
                errors=tuple(errors),
            )
            del images
            yield batch
            # Only now, with the yielded batch handed over, start decoding one more batch ahead.
            del batch
            following = next(starts, None)
            if following is not None:
                pending.append(submit(following))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
