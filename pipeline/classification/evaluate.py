"""Stage two, evaluation: test-split metrics and plot data (confusion, per class, learning curve) for DVC."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from pipeline.atomic import atomic_file, write_json
from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.models import load_model
from pipeline.classification.plots import heatmap
from pipeline.store import iter_chunks, read_attrs
from pipeline.validation import ConfigError

log = logging.getLogger(__name__)

TOP_K = 3
BLOCK_BYTES = 64 << 20  # features read from the file at a time to predict on (a block of rows)


@dataclass(frozen=True)
class Predictions:
    """A model's outputs on one split: true and predicted labels, class probabilities (None without
    ``predict_proba``), and the seconds spent predicting."""

    y: np.ndarray
    predicted: np.ndarray
    proba: np.ndarray | None
    seconds: float


def predictions(
    estimator, features: str | Path, layers: Sequence[str], split: str, n_classes: int, chunk_bytes: int = BLOCK_BYTES
) -> Predictions:
    """Predict ``split`` block by block from HDF5 (about ``chunk_bytes`` of features at a time, never all of it)."""
    ys, predicted, probas, seconds = [], [], [], 0.0
    for block in iter_chunks(features, layers, split, chunk_bytes):
        started = time.perf_counter()
        predicted.append(estimator.predict(block.X))
        seconds += time.perf_counter() - started
        if hasattr(estimator, "predict_proba"):
            probas.append(class_probabilities(estimator, block.X, n_classes))
        ys.append(block.y)
    return Predictions(
        np.concatenate(ys), np.concatenate(predicted), np.concatenate(probas) if probas else None, seconds
    )


def evaluate_model(
    model_dir: str | Path, features: str | Path, files: EvalFiles, split: str = "test"
) -> dict[str, Any]:
    """Evaluate one model on ``split`` and write its DVC metrics and plots (``files``); returns the metrics.

    Files: ``metrics`` (flat, numeric: see ``score``), ``per_class`` (precision, recall, F1 and support per class),
    ``confusion`` (one actual/predicted row per sample, for DVC's confusion template) and its PNG (the same counts
    as an image), and ``learning_curve`` (the per-epoch training history recorded in ``model.json``; ``[]`` for
    estimators trained without epochs).
    """
    estimator, metadata = load_model(model_dir)
    names = list(trained_on(model_dir, metadata, features)["class_names"])
    data = predictions(estimator, features, metadata["layers"], split, len(names))
    description = f"{metadata['classifier']} ({metadata['estimator']}) on {metadata['layer']}"
    return write_evaluation(files, data, names, metadata, description, split)


def trained_on(model_dir: str | Path, metadata: Mapping[str, Any], features: str | Path) -> dict[str, Any]:
    """The provenance of ``features``, refused unless the model (``metadata``) was trained on features like them."""
    attrs = read_attrs(features)
    if attrs["config_hash"] != metadata["features"]["config_hash"]:
        raise ConfigError(
            f"model {model_dir} was trained on features with config_hash {metadata['features']['config_hash']}, "
            f"but {features} has {attrs['config_hash']}; retrain it on these features"
        )
    return attrs


def write_evaluation(
    files: EvalFiles, data: Predictions, names: Sequence[str], record: Mapping[str, Any], description: str,
    split: str = "test",
) -> dict[str, Any]:
    """Score ``data`` and write the evaluation ``files`` (see ``evaluate_model``); returns the metrics.

    ``record`` is the model's ``model.json``: its ``val_accuracy``, ``fit_seconds`` and ``history`` (per-epoch rows)
    are reported; ``description`` names the model in the confusion image's title and the log. Every evaluation,
    from features or from images (``pipeline.finetune``), writes its results here.
    """
    names = list(names)
    y, predicted = data.y, data.predicted
    metrics = {
        **score(y, predicted, data.proba, len(names)),
        "val_accuracy": float(record["val_accuracy"]),
        "fit_seconds": float(record["fit_seconds"]),
        "predict_seconds": data.seconds,
    }

    title = f"{description}\n{split} accuracy {metrics['accuracy']:.3f} (n={metrics['n']})"
    with atomic_file(files.confusion_png) as tmp:
        heatmap(
            confusion_matrix(y, predicted, labels=range(len(names))), names, names, tmp,
            title=title, xlabel="predicted class", ylabel="actual class", colorbar="images",
        )
    write_json(files.metrics, metrics)
    write_json(files.path("per_class"), per_class(y, predicted, names))
    write_json(
        files.path("confusion"),
        [{"actual": names[a], "predicted": names[p]} for a, p in zip(y.tolist(), predicted.tolist())],
    )
    write_json(files.path("learning_curve"), record.get("history", []))
    log.info("%s on %s split: %s", description, split, metrics)
    return metrics


def class_probabilities(estimator, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` as an (n, n_classes) float64 matrix over all class indices, rows summing to 1.

    A class missing from the training labels gets probability 0 in its column.
    """
    return spread_probabilities(estimator.predict_proba(X), estimator.classes_, n_classes)


def spread_probabilities(proba: np.ndarray, classes: Sequence[int], n_classes: int) -> np.ndarray:
    """Probabilities over the model's ``classes`` (its output columns) as an (n, n_classes) float64 matrix over all
    class indices, rows summing to 1; a class the model never saw gets probability 0."""
    proba = np.asarray(proba, dtype=np.float64)
    full = np.zeros((len(proba), n_classes))
    full[:, np.asarray(classes, dtype=int)] = proba
    return full / full.sum(axis=1, keepdims=True)


def score(y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, n_classes: int) -> dict[str, float | int]:
    """accuracy, balanced_accuracy, macro_f1 and n; with probabilities also log_loss and top-3 accuracy.

    ``top3_accuracy`` is left out for three classes or fewer, where it is 1 whatever the model.
    """
    metrics: dict[str, float | int] = {
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "macro_f1": float(f1_score(y, predicted, average="macro")),
        "n": len(y),
    }
    if proba is not None:
        labels = np.arange(n_classes)
        metrics["log_loss"] = float(log_loss(y, proba, labels=labels))
        if n_classes > TOP_K:
            metrics[f"top{TOP_K}_accuracy"] = float(top_k_accuracy_score(y, proba, k=TOP_K, labels=labels))
    return metrics


def per_class(y: np.ndarray, predicted: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """One row per class, in class order: class name, precision, recall, F1 and support (0 where undefined)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y, predicted, labels=range(len(names)), zero_division=0
    )
    return [
        {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, support)
    ]
