"""Tests for pipeline.classification.evaluate: test-split metrics and DVC plot data (confusion, per class, curves) from trained models."""

import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, precision_recall_fscore_support, top_k_accuracy_score

from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.evaluate import class_probabilities, evaluate_model, score
from pipeline.classification.models import load_model, read_metadata
from pipeline.classification.train import train_classifier
from pipeline.config import ClassifierConfig
from pipeline.store import load_split
from pipeline.validation import ConfigError

BASE_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "n", "val_accuracy", "fit_seconds", "predict_seconds"}
PROBA_KEYS = {"log_loss", "top3_accuracy"}
CONFIGS = {
    "svm": ClassifierConfig(name="svm", estimator="linear_svm", layer="conv_pw_5_relu", params={"C": 0.1}),
    "lr": ClassifierConfig(name="lr", estimator="logistic_regression", layer="conv_pw_5_relu", params={"C": 1.0}),
    "head": ClassifierConfig(
        name="head", estimator="keras_head", layer="conv_pw_13_relu",
        params={"units": 16, "epochs": 3, "patience": 10, "verbose": 0},
    ),
}


@pytest.fixture(scope="module")
def evaluated(features_file, tmp_path_factory):
    """Each kind of estimator trained and evaluated once: name -> (model dir, eval files, returned metrics)."""
    root = tmp_path_factory.mktemp("evaluate")
    result = {}
    for name, config in CONFIGS.items():
        train_classifier(features_file, config, root / "models" / name)
        files = EvalFiles(root / "eval", name)
        metrics = evaluate_model(root / "models" / name, features_file, files)
        result[name] = (root / "models" / name, files, metrics)
    return result


def test_metrics_and_confusion_rows(evaluated, features_file):
    _, out, metrics = evaluated["svm"]
    n_test = len(load_split(features_file, "conv_pw_5_relu", "test").y)
    assert json.loads(out.path("metrics").read_text()) == metrics
    assert metrics["n"] == n_test
    assert all(0 <= metrics[k] <= 1 for k in ("accuracy", "balanced_accuracy", "macro_f1"))
    rows = json.loads(out.path("confusion").read_text())
    assert len(rows) == n_test
    assert {row["actual"] for row in rows} == {str(i) for i in range(10)}
    hits = sum(row["actual"] == row["predicted"] for row in rows)
    assert hits / n_test == pytest.approx(metrics["accuracy"])


def test_log_loss_and_top3_only_for_estimators_with_predict_proba(evaluated):
    assert set(evaluated["svm"][2]) == BASE_KEYS  # LinearSVC: no predict_proba, so no keys (not nulls)
    for name in ("lr", "head"):
        assert set(evaluated[name][2]) == BASE_KEYS | PROBA_KEYS, name


@pytest.mark.parametrize("name", ["lr", "head"])
def test_log_loss_and_top3_match_sklearn_on_the_model_probabilities(name, evaluated, features_file):
    model_dir, _, metrics = evaluated[name]
    estimator, metadata = load_model(model_dir)
    test = load_split(features_file, metadata["layer"], "test", flatten=True)
    proba = estimator.predict_proba(test.X)
    assert proba.shape == (len(test.y), 10)
    assert metrics["log_loss"] == pytest.approx(log_loss(test.y, proba, labels=range(10)), rel=1e-4)
    assert metrics["top3_accuracy"] == pytest.approx(top_k_accuracy_score(test.y, proba, k=3, labels=range(10)))
    assert metrics["accuracy"] <= metrics["top3_accuracy"] <= 1


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_metrics_file_is_flat_and_numeric_with_timings(name, evaluated):
    model_dir, out, _ = evaluated[name]
    metrics = json.loads(out.path("metrics").read_text())
    assert all(type(value) in (int, float) for value in metrics.values()), metrics
    assert metrics["predict_seconds"] > 0
    assert metrics["fit_seconds"] == read_metadata(model_dir)["fit_seconds"] > 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_per_class_rows_match_sklearn(name, evaluated, features_file):
    model_dir, out, _ = evaluated[name]
    estimator, metadata = load_model(model_dir)
    test = load_split(features_file, metadata["layer"], "test", flatten=True)
    precision, recall, f1, support = precision_recall_fscore_support(
        test.y, estimator.predict(test.X), labels=range(10), zero_division=0
    )
    rows = json.loads(out.path("per_class").read_text())
    assert [row["class"] for row in rows] == [str(i) for i in range(10)]
    assert all(set(row) == {"class", "precision", "recall", "f1", "support"} for row in rows)
    assert [row["precision"] for row in rows] == pytest.approx(precision.tolist())
    assert [row["recall"] for row in rows] == pytest.approx(recall.tolist())
    assert [row["f1"] for row in rows] == pytest.approx(f1.tolist())
    assert [row["support"] for row in rows] == support.tolist()
    assert sum(row["support"] for row in rows) == len(test.y)


def test_confusion_png_is_a_drawn_image(evaluated):
    path = evaluated["svm"][1].confusion_png
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < path.stat().st_size < 2_000_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert min(image.size) >= 400 and max(image.size) <= 3000
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # a heat map with text, not a blank canvas
    assert not list(path.parent.glob(".*.partial"))


def test_learning_curve_is_the_recorded_history(evaluated):
    model_dir, out, _ = evaluated["head"]
    curve = json.loads(out.path("learning_curve").read_text())
    assert curve == read_metadata(model_dir)["history"]
    assert [row["epoch"] for row in curve] == [1, 2, 3]
    assert all({"loss", "val_loss"} <= set(row) for row in curve)
    for name in ("svm", "lr"):
        assert json.loads(evaluated[name][1].path("learning_curve").read_text()) == []


def test_score_leaves_top3_out_for_three_classes_or_fewer():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])
    metrics = score(y, proba.argmax(axis=1), proba, n_classes=3)
    assert set(metrics) == {"accuracy", "balanced_accuracy", "macro_f1", "n", "log_loss"}
    assert metrics["log_loss"] == pytest.approx(log_loss(y, proba))
    assert set(score(y, proba.argmax(axis=1), None, n_classes=3)) == {"accuracy", "balanced_accuracy", "macro_f1", "n"}


def test_class_probabilities_cover_classes_missing_from_training():
    X = np.array([[0.0], [0.1], [1.0], [1.1]])
    estimator = LogisticRegression().fit(X, [0, 0, 2, 2])
    proba = class_probabilities(estimator, X, n_classes=3)
    assert proba.shape == (4, 3)
    assert np.all(proba[:, 1] == 0)
    assert proba.sum(axis=1) == pytest.approx(np.ones(4))
    assert proba[:, [0, 2]] == pytest.approx(estimator.predict_proba(X))


def test_refuses_features_from_a_different_extraction(evaluated, features_file, tmp_path):
    other = tmp_path / "other.h5"
    shutil.copy(features_file, other)
    with h5py.File(other, "a") as f:
        f.attrs["config_hash"] = "0" * 64
    with pytest.raises(ConfigError, match=r"was trained on features with config_hash .* retrain it"):
        evaluate_model(evaluated["svm"][0], other, EvalFiles(tmp_path / "eval", "svm"))
    assert not (tmp_path / "eval").exists()


def test_files_go_by_kind_one_per_run(evaluated):
    root = evaluated["svm"][1].root
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(
        [f"{kind}/{name}.json" for kind in ("metrics", "confusion", "per_class", "learning_curve") for name in CONFIGS]
        + [f"confusion/{name}.png" for name in CONFIGS]
    )
