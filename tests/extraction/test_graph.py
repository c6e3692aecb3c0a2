"""Tests for pipeline.extraction.graph: the on-device feature function against Keras's own computation, its
pooling layers against numpy, and the storage dtype."""

from __future__ import annotations

import dataclasses
import json

import h5py
import keras
import numpy as np
import pytest

from pipeline.config import LayerSpec
from pipeline.extraction.extract import extract_features
from pipeline.extraction.graph import Preprocess, SpatialPool, feature_graph, grid_cells


def pyramid_reference(maps: np.ndarray) -> np.ndarray:
    """Spatial pyramid pooling in numpy: the mean over each cell of the 1x1, 2x2 and 4x4 grids, row-major."""
    height, width = maps.shape[1:3]
    return np.concatenate([
        maps[:, top:bottom, left:right].mean(axis=(1, 2))
        for g in (1, 2, 4) for top, bottom in grid_cells(height, g) for left, right in grid_cells(width, g)
    ], axis=1)


def pooled(maps: np.ndarray, pooling: str) -> np.ndarray:
    return keras.ops.convert_to_numpy(SpatialPool(pooling)(maps))


def test_pooling_keeps_or_reduces_spatial_axes():
    maps = np.arange(24, dtype=np.float32).reshape(2, 2, 2, 3)
    np.testing.assert_array_equal(pooled(maps, "none"), maps)
    np.testing.assert_array_equal(pooled(maps, "avg"), [[4.5, 5.5, 6.5], [16.5, 17.5, 18.5]])
    np.testing.assert_array_equal(pooled(maps, "max"), [[9, 10, 11], [21, 22, 23]])
    flat = np.ones((2, 5), dtype=np.float32)
    np.testing.assert_array_equal(pooled(flat, "avg"), flat)


def test_pyramid_of_a_divisible_map_is_the_mean_of_each_block():
    maps = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
    expected = [maps.mean(axis=(1, 2))]
    for g in (2, 4):
        blocks = maps.reshape(2, g, 8 // g, g, 8 // g, 3).mean(axis=(2, 4))  # (batch, g, g, c), row-major cells
        expected.append(blocks.reshape(2, g * g * 3))
    np.testing.assert_allclose(pooled(maps, "pyramid"), np.concatenate(expected, axis=1), rtol=1e-6)
    np.testing.assert_allclose(pyramid_reference(maps), np.concatenate(expected, axis=1), rtol=1e-6)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 7, 14])
def test_grid_cells_cover_every_position_and_are_never_empty(length):
    for cells in (1, 2, 4):
        spans = grid_cells(length, cells)
        assert len(spans) == cells and all(0 <= a < b <= length for a, b in spans)
        assert sorted({i for a, b in spans for i in range(a, b)}) == list(range(length))


def test_pyramid_of_a_map_smaller_than_its_grid_repeats_cells():
    maps = np.arange(2 * 2 * 1, dtype=np.float32).reshape(1, 2, 2, 1)  # 4 x 4 grid on a 2 x 2 map
    out = pooled(maps, "pyramid")[0]
    assert out[0] == 1.5 and list(out[1:5]) == [0, 1, 2, 3]
    assert list(out[5:]) == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]


@pytest.mark.parametrize(("backbone", "module"), [("mobilenet", "mobilenet"), ("vgg16", "vgg16"), ("densenet121", "densenet")])
def test_preprocessing_on_the_device_is_keras_preprocess_input(backbone, module):
    """uint8 in; the float32 result of keras.applications.<module>.preprocess_input on the host (tf, caffe, torch)."""
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    expected = getattr(keras.applications, module).preprocess_input(images.astype(np.float32))
    got = keras.ops.convert_to_numpy(Preprocess(backbone)(images))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)


def test_the_feature_function_matches_keras_and_casts_to_the_storage_dtype(mobilenet):
    """Every output of one forward pass: the Keras reference (host preprocess_input, the backbone's layer output,
    then numpy pooling) within float32 rounding; a float16 layer leaves the device as float16."""
    specs = (LayerSpec("conv_pw_3_relu", pooling="pyramid"), LayerSpec("conv_pw_5_relu", pooling="max"),
             LayerSpec("conv_pw_13_relu", dtype="float16"))
    model = feature_graph(mobilenet, specs, None)
    images = np.random.default_rng(1).integers(0, 256, (4, *mobilenet.input_size, 3), dtype=np.uint8)
    got = model.predict_on_batch(images)
    reference = keras.Model(mobilenet.model.inputs, [mobilenet.model.get_layer(s.name).output for s in specs])
    maps = reference.predict_on_batch(keras.applications.mobilenet.preprocess_input(images.astype(np.float32)))
    expected = [pyramid_reference(maps[0]), maps[1].max(axis=(1, 2)), maps[2].mean(axis=(1, 2))]
    assert [np.asarray(g).dtype for g in got] == [np.float32, np.float32, np.float16]
    for g, e in zip(got[:2], expected[:2]):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got[2], dtype=np.float32), e := expected[2], rtol=1e-3, atol=1e-3 * np.abs(e).max())


def test_a_pyramid_layer_is_extracted_and_matches_the_pooled_maps(tmp_path, manifest, extract_config):
    config = dataclasses.replace(extract_config, layers=(LayerSpec("conv_pw_3_relu", pooling="pyramid"),), pixels=None)
    unpooled = dataclasses.replace(extract_config, layers=(LayerSpec("conv_pw_3_relu", pooling="none"),), pixels=None)
    pyramid = extract_features(manifest, config, tmp_path / "pyramid.h5").path
    maps = extract_features(manifest, unpooled, tmp_path / "maps.h5").path
    with h5py.File(pyramid, "r") as f, h5py.File(maps, "r") as g:
        stored, full = f["features/conv_pw_3_relu"][()], g["features/conv_pw_3_relu"][()]
        assert json.loads(f.attrs["pooling"]) == {"conv_pw_3_relu": "pyramid"}
    assert full.shape[1:] == (16, 16, 128) and stored.shape == (len(manifest), 21 * 128)
    np.testing.assert_allclose(stored, pyramid_reference(full), rtol=1e-5, atol=1e-6)
