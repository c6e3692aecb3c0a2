"""Tests for pipeline.images: decode_image matches keras.utils.load_img, fixes mode and orientation; iter_batches."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from PIL import Image

from pipeline.images import RESAMPLING, ImageDecodeError, decode_image, iter_batches
from pipeline.validation import ConfigError


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


@pytest.mark.parametrize("interpolation", sorted(RESAMPLING))
def test_resize_equals_keras_load_img_exactly(rgb_png, interpolation):
    path, _ = rgb_png
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


def test_rgba_image_drops_alpha(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "rgba.png", (5, 7)), rgba[..., :3])


def test_palette_image_is_looked_up_to_rgb(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    img = Image.fromarray(np.array([[0, 1, 2, 1]], dtype=np.uint8), mode="P")
    img.putpalette(palette)
    img.save(tmp_path / "palette.png")
    out = decode_image(tmp_path / "palette.png", (1, 4))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 255, 0]])


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 30, 3), dtype=np.uint8)
    stored[:10, :15] = (255, 0, 0)  # red top-left quadrant as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "plain.jpg", quality=95)
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", quality=95, exif=exif)

    plain = decode_image(tmp_path / "plain.jpg", (20, 30))
    out = decode_image(tmp_path / "rotated.jpg", (30, 20))
    np.testing.assert_array_equal(out, np.rot90(plain, k=-1))
    # stored (row, col) is displayed at (col, 19 - row): the red quadrant moves to rows 0-14, columns 10-19
    assert out[:12, 13:, 0].min() > 200, "red quadrant should now be top-right"
    assert out[18:, :, 0].max() < 60 and out[:, :7, 0].max() < 60


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("empty.png", lambda data: b""),
        ("text.png", lambda data: b"this is not a PNG"),
        ("cut.png", lambda data: data[: len(data) // 2]),
        ("cut.jpg", lambda data: data[: len(data) // 2]),
    ],
    ids=["zero bytes", "text named .png", "truncated png", "truncated jpeg"],
)
def test_undecodable_files_raise_naming_the_file(tmp_path, rgb_png, name, damage):
    path = tmp_path / name
    Image.fromarray(rgb_png[1]).save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ImageDecodeError, match=re.escape(f"cannot decode image {path}: ")):
        decode_image(path, (8, 8))


def test_missing_file_raises_naming_it(tmp_path):
    with pytest.raises(ImageDecodeError, match=re.escape(f"cannot decode image {tmp_path / 'gone.png'}: ")):
        decode_image(tmp_path / "gone.png", (8, 8))


@pytest.fixture
def numbered_pngs(tmp_path):
    """Seven 2x2 PNGs; image i is filled with the value 10 * i."""
    paths = []
    for i in range(7):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (2, 2), (10 * i,) * 3).save(paths[-1])
    return paths


@pytest.mark.parametrize(("prefetch", "workers"), [(2, None), (0, 1), (10, 3)])
def test_iter_batches_yields_every_row_once_in_order(numbered_pngs, prefetch, workers):
    batches = list(iter_batches(numbered_pngs, (2, 2), batch_size=3, prefetch=prefetch, workers=workers))
    assert [start for start, _ in batches] == [0, 3, 6]
    assert [batch.shape for _, batch in batches] == [(3, 2, 2, 3), (3, 2, 2, 3), (1, 2, 2, 3)]
    assert all(batch.dtype == np.uint8 for _, batch in batches)
    values = np.concatenate([batch for _, batch in batches])[:, 0, 0, 0]
    assert values.tolist() == [10 * i for i in range(7)]


def test_iter_batches_resizes_with_the_given_interpolation(numbered_pngs):
    (_, batch), = iter_batches(numbered_pngs[:2], (5, 4), "nearest", batch_size=2)
    assert batch.shape == (2, 5, 4, 3)
    np.testing.assert_array_equal(batch[1], decode_image(numbered_pngs[1], (5, 4), "nearest"))


def test_iter_batches_of_no_paths_yields_nothing():
    assert list(iter_batches([], (2, 2))) == []


def test_iter_batches_propagates_a_decode_error_after_the_good_batches(numbered_pngs, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    paths = [*numbered_pngs[:4], bad, *numbered_pngs[4:]]
    starts = []
    with pytest.raises(ImageDecodeError, match=re.escape(f"cannot decode image {bad}")):
        for start, _ in iter_batches(paths, (2, 2), batch_size=3):
            starts.append(start)
    assert starts == [0]
