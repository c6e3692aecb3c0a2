"""Stage two, evaluation: test-split metrics and confusion-matrix data, in the formats DVC shows."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from pipeline.atomic import write_json
from pipeline.models import load_model
from pipeline.store import load_split, read_attrs
from pipeline.validation import ConfigError

log = logging.getLogger(__name__)


def evaluate_model(
    model_dir: str | Path, features: str | Path, out_dir: str | Path, split: str = "test"
) -> dict[str, Any]:
    """Write ``metrics.json`` and ``confusion.json`` (rows of actual/predicted class names) for one model."""
    estimator, metadata = load_model(model_dir)
    attrs = read_attrs(features)
    if attrs["config_hash"] != metadata["features"]["config_hash"]:
        raise ConfigError(
            f"model {model_dir} was trained on features with config_hash {metadata['features']['config_hash']}, "
            f"but {features} has {attrs['config_hash']}; retrain it on these features"
        )
    data = load_split(features, metadata["layer"], split, flatten=True)
    predicted = estimator.predict(data.X)
    metrics = {
        "accuracy": float(accuracy_score(data.y, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(data.y, predicted)),
        "macro_f1": float(f1_score(data.y, predicted, average="macro")),
        "n": int(len(data.y)),
    }
    names = attrs["class_names"]
    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", metrics)
    write_json(
        out_dir / "confusion.json",
        [{"actual": names[a], "predicted": names[p]} for a, p in zip(data.y.tolist(), predicted.tolist())],
    )
    log.info("%s on %s split: %s", metadata["classifier"], split, metrics)
    return metrics
