"""Stage two, training: fit one configured classifier on one layer's train split and save it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.classifiers import KerasHeadClassifier, build_estimator
from pipeline.config import ClassifierConfig
from pipeline.models import save_model
from pipeline.store import load_split, read_attrs
from pipeline.validation import check_one_of

log = logging.getLogger(__name__)

# Provenance keys of the features file that a trained model depends on; prediction must match them.
FEATURE_KEYS = (
    "backbone", "weights_sha256", "input_size", "interpolation", "preprocessing", "config_hash", "extract_config"
)


def train_classifier(features: str | Path, config: ClassifierConfig, out_dir: str | Path) -> dict[str, Any]:
    """Fit ``config``'s estimator on the train split (val split for early stopping) and save it to ``out_dir``."""
    estimator = build_estimator(config)
    attrs = read_attrs(features)
    check_one_of(f"classifiers.{config.name}.layer", config.layer, attrs["layers"])
    train = load_split(features, config.layer, "train", flatten=True)
    val = load_split(features, config.layer, "val", flatten=True)
    log.info(
        "training %s (%s) on %s: %d train rows, %d val rows, %d features",
        config.name, config.estimator, config.layer, len(train.y), len(val.y), train.X.shape[1],
    )
    started = time.perf_counter()
    if isinstance(estimator, KerasHeadClassifier):
        estimator.fit(train.X, train.y, validation_data=(val.X, val.y))
    else:
        estimator.fit(train.X, train.y)
    fit_seconds = time.perf_counter() - started
    val_accuracy = float(np.mean(estimator.predict(val.X) == val.y))
    log.info("%s: fit in %.1f s, val accuracy %.4f", config.name, fit_seconds, val_accuracy)
    metadata = {
        "classifier": config.name,
        "estimator": config.estimator,
        "params": config.params,
        "scale": config.scale,
        "layer": config.layer,
        "pooling": attrs["pooling"][config.layer],
        "class_names": attrs["class_names"],
        "features_file": str(features),
        "features": {key: attrs[key] for key in FEATURE_KEYS},
        "fit_seconds": fit_seconds,
        "val_accuracy": val_accuracy,
    }
    save_model(estimator, out_dir, metadata)
    return metadata
