"""Tests for pipeline.extraction.images: decode_image on every common kind of image file, its errors, and iter_batches."""

from __future__ import annotations

import os
import re
import struct
import time
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

from pipeline.extraction.images import (
    ORIENTATION,
    RESAMPLING,
    Batch,
    ImageDecodeError,
    decode_image,
    iter_batches,
    pad_batch,
)
from pipeline.validation import ConfigError


def write_png(path, width, height, bit_depth, colour_type, rows):
    """Write a minimal PNG by hand (for kinds PIL does not write, and for a header that claims any size)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    raw = b"".join(b"\0" + row for row in rows)  # filter type 0 on every row
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def over_white(colour, alpha):
    """The reference blend of ``colour`` with opacity ``alpha`` (0..255) over white, rounded to uint8."""
    colour, alpha = np.asarray(colour, dtype=float), np.asarray(alpha, dtype=float)
    return np.rint(colour * alpha / 255 + 255 * (1 - alpha / 255)).astype(np.uint8)


@pytest.fixture
def rgb_png(tmp_path):
    """A 20x30 (height x width) RGB PNG of random pixels, and the pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_decode_at_native_size_returns_the_pixels(rgb_png):
    path, pixels = rgb_png
    out = decode_image(path, (20, 30))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, pixels)


def test_size_is_height_then_width(rgb_png):
    assert decode_image(rgb_png[0], (11, 17)).shape == (11, 17, 3)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("interpolation", sorted(RESAMPLING))
def test_resize_equals_keras_load_img_exactly(rgb_png, tmp_path, interpolation, suffix):
    path = tmp_path / f"plain{suffix}"
    Image.fromarray(rgb_png[1]).save(path)
    expected = keras.utils.img_to_array(keras.utils.load_img(path, target_size=(11, 17), interpolation=interpolation))
    np.testing.assert_array_equal(decode_image(path, (11, 17), interpolation), expected)


def test_unknown_interpolation_lists_the_filters(rgb_png):
    message = "interpolation must be one of ['bicubic', 'bilinear', 'box', 'hamming', 'lanczos', 'nearest']. Received: interpolation='cubic'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        decode_image(rgb_png[0], (8, 8), "cubic")


def test_grey_image_becomes_three_equal_channels(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    out = decode_image(tmp_path / "grey.png", (6, 8))
    assert out.shape == (6, 8, 3)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


def test_one_bit_image_becomes_black_and_white(tmp_path):
    bits = np.array([[True, False, True], [False, False, True]])
    Image.fromarray(bits).save(tmp_path / "bits.png")
    assert Image.open(tmp_path / "bits.png").mode == "1"
    out = decode_image(tmp_path / "bits.png", (2, 3))
    np.testing.assert_array_equal(out, np.repeat(np.where(bits, 255, 0)[..., None], 3, axis=2))


def test_palette_image_is_looked_up_to_rgb(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    img = Image.fromarray(np.array([[0, 1, 2, 1]], dtype=np.uint8), mode="P")
    img.putpalette(palette)
    img.save(tmp_path / "palette.png")
    out = decode_image(tmp_path / "palette.png", (1, 4))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 255, 0]])


def test_opaque_rgba_equals_its_rgb(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((5, 7), 255, np.uint8)]), mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "rgba.png", (5, 7)), rgb)


def test_transparency_is_composited_onto_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 128], [200, 100, 0, 128], [0, 0, 0, 0], [10, 20, 30, 255]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out = decode_image(tmp_path / "rgba.png", (1, 4))
    # half-transparent red -> pink; fully transparent black -> white; opaque stays as it is
    np.testing.assert_array_equal(out[0], [[255, 127, 127], [227, 177, 127], [255, 255, 255], [10, 20, 30]])


def test_same_picture_as_rgba_la_or_transparent_palette_decodes_the_same(tmp_path):
    grey = np.array([[0, 60, 120], [180, 240, 255]], dtype=np.uint8)
    alpha = np.array([[0, 64, 128], [192, 255, 30]], dtype=np.uint8)
    Image.fromarray(np.dstack([grey, grey, grey, alpha]), mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(tmp_path / "la.png")
    palette = Image.fromarray(np.arange(6, dtype=np.uint8).reshape(2, 3), mode="P")  # one entry per pixel
    palette.putpalette(np.repeat(grey.ravel(), 3).tolist())
    palette.save(tmp_path / "palette.png", transparency=alpha.ravel().tobytes())
    modes = {name: Image.open(tmp_path / f"{name}.png").mode for name in ("rgba", "la", "palette")}
    assert modes == {"rgba": "RGBA", "la": "LA", "palette": "P"}
    assert "transparency" in Image.open(tmp_path / "palette.png").info

    expected = np.repeat(over_white(grey, alpha)[..., None], 3, axis=2)
    for name in modes:
        np.testing.assert_array_equal(decode_image(tmp_path / f"{name}.png", (2, 3)), expected, err_msg=name)


@pytest.mark.parametrize(
    ("mode", "pixels", "key"),
    [("L", [[0, 100, 200]], 100), ("RGB", [[[10, 20, 30], [1, 2, 3], [10, 20, 31]]], (10, 20, 30))],
)
def test_transparent_colour_key_becomes_white(tmp_path, mode, pixels, key):
    Image.fromarray(np.array(pixels, dtype=np.uint8), mode=mode).save(tmp_path / "key.png", transparency=key)
    out = decode_image(tmp_path / "key.png", (1, 3))
    expected = np.array(pixels, np.uint8)
    if mode == "L":
        expected = np.repeat(expected[..., None], 3, axis=2)
    expected[0, 1 if mode == "L" else 0] = 255  # the pixel equal to the key
    np.testing.assert_array_equal(out, expected)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    patches = {(0, 0): (255, 0, 0, 0), (0, 1): (0, 0, 0, 255), (1, 0): (30, 120, 200, 40), (1, 1): (0, 0, 0, 0)}
    cmyk = np.zeros((16, 16, 4), dtype=np.uint8)
    for (row, col), value in patches.items():
        cmyk[8 * row : 8 * row + 8, 8 * col : 8 * col + 8] = value
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"

    out = decode_image(tmp_path / "cmyk.jpg", (16, 16))
    ink, black = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    reference = np.rint((255 - ink) * (255 - black) / 255)
    np.testing.assert_allclose(out, reference, atol=3)
    assert out[4, 4].tolist() == pytest.approx([0, 255, 255], abs=3), "pure cyan ink must look cyan, not inverted"


@pytest.fixture
def ramp16():
    """A 2x5 uint16 grey ramp across the whole 16-bit range."""
    return np.array([[0, 255, 256, 1000, 30000], [32767, 32896, 50000, 65280, 65535]], dtype=np.uint16)


@pytest.mark.parametrize(
    ("name", "array_dtype", "mode"),
    [("grey16.png", "<u2", "I;16"), ("grey16.tif", ">u2", "I;16B"), ("grey32.tif", "<i4", "I")],
)
def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path, ramp16, name, array_dtype, mode):
    Image.fromarray(ramp16.astype(array_dtype)).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == mode
    out = decode_image(tmp_path / name, (2, 5))
    assert (out == out[..., :1]).all()
    np.testing.assert_array_equal(out[..., 0], ramp16 >> 8)
    np.testing.assert_allclose(out[..., 0], ramp16 / 257, atol=1)
    assert out[0, 4, 0] == 117, "30000 must become mid-grey, not clip to white"


def test_sixteen_bit_grey_equals_the_same_picture_as_sixteen_bit_rgb(tmp_path, ramp16):
    Image.fromarray(ramp16).save(tmp_path / "grey16.png")
    rgb16 = np.repeat(ramp16[..., None], 3, axis=2).astype(">u2")
    write_png(tmp_path / "rgb16.png", 5, 2, 16, 2, [row.tobytes() for row in rgb16])
    grey, rgb = decode_image(tmp_path / "grey16.png", (2, 5)), decode_image(tmp_path / "rgb16.png", (2, 5))
    np.testing.assert_array_equal(grey, rgb)


def test_sixteen_bit_grey_transparent_value_becomes_white(tmp_path, ramp16):
    Image.fromarray(ramp16).save(tmp_path / "grey16.png", transparency=1000)
    out = decode_image(tmp_path / "grey16.png", (2, 5))[..., 0]
    expected = ramp16 >> 8
    expected[0, 3] = 255
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(
    ("orientation", "turns", "red_corner"),
    [(3, 2, "bottom-right"), (6, -1, "top-right"), (8, 1, "bottom-left")],
)
def test_exif_orientation_is_applied(tmp_path, orientation, turns, red_corner):
    stored = np.zeros((20, 30, 3), dtype=np.uint8)
    stored[:10, :15] = (255, 0, 0)  # red top-left quadrant as stored
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=95)
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", quality=95, exif=exif)

    plain = decode_image(tmp_path / "plain.jpg", (20, 30))
    shown = (20, 30) if orientation == 3 else (30, 20)
    out = decode_image(tmp_path / "rotated.jpg", shown)
    np.testing.assert_array_equal(out, np.rot90(plain, k=turns))
    height, width = shown
    rows = slice(0, height // 2 - 3) if red_corner.startswith("top") else slice(height // 2 + 3, height)
    cols = slice(0, width // 2 - 3) if red_corner.endswith("left") else slice(width // 2 + 3, width)
    assert out[rows, cols, 0].min() > 200, f"the red quadrant should be {red_corner}"
    assert out[..., 0].mean() == pytest.approx(255 / 4, abs=8), "and only one quadrant is red"


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (6, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / "anim.gif") as gif:
        assert gif.n_frames == 2
        gif.seek(1)
        assert gif.convert("RGB").getpixel((0, 0)) == (0, 0, 255)

    out = decode_image(tmp_path / "anim.gif", (4, 6))
    assert (out == [255, 0, 0]).all()


def cut_in_half(data):
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        ("empty.png", lambda data: b"", "empty file"),
        ("text.png", lambda data: b"this is not a PNG\n", "not an image (text file)"),
        ("cut.png", cut_in_half, "truncated image"),
        ("cut.jpg", cut_in_half, "truncated image"),
        ("no-end.jpg", lambda data: data[:-2], "truncated image"),
        ("cut.gif", cut_in_half, "truncated or corrupt image"),
        ("flipped.png", lambda data: data[:100] + bytes(b ^ 0xFF for b in data[100:110]) + data[110:], "corrupt image"),
        ("photo.heic", lambda data: b"\0\0\0\x18ftypheic\0\0\0\0mif1" + bytes(64), "unsupported format (HEIC)"),
    ],
    ids=["zero bytes", "text", "truncated png", "truncated jpeg", "jpeg without end marker", "truncated gif",
         "corrupt png data", "heic"],
)
def test_undecodable_files_raise_naming_the_file_and_reason(tmp_path, rgb_png, name, damage, reason):
    path = tmp_path / name
    Image.fromarray(rgb_png[1]).save(path, format="PNG" if name.endswith(".heic") else None)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ImageDecodeError, match=re.escape(f"cannot decode image {path}: {reason}")):
        decode_image(path, (8, 8))


@pytest.mark.parametrize(("name", "reason"), [("gone.png", "no such file"), ("folder.png", "is a directory")])
def test_missing_file_or_directory_raises_naming_it(tmp_path, name, reason):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageDecodeError, match=re.escape(f"cannot decode image {tmp_path / name}: {reason}")):
        decode_image(tmp_path / name, (8, 8))


def test_decompression_bomb_is_refused(tmp_path):
    # a real PNG whose header claims 100000 x 100000 pixels (30 GB decoded) in a few dozen bytes
    path = write_png(tmp_path / "bomb.png", 100_000, 100_000, 8, 2, [])
    assert path.stat().st_size < 100
    with pytest.raises(ImageDecodeError, match=re.escape(f"cannot decode image {path}: decompression bomb")):
        decode_image(path, (8, 8))


@pytest.fixture
def numbered_pngs(tmp_path):
    """Seven 2x2 PNGs; image i is filled with the value 10 * i."""
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (2, 2), (10 * i,) * 3).save(paths[-1])
    return paths


def first_values(batch):
    return batch.images[:, 0, 0, 0].tolist()


@pytest.mark.parametrize(("prefetch", "workers"), [(2, None), (0, 1), (10, 3)])
def test_iter_batches_yields_every_position_once_in_order(numbered_pngs, prefetch, workers):
    batches = list(iter_batches(numbered_pngs, (2, 2), batch_size=3, prefetch=prefetch, workers=workers))
    assert all(isinstance(batch, Batch) for batch in batches)
    assert [(batch.start, batch.stop) for batch in batches] == [(0, 3), (3, 6), (6, 7)]
    assert [batch.indices.tolist() for batch in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(batch.indices.dtype == np.int64 and batch.errors == () for batch in batches)
    assert [batch.images.shape for batch in batches] == [(3, 2, 2, 3), (3, 2, 2, 3), (1, 2, 2, 3)]
    assert all(batch.images.dtype == np.uint8 for batch in batches)
    assert [value for batch in batches for value in first_values(batch)] == [10 * i for i in range(7)]


def test_iter_batches_resizes_with_the_given_interpolation(numbered_pngs):
    (batch,) = iter_batches(numbered_pngs[:2], (5, 4), "nearest", batch_size=2)
    assert batch.images.shape == (2, 5, 4, 3)
    np.testing.assert_array_equal(batch.images[1], decode_image(numbered_pngs[1], (5, 4), "nearest"))


def test_iter_batches_of_no_paths_yields_nothing():
    assert list(iter_batches([], (2, 2))) == []


@pytest.mark.parametrize(
    ("start", "expected"), [(4, [(4, 7, [4, 5, 6])]), (1, [(1, 4, [1, 2, 3]), (4, 7, [4, 5, 6])]), (7, [])]
)
def test_iter_batches_resumes_from_start(numbered_pngs, start, expected):
    batches = list(iter_batches(numbered_pngs, (2, 2), batch_size=np.int64(3), start=np.int64(start)))
    assert [(batch.start, batch.stop, batch.indices.tolist()) for batch in batches] == expected
    assert [value for batch in batches for value in first_values(batch)] == [10 * i for i in range(start, 7)]


@pytest.fixture
def with_bad_files(numbered_pngs, tmp_path):
    """The seven PNGs with a text file at position 4, an empty file at 5 and a missing file at 6 (10 paths)."""
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    return [*numbered_pngs[:4], tmp_path / "bad.png", tmp_path / "empty.png", tmp_path / "gone.png", *numbered_pngs[4:]]


def test_iter_batches_skips_bad_files_and_lists_them(with_bad_files):
    paths = with_bad_files
    batches = list(iter_batches(paths, (2, 2), batch_size=3, on_error="skip", workers=2))
    assert [(batch.start, batch.stop) for batch in batches] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert [batch.indices.tolist() for batch in batches] == [[0, 1, 2], [3], [7, 8], [9]]
    assert [first_values(batch) for batch in batches] == [[0, 10, 20], [30], [40, 50], [60]]
    assert [batch.errors for batch in batches] == [
        (),
        (
            (4, f"cannot decode image {paths[4]}: not an image (text file)"),
            (5, f"cannot decode image {paths[5]}: empty file"),
        ),
        ((6, f"cannot decode image {paths[6]}: no such file"),),
        (),
    ]


def test_iter_batches_batch_of_only_bad_files_has_no_images(with_bad_files):
    batch, *_ = iter_batches(with_bad_files, (3, 2), batch_size=3, start=4)
    assert (batch.start, batch.stop) == (4, 7)
    assert batch.indices.tolist() == [] and batch.indices.dtype == np.int64
    assert batch.images.shape == (0, 3, 2, 3) and batch.images.dtype == np.uint8
    assert [position for position, _ in batch.errors] == [4, 5, 6]


def test_iter_batches_fail_raises_the_first_bad_file_after_the_good_batches(with_bad_files):
    starts = []
    with pytest.raises(ImageDecodeError, match=re.escape(f"cannot decode image {with_bad_files[4]}: not an image")):
        for batch in iter_batches(with_bad_files, (2, 2), batch_size=3, on_error="fail"):
            starts.append(batch.start)
    assert starts == [0]


def test_iter_batches_checks_its_arguments_when_called(numbered_pngs):
    message = "on_error must be one of ['fail', 'skip']. Received: on_error='ignore'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        iter_batches(numbered_pngs, (2, 2), on_error="ignore")
    with pytest.raises(ConfigError, match=re.escape("start must be at most len(paths)=7. Received: start=8")):
        iter_batches(numbered_pngs, (2, 2), start=8)
    with pytest.raises(ConfigError, match=re.escape("batch_size must be an integer >= 1. Received: batch_size=0")):
        iter_batches(numbered_pngs, (2, 2), batch_size=0)


class WatchedPath(os.PathLike):
    """A real file's path that records its position in ``opened`` whenever the decoder turns it into a string."""

    def __init__(self, path, position, opened, error=None):
        self.path, self.position, self.opened, self.error = path, position, opened, error

    def __fspath__(self):
        if self.error is not None:
            raise self.error
        self.opened.add(self.position)
        return os.fspath(self.path)

    def __str__(self):
        return str(self.path)


def test_iter_batches_propagates_errors_other_than_bad_files(numbered_pngs):
    paths = [WatchedPath(path, i, set()) for i, path in enumerate(numbered_pngs)]
    paths[4].error = RuntimeError("not a decode problem")
    with pytest.raises(RuntimeError, match="not a decode problem"):
        list(iter_batches(paths, (2, 2), batch_size=3, on_error="skip"))


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_iter_batches_decodes_exactly_prefetch_batches_ahead(tmp_path, prefetch):
    opened, batch_size, count = set(), 2, 11
    paths = []
    for i in range(count):
        Image.new("RGB", (2, 2), (i, i, i)).save(tmp_path / f"{i}.png")
        paths.append(WatchedPath(tmp_path / f"{i}.png", i, opened))

    for k, batch in enumerate(iter_batches(paths, (2, 2), batch_size=batch_size, prefetch=prefetch, workers=4)):
        # while the consumer holds batch k, batches k+1 .. k+prefetch are decoded ahead and no more
        ahead = min(count, (k + 1 + prefetch) * batch_size)
        deadline = time.monotonic() + 5
        while len(opened) < ahead and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.02)  # time for any decode submitted too early to start
        assert opened == set(range(ahead)), f"while holding batch {k}"
        assert first_values(batch) == list(range(batch.start, batch.stop))


def test_a_short_batch_is_padded_with_zero_rows_and_a_full_one_kept():
    images = np.full((2, 3, 3, 3), 7, dtype=np.uint8)
    padded = pad_batch(images, 5)
    assert padded.shape == (5, 3, 3, 3) and padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[:2], images)
    assert not padded[2:].any()
    assert pad_batch(images, 2) is images


# decode="fast": a JPEG at least twice the target in both sides is decoded reduced in the DCT domain. Measured on
# scikit-image's photos at 1.2 and 12 megapixels, resized to 64, 128 and 224 (bench/extract.py has the corpus):
# mean absolute difference to exact decoding at most 2.3 of 255 levels, 99th percentile at most 17; MobileNet's
# last block, average-pooled, cosine similarity at least 0.997 and relative L2 difference at most 0.072.
FAST_MEAN, FAST_P99 = 3.0, 20.0  # the tolerance the tests hold it to (pixels)


@pytest.fixture(scope="module")
def camera_jpegs(tmp_path_factory):
    """Two real photos as JPEGs of 1.2 and 12 megapixels (as a phone or camera writes them)."""
    from skimage import data

    folder, paths = tmp_path_factory.mktemp("camera"), []
    for name in ("chelsea", "astronaut"):
        photo = Image.fromarray(getattr(data, name)())
        for megapixels in (1.2, 12):
            scale = (megapixels * 1e6 / (photo.width * photo.height)) ** 0.5
            path = folder / f"{name}_{megapixels}mp.jpg"
            photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC).save(
                path, quality=90
            )
            paths.append(path)
    return paths


def assert_close_to_exact(path, size):
    exact = decode_image(path, size, decode="exact").astype(np.int16)
    fast = decode_image(path, size, decode="fast").astype(np.int16)
    assert fast.shape == exact.shape == (*size, 3)
    difference = np.abs(fast - exact)
    assert difference.mean() <= FAST_MEAN and np.percentile(difference, 99) <= FAST_P99, (
        path, difference.mean(), np.percentile(difference, 99))
    return difference


@pytest.mark.parametrize("size", [(224, 224), (64, 64), (96, 160)])
def test_fast_decode_is_within_the_stated_tolerance_of_exact_on_camera_photos(camera_jpegs, size):
    for path in camera_jpegs:
        assert assert_close_to_exact(path, size).mean() > 0  # reduced: not the same pixels


def test_fast_decode_reduces_in_the_dct_domain(camera_jpegs):
    with Image.open(camera_jpegs[1]) as img:  # 12 MP: reduced by 8 for 224 x 224
        full = img.size
        img.draft(None, (224, 224))
        assert img.size == ((full[0] + 7) // 8, (full[1] + 7) // 8)


@pytest.mark.parametrize(("stored", "size"), [((1000, 440), (224, 224)), ((120, 60), (32, 32))])
def test_images_under_twice_the_target_decode_identically_in_both_modes(tmp_path, stored, size):
    from skimage import data

    path = tmp_path / "photo.jpg"
    Image.fromarray(data.coffee()).resize(stored).save(path, quality=90)  # 440 < 2 x 224; a PNG is never reduced
    Image.fromarray(data.coffee()).resize(stored).save(tmp_path / "photo.png")
    for candidate in (path, tmp_path / "photo.png"):
        np.testing.assert_array_equal(decode_image(candidate, size, decode="fast"), decode_image(candidate, size))


def test_fast_decode_reduces_a_rotated_photo_by_its_shown_sides(tmp_path):
    # Stored 600 wide and 3000 high, shown (EXIF 6) 3000 wide and 600 high; at 300 high x 64 wide the shown height
    # allows only a reduction by 2. Reducing by the stored sides would take 8 and blow up the height again.
    from skimage import data

    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(data.astronaut()).resize((600, 3000)).save(tmp_path / "side.jpg", quality=90, exif=exif)
    assert_close_to_exact(tmp_path / "side.jpg", (300, 64))


def test_unknown_decode_mode_lists_the_modes(rgb_png):
    with pytest.raises(ConfigError, match=re.escape("decode must be one of ['exact', 'fast']. Received: decode='quick'")):
        decode_image(rgb_png, (2, 2), decode="quick")
    with pytest.raises(ConfigError, match=re.escape("decode must be one of ['exact', 'fast']")):
        iter_batches([rgb_png], (2, 2), decode="quick")
