"""Tests for pipeline.train: one configured classifier trained on a real features file and saved with provenance."""

import h5py
import pytest

from pipeline.config import ClassifierConfig
from pipeline.models import load_model
from pipeline.store import load_split
from pipeline.train import FEATURE_KEYS, train_classifier
from pipeline.validation import ConfigError


def test_train_saves_a_model_that_records_its_features(features_file, tmp_path):
    config = ClassifierConfig(name="lr", estimator="logistic_regression", layer="conv_pw_5_relu", params={"C": 1.0})
    metadata = train_classifier(features_file, config, tmp_path / "lr")
    estimator, saved = load_model(tmp_path / "lr")
    with h5py.File(features_file, "r") as f:
        assert saved["features"]["config_hash"] == f.attrs["config_hash"]
    assert set(FEATURE_KEYS) == set(saved["features"])
    assert saved["class_names"] == [str(i) for i in range(10)]
    assert saved["layer"] == "conv_pw_5_relu" and saved["pooling"] == "avg"
    assert 0 <= metadata["val_accuracy"] <= 1
    test = load_split(features_file, "conv_pw_5_relu", "test")
    assert estimator.predict(test.X).shape == test.y.shape


def test_keras_head_trains_on_unpooled_float16_maps(features_file, tmp_path):
    config = ClassifierConfig(
        name="head", estimator="keras_head", layer="conv_pw_13_relu", params={"units": 16, "epochs": 3, "verbose": 0}
    )
    train_classifier(features_file, config, tmp_path / "head")
    estimator, saved = load_model(tmp_path / "head")
    test = load_split(features_file, "conv_pw_13_relu", "test", flatten=True)
    assert estimator.n_features_in_ == test.X.shape[1] == 2 * 2 * 1024
    assert saved["pooling"] == "none"


def test_unknown_layer_names_the_extracted_layers(features_file, tmp_path):
    config = ClassifierConfig(name="lr", estimator="logistic_regression", layer="conv_pw_7_relu")
    with pytest.raises(ConfigError, match=r"classifiers.lr.layer must be one of \['conv_pw_13_relu', 'conv_pw_5_relu'\]"):
        train_classifier(features_file, config, tmp_path / "lr")
    assert not (tmp_path / "lr").exists()
