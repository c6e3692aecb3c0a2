"""Saved classifiers: the model file plus ``model.json`` recording the features, layer and classes it expects.

Trust boundary: scikit-learn models are stored with joblib (pickle). ``load_model`` only loads directories that
this pipeline wrote (it checks ``model.json``); never point it at a model from an untrusted source. Keras heads
are stored as ``.keras`` and loaded with ``safe_mode=True``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from pipeline.atomic import atomic_directory
from pipeline.classification.classifiers import KerasHeadClassifier, final_estimator
from pipeline.config import FINETUNED
from pipeline.validation import ConfigError

METADATA = "model.json"
KERAS_FILE = "model.keras"
PREPROCESS = "preprocess.joblib"
FORMAT_VERSION = 1

# Provenance keys of the features file that a trained model depends on; prediction must match them.
FEATURE_KEYS = (
    "backbone", "weights_sha256", "input_size", "interpolation", "preprocessing", "config_hash", "extract_config"
)
# Per-epoch columns of a training history, in the order they are recorded; "val_" ones are on the val split.
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


def library_versions(keras_model: bool) -> dict[str, str]:
    """The versions a saved model depends on (Keras only for a Keras head: importing it costs seconds)."""
    import sklearn

    versions = {"scikit-learn": sklearn.__version__, "joblib": joblib.__version__, "numpy": np.__version__}
    if keras_model:
        import keras

        versions["keras"] = keras.__version__
    return versions


def history_rows(curves: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """model.json's ``history`` (the learning-curve plot's data): one row per epoch, ``{"epoch": 1, "loss": ..., ...}``,
    from ``curves`` (a Keras ``History.history``: metric -> one value per epoch), with the ``HISTORY_KEYS`` it has."""
    columns = {key: curves[key] for key in HISTORY_KEYS if key in curves}
    n_epochs = len(next(iter(columns.values()), []))
    return [{"epoch": i + 1, **{key: float(values[i]) for key, values in columns.items()}} for i in range(n_epochs)]


def model_metadata(
    classifier: str, estimator: str, params: Mapping[str, Any], layers: Sequence[str], features: str | Path,
    attrs: Mapping[str, Any], fit_seconds: float, val_accuracy: float, history: list[dict[str, float]], **details: Any,
) -> dict[str, Any]:
    """The model.json fields of every trained model (``details`` adds its own): what it is, the layers and features
    file it was trained on with their provenance (``attrs``, the file's root attributes), its fit time, val accuracy
    and per-epoch history (``history_rows``). ``save_model`` and ``write_metadata`` add the file and versions."""
    return {
        "classifier": classifier,
        "estimator": estimator,
        "params": dict(params),
        "layer": "+".join(layers),
        "layers": list(layers),
        **details,
        "class_names": attrs["class_names"],
        "features_file": str(features),
        "features": {key: attrs[key] for key in FEATURE_KEYS},
        "fit_seconds": fit_seconds,
        "val_accuracy": val_accuracy,
        "history": history,
    }


def write_metadata(directory: Path, filename: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``directory/model.json``: the format version, the model file ``filename``, ``metadata`` and the library
    versions; returns the record."""
    record = {
        "format_version": FORMAT_VERSION, "file": filename, **metadata,
        "versions": library_versions(keras_model=filename == KERAS_FILE),
    }
    (directory / METADATA).write_text(json.dumps(record, indent=2) + "\n")
    return record


def save_model(estimator: BaseEstimator, out_dir: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``out_dir`` atomically: ``model.keras`` for a Keras head (plus ``preprocess.joblib`` for steps before
    it), else ``model.joblib``, and ``model.json`` (``metadata``, see ``model_metadata``)."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        head = final_estimator(estimator)
        if isinstance(head, KerasHeadClassifier):
            filename = KERAS_FILE
            head.model_.save(tmp / filename)
            extra = {"classes": head.classes_.tolist(), "estimator_params": head.get_params()}
            if head is not estimator:  # fitted steps before the head (pool, PCA): scikit-learn objects
                joblib.dump(estimator[:-1], tmp / PREPROCESS)
                extra["preprocess"] = PREPROCESS
        else:
            filename = "model.joblib"
            joblib.dump(estimator, tmp / filename)
            extra = {}
        write_metadata(tmp, filename, {**metadata, **extra})
    return out_dir


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / METADATA
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not a model saved by this pipeline (no {METADATA})")
    return json.loads(path.read_text())


def load_model(model_dir: str | Path) -> tuple[BaseEstimator, dict[str, Any]]:
    """Load a model directory written by ``save_model``; returns the estimator and its metadata."""
    metadata = read_metadata(model_dir)
    if metadata.get("kind") == FINETUNED:
        raise ConfigError(
            f"{model_dir} is a fine-tuned model, which takes images, not features: evaluate it with "
            "pipeline.finetune.evaluate_finetuned, predict with `python -m pipeline predict`"
        )
    path = Path(model_dir) / metadata["file"]
    if metadata["file"] == KERAS_FILE:
        import keras

        estimator = KerasHeadClassifier(**metadata["estimator_params"])
        estimator.model_ = keras.saving.load_model(path, safe_mode=True)
        estimator.classes_ = np.asarray(metadata["classes"])
        estimator.n_features_in_ = int(estimator.model_.input_shape[-1])
        if metadata.get("preprocess"):
            steps = joblib.load(Path(model_dir) / metadata["preprocess"])
            estimator = Pipeline([*steps.steps, ("clf", estimator)])
    else:
        estimator = joblib.load(path)
    return estimator, metadata
