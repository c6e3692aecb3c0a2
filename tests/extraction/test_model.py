"""Tests for pipeline.extraction.model: spatial pooling (avg, max, pyramid) and the shapes a features file stores."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from pipeline.config import LayerSpec
from pipeline.extraction.extract import extract_features
from pipeline.extraction.model import grid_cells, pool, pooled_shape, pyramid_pool


def test_pool_keeps_or_reduces_spatial_axes():
    maps = np.arange(24, dtype=np.float32).reshape(2, 2, 2, 3)
    np.testing.assert_array_equal(pool(maps, "none"), maps)
    np.testing.assert_array_equal(pool(maps, "avg"), [[4.5, 5.5, 6.5], [16.5, 17.5, 18.5]])
    np.testing.assert_array_equal(pool(maps, "max"), [[9, 10, 11], [21, 22, 23]])
    flat = np.ones((2, 5), dtype=np.float32)
    np.testing.assert_array_equal(pool(flat, "avg"), flat)


def test_pyramid_of_a_divisible_map_is_the_mean_of_each_block():
    maps = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    expected = [maps.mean(axis=(1, 2))]
    for g in (2, 4):
        blocks = maps.reshape(2, g, 8 // g, g, 8 // g, 3).mean(axis=(2, 4))  # (batch, g, g, c), row-major cells
        expected.append(blocks.reshape(2, g * g * 3))
    np.testing.assert_allclose(pyramid_pool(maps), np.concatenate(expected, axis=1), rtol=1e-6)
    assert pool(maps, "pyramid").shape == (2, 21 * 3) and pooled_shape((8, 8, 3), "pyramid") == (63,)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 7, 14])
def test_grid_cells_cover_every_position_and_are_never_empty(length):
    for cells in (1, 2, 4):
        spans = grid_cells(length, cells)
        assert len(spans) == cells and all(0 <= a < b <= length for a, b in spans)
        assert sorted({i for a, b in spans for i in range(a, b)}) == list(range(length))


def test_pyramid_of_a_map_smaller_than_its_grid_repeats_cells():
    maps = np.arange(2 * 2 * 1, dtype=np.float32).reshape(1, 2, 2, 1)  # 4 x 4 grid on a 2 x 2 map
    out = pyramid_pool(maps)[0]
    assert out[0] == 1.5 and list(out[1:5]) == [0, 1, 2, 3]
    assert list(out[5:]) == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]


def test_pooled_shapes_per_pooling():
    shape = (56, 56, 128)  # VGG16 block2_pool at 224: 401,408 floats unpooled, 2,688 as a pyramid
    assert [pooled_shape(shape, p) for p in ("none", "avg", "max", "pyramid")] == [shape, (128,), (128,), (2688,)]


def test_a_pyramid_layer_is_extracted_and_matches_the_pooled_maps(tmp_path, manifest, extract_config):
    config = dataclasses.replace(extract_config, layers=(LayerSpec("conv_pw_3_relu", pooling="pyramid"),), pixels=None)
    unpooled = dataclasses.replace(extract_config, layers=(LayerSpec("conv_pw_3_relu", pooling="none"),), pixels=None)
    pyramid = extract_features(manifest, config, tmp_path / "pyramid.h5").path
    maps = extract_features(manifest, unpooled, tmp_path / "maps.h5").path
    with h5py.File(pyramid, "r") as f, h5py.File(maps, "r") as g:
        stored, full = f["features/conv_pw_3_relu"][()], g["features/conv_pw_3_relu"][()]
        assert json.loads(f.attrs["pooling"]) == {"conv_pw_3_relu": "pyramid"}
    assert full.shape[1:] == (16, 16, 128) and stored.shape == (len(manifest), 21 * 128)
    np.testing.assert_allclose(stored, pyramid_pool(full), rtol=1e-5, atol=1e-6)
