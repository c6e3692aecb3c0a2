"""Tests for pipeline.extraction.model: the shapes a features file stores, and its values per batch."""

from __future__ import annotations

import numpy as np

from pipeline.config import LayerSpec
from pipeline.extraction.accelerate import DeviceBatch
from pipeline.extraction.graph import feature_graph
from pipeline.extraction.model import pooled_shape, stored_values


def test_pooled_shapes_per_pooling():
    shape = (56, 56, 128)  # VGG16 block2_pool at 224: 401,408 floats unpooled, 2,688 as a pyramid
    assert [pooled_shape(shape, p) for p in ("none", "avg", "max", "pyramid")] == [shape, (128,), (128,), (2688,)]


def test_stored_values_do_not_depend_on_the_device_batch(mobilenet):
    """Ten images in one padded call of 32, or in calls of 4 (the last padded): the same rows, in order, with the
    pixels baseline beside the layer's."""
    specs = (LayerSpec("conv_pw_5_relu"), LayerSpec("pixels"))
    model = feature_graph(mobilenet, specs[:1], None)
    images = np.random.default_rng(0).integers(0, 256, (10, *mobilenet.input_size, 3), dtype=np.uint8)
    whole = stored_values(model, DeviceBatch(32), specs, images, 8)
    parts = stored_values(model, DeviceBatch(4), specs, images, 8)
    assert whole["conv_pw_5_relu"].shape == (10, 256) and whole["pixels"].shape == (10, 8, 8, 3)
    np.testing.assert_allclose(parts["conv_pw_5_relu"], whole["conv_pw_5_relu"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(parts["pixels"], whole["pixels"])
