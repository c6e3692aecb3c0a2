"""Stage two, training: fit one configured classifier on one layer's train split and save it with its history."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.classification.classifiers import (
    KerasHeadClassifier,
    build_estimator,
    build_search,
    configured_estimator,
    final_estimator,
    search_prefix,
)
from pipeline.classification.evaluate import predictions
from pipeline.classification.models import history_rows, model_metadata, save_model
from pipeline.classification.stream import check_streaming, fit_out_of_core
from pipeline.cluster import joblib_backend
from pipeline.config import ClassifierConfig
from pipeline.store import Split, feature_shape, load_layers, load_views, read_attrs, split_nbytes
from pipeline.validation import ConfigError, check_one_of, format_bytes

log = logging.getLogger(__name__)


def training_history(estimator) -> list[dict[str, float]]:
    """One row per epoch run, ``{"epoch": 1, "loss": ..., ...}`` with the ``HISTORY_KEYS`` the estimator recorded.

    The Keras head records all four (every epoch run, also those after the best one that early stopping restores);
    an estimator trained out of core records all four per pass (its ``history_``; losses only with
    ``predict_proba``); an MLP records its training loss per epoch (and ``val_accuracy`` with ``early_stopping``);
    estimators without epochs (linear models, trees, neighbours) give ``[]``.
    """
    final = final_estimator(estimator)
    if getattr(final, "history_", None) is not None:
        return history_rows(final.history_)
    if getattr(final, "loss_curve_", None) is None:
        return []
    curves = {"loss": final.loss_curve_}
    if getattr(final, "validation_scores_", None) is not None:
        curves["val_accuracy"] = final.validation_scores_
    return history_rows(curves)


def fit(estimator, train: Split, val: Split):
    """Fit on ``train``; a Keras head also gets ``val`` for early stopping, through the steps before it."""
    head = final_estimator(estimator)
    if not isinstance(head, KerasHeadClassifier):
        return estimator.fit(train.X, train.y)
    if head is estimator:
        return estimator.fit(train.X, train.y, validation_data=(val.X, val.y))
    steps = estimator[:-1]  # shares the step objects with ``estimator``, so they are fitted in place
    head.fit(steps.fit_transform(train.X, train.y), train.y, validation_data=(steps.transform(val.X), val.y))
    return estimator


def training_rows(features: str | Path, config: ClassifierConfig) -> tuple[Split, np.ndarray | None]:
    """The train split's rows, followed with ``augmented`` by every stored view of them (labels repeated), and the
    image each row comes from (None without views): the groups that keep an image's views in one CV fold."""
    train = load_layers(features, config.layers, "train")
    if not config.augmented:
        return train, None
    try:
        views = load_views(features, config.layers, "train")
    except ConfigError as error:
        raise ConfigError(f"classifiers.{config.name}.augmented is true, but {error}") from error
    copies = 1 + len(views.y) // max(1, len(train.y))
    log.info("%s: %d train rows and %d augmented views of them", config.name, len(train.y), len(views.y))
    groups = np.tile(np.arange(len(train.y)), copies)
    return Split(np.concatenate([train.X, views.X]), np.concatenate([train.y, views.y])), groups


def search(estimator, config: ClassifierConfig, train: Split, cluster: str | None, groups: np.ndarray | None = None):
    """Cross-validated search on the train split (on ``cluster`` when given; folds by ``groups`` when given);
    returns the refitted best and a record."""
    searcher = build_search(estimator, config)
    with joblib_backend(cluster):
        searcher.fit(train.X, train.y, groups=groups)
    prefix = search_prefix(estimator)
    best = {key.removeprefix(prefix): value for key, value in searcher.best_params_.items()}
    record = {
        "method": config.search.method,
        "scoring": config.search.scoring,
        "cv": config.search.cv,
        "candidates": len(searcher.cv_results_["params"]),
        "best_params": {key: value.item() if hasattr(value, "item") else value for key, value in best.items()},
        "best_score": float(searcher.best_score_),
    }
    log.info("%s: %s search over %d candidates, best %s = %.4f with %s", config.name, record["method"],
             record["candidates"], record["scoring"], record["best_score"], record["best_params"])
    return searcher.best_estimator_, record


def out_of_core_reason(config: ClassifierConfig, nbytes: int, memory_budget: int) -> str | None:
    """Why ``config`` trains out of core (``out_of_core: true``, or ``auto`` with features over the budget), or None."""
    if config.out_of_core is True:
        return f"classifiers.{config.name}.out_of_core is true"
    if config.out_of_core == "auto" and nbytes > memory_budget:
        return f"its train features take {format_bytes(nbytes)}, over train.memory_budget {format_bytes(memory_budget)}"
    return None


def train_classifier(
    features: str | Path,
    config: ClassifierConfig,
    out_dir: str | Path,
    cluster: str | None = None,
    memory_budget: int = 2 << 30,
    chunk_size: int = 64 << 20,
) -> dict[str, Any]:
    """Fit ``config``'s estimator on the train split (val split for early stopping) and save it to ``out_dir``.

    With a ``search`` section the hyper-parameters are chosen first by cross-validation on the train split, in
    parallel through joblib (on a Dask ``cluster`` when one is given). Out of core (see ``out_of_core_reason``)
    the train split streams from HDF5 in blocks of ``chunk_size`` bytes into ``partial_fit`` (``pipeline.classification.stream``).
    ``model.json`` records the fit time, the val accuracy, the search result and the per-epoch ``history`` (see
    ``training_history``).
    """
    configured_estimator(config)  # a wrong estimator or hyper-parameter fails before any file is read
    attrs = read_attrs(features)
    for layer in config.layers:
        check_one_of(f"classifiers.{config.name}.layer", layer, attrs["layers"])
    estimator = build_estimator(config, feature_shape(features, config.layers[0]))
    nbytes = split_nbytes(features, config.layers, "train")
    reason = out_of_core_reason(config, nbytes, memory_budget)
    log.info(
        "training %s (%s) on %s: %s of train features, %s", config.name, config.estimator, " + ".join(config.layers),
        format_bytes(nbytes), f"out of core ({reason})" if reason else "in memory",
    )
    started = time.perf_counter()
    searched = None
    if reason is not None:
        if config.augmented:
            raise ConfigError(
                f"classifiers.{config.name}.augmented trains in memory only, and this classifier trains out of core "
                f"({reason}): set augmented: false, or out_of_core: false with a larger train.memory_budget. "
                f"Received: classifiers.{config.name}.augmented=True"
            )
        check_streaming(config, reason)
        estimator = fit_out_of_core(
            estimator, features, config.layers, classes=np.arange(len(attrs["class_names"])), chunk_bytes=chunk_size,
            passes=config.passes,
        )
    else:
        train, groups = training_rows(features, config)
        if config.search is not None:
            estimator, searched = search(estimator, config, train, cluster, groups)
        else:
            fit(estimator, train, load_layers(features, config.layers, "val"))
        del train
    fit_seconds = time.perf_counter() - started
    val = predictions(estimator, features, config.layers, "val", len(attrs["class_names"]), chunk_size)
    val_accuracy = float(np.mean(val.predicted == val.y))
    log.info("%s on %s: fit in %.1f s, val accuracy %.4f", config.name, config.entry, fit_seconds, val_accuracy)
    metadata = model_metadata(
        config.name, config.estimator, config.params, config.layers, features, attrs, fit_seconds, val_accuracy,
        training_history(estimator), scale=config.scale, pool=config.pool, pca=config.pca, out_of_core=reason,
        augmented=config.augmented, search=searched,
    )
    save_model(estimator, out_dir, metadata)
    return metadata
