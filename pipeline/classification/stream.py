"""Out-of-core training: stream a split's rows from HDF5 in chunks into estimators that learn incrementally."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from pipeline.classification.classifiers import (
    KerasHeadClassifier,
    SpatialPool,
    configured_estimator,
    final_estimator,
    fit_scaler,
    row_parts,
)
from pipeline.config import ClassifierConfig
from pipeline.store import Split, iter_chunks, open_features, selected_rows
from pipeline.validation import ConfigError, check_int

log = logging.getLogger(__name__)

# Names in classifiers.ESTIMATORS that can learn out of core (partial_fit, or the Keras head's fit_stream).
STREAMING_ESTIMATORS = ("sgd", "mlp", "keras_head")
# MLPClassifier solvers that have partial_fit.
STREAMING_SOLVERS = ("adam", "sgd")


@dataclass(frozen=True)
class BlockStream:
    """A split read in blocks (``iter_chunks``), through fitted preprocessing ``steps``; calling it starts a pass.

    ``stream(epoch)`` shuffles with the seed ``seed + epoch``; ``stream(None)`` keeps file order. ``len(stream)`` is
    the split's row count.
    """

    path: Path
    layers: tuple[str, ...]
    split: str | None
    chunk_bytes: int
    seed: int = 0
    steps: Pipeline | None = None
    n_rows: int = field(init=False)

    def __post_init__(self):
        with open_features(self.path) as f:
            object.__setattr__(self, "n_rows", len(selected_rows(f, self.split)))

    def __len__(self) -> int:
        return self.n_rows

    def __call__(self, epoch: int | None = None) -> Iterator[Split]:
        seed = None if epoch is None else self.seed + epoch
        for block in iter_chunks(self.path, self.layers, self.split, self.chunk_bytes, seed):
            if self.steps is not None:
                block = Split(X=self.steps.transform(block.X), y=block.y)  # drops the raw block
            yield block


def check_streaming(config: ClassifierConfig, reason: str) -> None:
    """A ConfigError unless ``config`` can train out of core; ``reason`` says why it has to."""
    name = f"classifiers.{config.name}"
    if config.estimator not in STREAMING_ESTIMATORS:
        raise ConfigError(
            f"{name}.estimator must be one of {sorted(STREAMING_ESTIMATORS)} to train out of core ({reason}). "
            f"Received: {name}.estimator={config.estimator!r}"
        )
    if config.search is not None:
        raise ConfigError(
            f"{name}.search must be absent to train out of core ({reason}): cross-validation refits in memory. "
            f"Received: {name}.search.method={config.search.method!r}"
        )
    if config.pca is not None and not isinstance(config.pca, int):
        raise ConfigError(
            f"{name}.pca must be null or a number of components (IncrementalPCA) to train out of core ({reason}). "
            f"Received: {name}.pca={config.pca!r}"
        )
    solver = configured_estimator(config).get_params().get("solver")
    if config.estimator == "mlp" and solver not in STREAMING_SOLVERS:
        raise ConfigError(
            f"{name}.params.solver must be one of {sorted(STREAMING_SOLVERS)} to train out of core ({reason}). "
            f"Received: {name}.params.solver={solver!r}"
        )


def _fit_step(step, stream: BlockStream):
    """Fit one preprocessing step on ``stream`` (the blocks through the steps before it); returns the fitted step."""
    if isinstance(step, SpatialPool):  # stateless: fitting checks the width
        with contextlib.closing(stream()) as blocks:
            return step.fit(next(blocks).X)
    if isinstance(step, StandardScaler):
        return fit_scaler(stream(), step)
    if isinstance(step, PCA):
        return _fit_incremental_pca(step, stream)
    raise ValueError(f"cannot fit {type(step).__name__} out of core; steps must be SpatialPool, StandardScaler or PCA")


def _fit_incremental_pca(pca: PCA, stream: BlockStream) -> IncrementalPCA:
    """An IncrementalPCA in place of ``pca``, fitted in one pass on parts of blocks (``row_parts``) of at least
    n_components rows: smaller blocks are merged."""
    n_components = pca.n_components
    if isinstance(n_components, bool) or not isinstance(n_components, int):
        raise ValueError(
            f"pca must be a number of components (IncrementalPCA) to train out of core. Received: pca={n_components!r}"
        )
    if len(stream) < n_components:
        raise ValueError(
            f"IncrementalPCA with {n_components} components needs at least {n_components} rows; "
            f"the {stream.split} split has {len(stream)}"
        )
    incremental = IncrementalPCA(n_components=n_components, whiten=pca.whiten)
    # Parts of blocks, each fitted once the next reaches n_components rows, so that a short tail joins the last one.
    ready, pending = None, []
    for block in stream():
        for part in row_parts(block.X, n_components):
            pending.append(part)
            if sum(map(len, pending)) >= n_components:
                if ready is not None:
                    incremental.partial_fit(ready)
                ready, pending = np.concatenate(pending), []
        pending = [np.concatenate(pending)] if pending else []  # copies, so that no view keeps the block
        del block, part  # not held while the next block is read
    incremental.partial_fit(np.concatenate([ready, *pending]))
    return incremental


@dataclass
class _Tally:
    """Summed log loss, correct predictions and rows seen, over blocks."""

    loss: float = 0.0
    correct: int = 0
    rows: int = 0

    def add(self, estimator, block: Split, classes: np.ndarray) -> None:
        if hasattr(estimator, "predict_proba"):
            proba = estimator.predict_proba(block.X)
            self.loss += log_loss(block.y, proba, labels=classes, normalize=False)
        # predict, not the argmax of predict_proba: SGD's one-vs-rest sigmoids saturate to tied 1.0s on wide margins
        self.correct += int(np.sum(estimator.predict(block.X) == block.y))
        self.rows += len(block.y)

    def scores(self, prefix: str = "") -> dict[str, float]:
        """Mean loss and accuracy (nan before any block)."""
        return {
            f"{prefix}loss": self.loss / self.rows if self.rows else math.nan,
            f"{prefix}accuracy": self.correct / self.rows if self.rows else math.nan,
        }


def _partial_fit_passes(
    estimator, train: BlockStream, val: BlockStream | None, classes: np.ndarray, passes: int
) -> None:
    """``passes`` shuffled passes of partial_fit, recording ``history_``: the train loss and accuracy of each pass
    measured on every block just before learning from it (progressive validation, so nan in a first pass of one
    block), and the val loss and accuracy after it. Loss keys only with predict_proba, val keys only with ``val``."""
    keys = [
        key for key in ("loss", "accuracy", "val_loss", "val_accuracy")
        if (hasattr(estimator, "predict_proba") or not key.endswith("loss"))
        and (val is not None or not key.startswith("val_"))
    ]
    history: dict[str, list[float]] = {key: [] for key in keys}
    for epoch in range(passes):
        seen = _Tally()
        with tqdm(total=len(train), unit="row", desc=f"pass {epoch + 1}/{passes}", leave=False, disable=None) as bar:
            for block in train(epoch):
                if hasattr(estimator, "classes_"):  # fitted on earlier blocks, not on this one
                    seen.add(estimator, block, classes)
                estimator.partial_fit(block.X, block.y, classes=classes)
                bar.update(len(block.y))
                del block  # not held while the next block is read
        scores = seen.scores()
        if val is not None:
            held_out = _Tally()
            for block in val():
                held_out.add(estimator, block, classes)
                del block
            scores.update(held_out.scores("val_"))
        for key in keys:
            history[key].append(scores[key])
        log.info("pass %d/%d: %s", epoch + 1, passes, ", ".join(f"{key} {scores[key]:.4f}" for key in keys))
    estimator.history_ = history


def fit_out_of_core(
    estimator,
    path: str | Path,
    layers: Sequence[str],
    *,
    classes: np.ndarray,
    chunk_bytes: int,
    passes: int,
    seed: int = 0,
    val_split: str | None = "val",
):
    """Fit ``estimator`` (from ``classifiers.build_estimator``) on the train split, streamed in blocks of
    ``chunk_bytes``; returns it fitted, with the same step names (a PCA step becomes an IncrementalPCA).

    Steps before the classifier are fitted in pipeline order, one pass each (SpatialPool on one block). A
    partial_fit classifier (SGD, MLP) then makes ``passes`` passes over shuffled blocks (``seed`` + pass index) and
    records ``history_`` with ``val_`` entries on ``val_split`` (streamed; None: none). A Keras head trains for its
    own ``epochs`` with early stopping on ``val_split`` (``KerasHeadClassifier.fit_stream``).
    """
    check_int("passes", passes, minimum=1)
    classes = np.unique(classes)
    head = final_estimator(estimator)
    if not isinstance(head, KerasHeadClassifier) and not hasattr(head, "partial_fit"):
        raise ValueError(f"{type(head).__name__} cannot learn out of core: it has no partial_fit")
    train = BlockStream(Path(path), tuple(layers), "train", chunk_bytes, seed)
    if isinstance(estimator, Pipeline):
        for index, (name, step) in enumerate(estimator.steps[:-1]):
            before = dataclasses.replace(train, steps=estimator[:index]) if index else train
            estimator.set_params(**{name: _fit_step(step, before)})
        train = dataclasses.replace(train, steps=estimator[:-1])
    val = None if val_split is None else dataclasses.replace(train, split=val_split)
    log.info("training %s out of core on %d train rows in blocks of at most %d bytes",
             type(head).__name__, len(train), chunk_bytes)
    if isinstance(head, KerasHeadClassifier):
        head.fit_stream(train, classes, validation=val)
    else:
        _partial_fit_passes(head, train, val, classes, passes)
    return estimator
