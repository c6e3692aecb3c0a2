"""Tests for pipeline.classification.models: saving and loading classifiers with the metadata of what they expect."""

import json

import numpy as np
import pytest

from pipeline.classification.classifiers import KerasHeadClassifier, build_estimator
from pipeline.classification.models import (
    FEATURE_KEYS,
    history_rows,
    load_model,
    model_metadata,
    read_metadata,
    save_model,
)
from pipeline.config import ClassifierConfig
from pipeline.validation import ConfigError

rng = np.random.default_rng(0)
X = rng.normal(size=(60, 6)).astype(np.float32)
y = (X[:, 0] > 0).astype(int)


def test_sklearn_model_round_trip(tmp_path):
    estimator = build_estimator(ClassifierConfig(name="lr", estimator="logistic_regression", layer="l")).fit(X, y)
    save_model(estimator, tmp_path / "lr", {"classifier": "lr", "layer": "l"})
    loaded, metadata = load_model(tmp_path / "lr")
    np.testing.assert_array_equal(loaded.predict(X), estimator.predict(X))
    assert metadata["file"] == "model.joblib" and metadata["layer"] == "l"
    assert set(metadata["versions"]) == {"scikit-learn", "joblib", "numpy"}  # Keras only for a Keras head


def test_keras_head_is_saved_as_dot_keras_and_round_trips(tmp_path):
    head = KerasHeadClassifier(units=8, epochs=3, verbose=0).fit(X, y * 5)
    save_model(head, tmp_path / "head", {"classifier": "head"})
    assert (tmp_path / "head" / "model.keras").is_file()
    loaded, metadata = load_model(tmp_path / "head")
    assert metadata["estimator_params"]["units"] == 8
    assert list(loaded.classes_) == [0, 5]
    np.testing.assert_allclose(loaded.predict_proba(X), head.predict_proba(X), rtol=1e-5, atol=1e-6)


def test_save_replaces_the_directory_atomically(tmp_path):
    estimator = build_estimator(ClassifierConfig(name="lr", estimator="logistic_regression", layer="l")).fit(X, y)
    save_model(estimator, tmp_path / "m", {"classifier": "first"})
    save_model(estimator, tmp_path / "m", {"classifier": "second"})
    assert read_metadata(tmp_path / "m")["classifier"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_refuses_a_directory_not_written_by_the_pipeline(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "model.joblib").write_bytes(b"not ours")
    with pytest.raises(ConfigError, match=r"foreign is not a model saved by this pipeline \(no model.json\)"):
        load_model(tmp_path / "foreign")


def test_metadata_is_plain_json(tmp_path):
    estimator = build_estimator(ClassifierConfig(name="svm", estimator="linear_svm", layer="l")).fit(X, y)
    save_model(estimator, tmp_path / "svm", {"classifier": "svm", "class_names": ["a", "b"]})
    record = json.loads((tmp_path / "svm" / "model.json").read_text())
    assert record["class_names"] == ["a", "b"] and record["format_version"] == 1


def test_history_rows_are_one_row_per_epoch_of_the_known_columns():
    curves = {"loss": [0.9, 0.5], "val_loss": [1.0, 0.7], "learning_rate": [1e-3, 1e-3]}
    assert history_rows(curves) == [
        {"epoch": 1, "loss": 0.9, "val_loss": 1.0}, {"epoch": 2, "loss": 0.5, "val_loss": 0.7},
    ]
    assert history_rows({}) == []


def test_model_metadata_records_the_layers_and_the_features_provenance(tmp_path):
    attrs = {key: f"<{key}>" for key in FEATURE_KEYS} | {"class_names": ["a", "b"], "n_rows": 10}
    metadata = model_metadata(
        "svm", "linear_svm", {"C": 1.0}, ["x", "y"], tmp_path / "f.h5", attrs, 1.5, 0.75, [], pool="avg"
    )
    assert metadata["layer"] == "x+y" and metadata["layers"] == ["x", "y"] and metadata["pool"] == "avg"
    assert metadata["features"] == {key: f"<{key}>" for key in FEATURE_KEYS}  # provenance keys only
    assert metadata["class_names"] == ["a", "b"] and metadata["features_file"] == str(tmp_path / "f.h5")
    estimator = build_estimator(ClassifierConfig(name="svm", estimator="linear_svm", layer="l")).fit(X, y)
    save_model(estimator, tmp_path / "svm", metadata)
    assert {k: v for k, v in read_metadata(tmp_path / "svm").items() if k in metadata} == metadata
