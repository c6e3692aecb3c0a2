"""Tests for pipeline.evaluate: test-split metrics and DVC confusion-plot data from a trained model."""

import json
import shutil

import h5py
import pytest

from pipeline.config import ClassifierConfig
from pipeline.evaluate import evaluate_model
from pipeline.store import load_split
from pipeline.train import train_classifier
from pipeline.validation import ConfigError


@pytest.fixture(scope="module")
def model_dir(features_file, tmp_path_factory):
    config = ClassifierConfig(name="svm", estimator="linear_svm", layer="conv_pw_5_relu", params={"C": 0.1})
    out = tmp_path_factory.mktemp("models") / "svm"
    train_classifier(features_file, config, out)
    return out


def test_metrics_and_confusion_rows(model_dir, features_file, tmp_path):
    metrics = evaluate_model(model_dir, features_file, tmp_path)
    n_test = len(load_split(features_file, "conv_pw_5_relu", "test").y)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert set(metrics) == {"accuracy", "balanced_accuracy", "macro_f1", "n"}
    assert metrics["n"] == n_test
    assert all(0 <= metrics[k] <= 1 for k in ("accuracy", "balanced_accuracy", "macro_f1"))
    rows = json.loads((tmp_path / "confusion.json").read_text())
    assert len(rows) == n_test
    assert {row["actual"] for row in rows} == {str(i) for i in range(10)}
    hits = sum(row["actual"] == row["predicted"] for row in rows)
    assert hits / n_test == pytest.approx(metrics["accuracy"])


def test_refuses_features_from_a_different_extraction(model_dir, features_file, tmp_path):
    other = tmp_path / "other.h5"
    shutil.copy(features_file, other)
    with h5py.File(other, "a") as f:
        f.attrs["config_hash"] = "0" * 64
    with pytest.raises(ConfigError, match=r"was trained on features with config_hash .* retrain it"):
        evaluate_model(model_dir, other, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()
