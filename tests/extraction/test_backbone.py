"""Backbones: name and layer validation, weight sources (imagenet, null, local file), freezing, feature sub-models."""

from __future__ import annotations

import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.extraction.backbone import load_backbone, preprocessor, weights_fingerprint
from pipeline.extraction.hashing import file_sha256
from pipeline.extraction.weights import SOURCE, WeightsError
from pipeline.validation import ConfigError

SMALL = (64, 64)


@pytest.fixture(scope="module")
def random_mobilenet():
    return load_backbone("mobilenet", None, SMALL)


@pytest.fixture(scope="module")
def probe_batch():
    return np.random.default_rng(0).uniform(-1, 1, size=(2, *SMALL, 3)).astype("float32")


def test_unknown_backbone_lists_allowed_names():
    pattern = r"extract\.backbone must be one of \[.*'mobilenet', .*'vgg16'.*\]\. Received: extract\.backbone='mobilenet_v9'"
    with pytest.raises(ConfigError, match=pattern):
        load_backbone("mobilenet_v9", None, SMALL)


def test_unknown_layer_suggests_the_closest_and_lists_valid_layers(mobilenet):
    pattern = (
        r"^extract.layers must be layer names of mobilenet "
        r"\(valid: input_layer(_\d+)?, conv1, conv1_bn, conv1_relu, .*, conv_pw_13_relu\); 'conv_pw_13_rellu' is not one. "
        r"Received: extract.layers=\['conv_pw_5_relu', 'conv_pw_13_rellu'\] Did you mean 'conv_pw_13_relu'\?$"
    )
    with pytest.raises(ConfigError, match=pattern):
        mobilenet.feature_model(["conv_pw_5_relu", "conv_pw_13_rellu"])


def test_include_top_needs_native_size():
    with pytest.raises(ConfigError, match=re.escape(
        "extract.input_size must be [224, 224] (include_top needs the native input size). Received: extract.input_size=[64, 64]"
    )):
        load_backbone("mobilenet", None, SMALL, include_top=True)


def test_imagenet_mobilenet_records_offline_source(mobilenet):
    assert mobilenet.weights_source == SOURCE
    assert mobilenet.input_size == SMALL
    assert mobilenet.model.input_shape == (None, *SMALL, 3)
    assert mobilenet.preprocess is keras.applications.mobilenet.preprocess_input
    assert mobilenet.preprocessing == "keras.applications.mobilenet.preprocess_input"
    assert mobilenet.weights_sha256 == weights_fingerprint(mobilenet.model)


def test_null_weights_are_random_and_labelled_so(mobilenet, random_mobilenet):
    assert "random" in random_mobilenet.weights_source
    assert "NOT pretrained" in random_mobilenet.weights_source
    assert random_mobilenet.weights_sha256 != mobilenet.weights_sha256


def test_input_size_defaults_to_native():
    backbone = load_backbone("mobilenet", None)
    assert backbone.input_size == (224, 224)
    assert backbone.model.input_shape == (None, 224, 224, 3)


def test_backbone_is_frozen(mobilenet, random_mobilenet):
    for backbone in (mobilenet, random_mobilenet):
        assert backbone.model.trainable is False
        assert backbone.model.trainable_weights == []
        assert len(backbone.model.non_trainable_weights) > 0


def test_local_weights_file_reproduces_the_backbone(tmp_path, mobilenet, probe_batch):
    path = tmp_path / "mobilenet.weights.h5"
    mobilenet.model.save_weights(path)
    loaded = load_backbone("mobilenet", str(path), SMALL)
    assert loaded.weights_sha256 == mobilenet.weights_sha256
    assert loaded.weights_source == f"file {path} (sha256 {file_sha256(path)})"
    np.testing.assert_array_equal(
        loaded.model.predict_on_batch(probe_batch), mobilenet.model.predict_on_batch(probe_batch)
    )


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.weights.h5"
    with pytest.raises(ConfigError, match=re.escape(f"Received: extract.weights={str(missing)!r}")):
        load_backbone("mobilenet", str(missing), SMALL)


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_weights_file_of_another_model_is_an_error(tmp_path):
    path = tmp_path / "tiny.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]).save_weights(path)
    with pytest.raises(WeightsError, match=re.escape(f"weights file {path} does not fit mobilenet at input size (64, 64)")):
        load_backbone("mobilenet", str(path), SMALL)


def test_feature_model_has_one_output_per_layer_in_request_order(mobilenet):
    model = mobilenet.feature_model(["conv_pw_13_relu", "conv1_relu", "conv_pw_5_relu"])
    assert isinstance(model, keras.Model)
    assert model.inputs[0] is mobilenet.model.inputs[0]
    assert [tuple(o.shape) for o in model.outputs] == [(None, 2, 2, 1024), (None, 32, 32, 32), (None, 8, 8, 256)]
    assert model.outputs[0] is mobilenet.model.get_layer("conv_pw_13_relu").output


def test_feature_model_outputs_equal_the_backbone_layers(mobilenet, probe_batch):
    deep, shallow = mobilenet.feature_model(["conv_pw_13_relu", "conv_pw_5_relu"]).predict_on_batch(probe_batch)
    np.testing.assert_allclose(deep, mobilenet.model.predict_on_batch(probe_batch), rtol=1e-5, atol=1e-6)
    assert shallow.shape == (2, 8, 8, 256)


@pytest.fixture
def no_internet(monkeypatch):
    """Route Keras's download through a closed local port, so it fails at once whatever the machine's network."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined:UserWarning")
def test_imagenet_without_download_is_an_error_never_random(no_internet):
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    if list((keras_home / "models").glob("weights_mobilenet_v3_small_*")):
        pytest.skip(f"Keras already has MobileNetV3Small ImageNet weights in {keras_home}/models; nothing to download")
    with pytest.raises(WeightsError, match=r"could not get ImageNet weights for mobilenetv3small through Keras") as error:
        load_backbone("mobilenetv3small", "imagenet", SMALL)
    assert "set extract.weights to a local weights file" in str(error.value)
    assert error.value.__cause__ is not None


def tiny_model(path, lambda_layer=False):
    """A small conv net saved as .keras (random weights, NOT pretrained: only loading is under test)."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    if lambda_layer:
        x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    keras.Model(inputs, keras.layers.Dense(2, name="out")(x)).save(path)
    return path


def test_a_users_keras_file_is_a_backbone(tmp_path):
    path = tiny_model(tmp_path / "mine.keras")
    backbone = load_backbone(str(path), None, None, preprocessing="tf")
    assert backbone.input_size == (32, 32) and backbone.name == "mine.keras"
    assert "sha256" in backbone.weights_source and backbone.model.trainable is False
    np.testing.assert_allclose(backbone.preprocess(np.full((1, 2), 255.0)), 1.0)
    outputs = backbone.feature_model(["conv", "gap"]).predict_on_batch(np.zeros((2, 32, 32, 3), np.float32))
    assert [o.shape for o in outputs] == [(2, 30, 30, 4), (2, 4)]


def test_the_preprocessor_is_the_backbones_own_without_building_it(mobilenet):
    x = np.linspace(0, 255, 24, dtype=np.float32).reshape(2, 2, 2, 3)
    np.testing.assert_array_equal(preprocessor("mobilenet")(x.copy()), mobilenet.preprocess(x.copy()))
    np.testing.assert_array_equal(preprocessor("mine.keras", "none")(x), x)
    np.testing.assert_allclose(preprocessor("mine.keras", "tf")(x.copy()), x / 127.5 - 1, rtol=1e-6)


def test_a_keras_file_needs_its_preprocessing_and_no_imagenet(tmp_path):
    path = str(tiny_model(tmp_path / "mine.keras"))
    with pytest.raises(ConfigError, match=r"extract.preprocessing must be one of \['caffe', 'none', 'tf', 'torch'\]"):
        load_backbone(path, None, None)
    with pytest.raises(ConfigError, match=r"must be null \(the model's own weights\) or a weights file"):
        load_backbone(path, "imagenet", None, preprocessing="none")


def test_a_keras_file_with_code_is_refused_by_safe_mode(tmp_path):
    path = str(tiny_model(tmp_path / "unsafe.keras", lambda_layer=True))
    with pytest.raises(ConfigError, match=r"cannot load .*unsafe.keras as a Keras model with safe_mode=True"):
        load_backbone(path, None, None, preprocessing="none")
