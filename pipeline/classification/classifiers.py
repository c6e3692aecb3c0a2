"""Classifier registry: an estimator name from params.yaml -> a scikit-learn estimator, Keras dense head included."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from pipeline.classification.rowspace import RowSpace
from pipeline.config import ClassifierConfig
from pipeline.validation import ConfigError, check_int, check_one_of, did_you_mean, invalid

log = logging.getLogger(__name__)


class KerasHeadClassifier(ClassifierMixin, BaseEstimator):
    """A small Keras head on bottleneck features, as a scikit-learn classifier.

    Dense(units) -> BatchNormalization -> ReLU -> Dropout -> Dense(n_classes, softmax), trained with Adam on
    sparse categorical cross-entropy. With ``normalize`` the first layer is a ``keras.layers.Normalization``
    adapted to the training features, so the saved ``.keras`` model maps raw features to probabilities.
    ``fit(X, y, validation_data=(X_val, y_val))`` stops early on the validation loss and keeps the best weights;
    ``fit_stream`` trains the same way on blocks streamed from HDF5 (``pipeline.classification.stream``). Every epoch
    is logged; ``verbose`` is Keras's, ``"auto"`` as ``keras_verbosity`` defines it.
    """

    def __init__(
        self,
        units: int = 256,
        dropout: float = 0.5,
        batch_norm: bool = True,
        normalize: bool = True,
        learning_rate: float = 1e-3,
        epochs: int = 50,
        batch_size: int = 64,
        patience: int = 5,
        seed: int = 0,
        verbose: int | str = "auto",
    ):
        self.units = units
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.normalize = normalize
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.seed = seed
        self.verbose = verbose

    def _build(
        self, n_features: int, n_classes: int, mean: np.ndarray | None = None, variance: np.ndarray | None = None
    ):
        """The compiled model; ``mean`` and ``variance`` of the training features are needed with ``normalize``."""
        import keras

        keras.utils.set_random_seed(self.seed)
        inputs = keras.Input((n_features,), name="features")
        x = inputs
        if self.normalize:
            # Like StandardScaler: constant features (common after ReLU) are centred, not divided by ~0.
            variance = np.where(variance < 1e-12, 1.0, variance)
            x = keras.layers.Normalization(mean=mean, variance=variance, name="standardize")(x)
        x = keras.layers.Dense(self.units, use_bias=not self.batch_norm, name="dense")(x)
        if self.batch_norm:
            x = keras.layers.BatchNormalization(momentum=0.9, name="batch_norm")(x)
        x = keras.layers.Activation("relu", name="relu")(x)
        x = keras.layers.Dropout(self.dropout, name="dropout")(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
        model = keras.Model(inputs, outputs, name="dense_head")
        model.compile(
            optimizer=keras.optimizers.Adam(self.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    def _train(self, x, validation, **fit_kwargs):
        """``model_.fit`` for ``epochs``, each epoch logged, stopping early on ``validation`` (when given) with the best
        weights kept."""
        import keras

        callbacks = [epoch_logger(self.epochs)]
        if validation is not None:
            callbacks.append(
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience, restore_best_weights=True)
            )
        history = self.model_.fit(
            x, epochs=self.epochs, validation_data=validation, callbacks=callbacks,
            verbose=keras_verbosity(self.verbose), **fit_kwargs,
        )
        self.history_ = history.history

    def fit(self, X, y, validation_data: tuple[np.ndarray, np.ndarray] | None = None):
        """Fit on ``X`` (rows of features) and ``y`` (class labels); ``validation_data`` for early stopping."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        moments = (X.mean(axis=0), X.var(axis=0)) if self.normalize else ()
        self.model_ = self._build(self.n_features_in_, len(self.classes_), *moments)
        validation = None
        if validation_data is not None:
            X_val, y_val = validate_data(self, *validation_data, reset=False, dtype=np.float32)
            validation = (X_val, encode_labels(y_val, self.classes_, "validation_data"))
        self._train(X, validation, y=encode_labels(y, self.classes_), batch_size=self.batch_size, shuffle=True)
        return self

    def fit_stream(self, train, classes: np.ndarray, validation=None):
        """Fit on a block stream (``pipeline.classification.stream.BlockStream``) without holding the split in memory.

        ``train(epoch)`` yields blocks (``Split``) shuffled for that epoch, ``train(None)`` in file order, and
        ``len(train)`` is the row count; ``validation`` is the same for the val split, for early stopping. The
        normalization statistics come from one pass; batches of ``batch_size`` span block boundaries.
        """
        self.classes_ = np.unique(classes)
        if self.normalize:
            moments = fit_scaler(train(None))
            self.n_features_in_ = moments.n_features_in_
            self.model_ = self._build(self.n_features_in_, len(self.classes_), moments.mean_, moments.var_)
        else:
            with contextlib.closing(train(None)) as blocks:
                self.n_features_in_ = next(blocks).X.shape[1]
            self.model_ = self._build(self.n_features_in_, len(self.classes_))
        encode = functools.partial(encode_labels, classes=self.classes_)
        batches = _block_batches(train, self.batch_size, encode, shuffle=True)
        val_batches = None if validation is None else _block_batches(validation, self.batch_size, encode, shuffle=False)
        try:
            self._train(batches, val_batches, shuffle=False)
        finally:
            for dataset in (batches, val_batches):
                if dataset is not None:
                    dataset.close()
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, one column per ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return self.model_.predict(X, batch_size=1024, verbose=0)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)  # first: it checks that the model is fitted
        return self.classes_[np.argmax(proba, axis=1)]


def encode_labels(labels, classes, what: str = "y") -> np.ndarray:
    """Class labels as their positions in the sorted ``classes``: a classifier's output columns. A label not in
    ``classes`` is a ConfigError naming ``what``."""
    labels, classes = np.asarray(labels), np.asarray(classes)
    position = np.searchsorted(classes, labels)
    known = (position < len(classes)) & (classes[np.minimum(position, len(classes) - 1)] == labels)
    if not known.all():
        raise ConfigError(
            f"{what} must hold only the classes the model was trained on, {classes.tolist()}. "
            f"Received: labels {sorted(set(labels[~known].tolist()))}"
        )
    return position


def keras_verbosity(verbose: int | str) -> int:
    """Keras's ``verbose`` for ours: ``"auto"`` is Keras's progress bar when stdout is a terminal and nothing from
    Keras otherwise (logs get one line per epoch either way, see ``epoch_logger``); 0, 1 and 2 are Keras's own."""
    check_one_of("verbose", verbose, ["auto", 0, 1, 2])
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 0
    return verbose


def epoch_logger(epochs: int, name: str = "", logger: logging.Logger = log):
    """A Keras callback logging each epoch's metrics on one line to ``logger``: ``[name ]epoch 3/50: loss 0.1234, ...``."""
    import keras

    prefix = f"{name} " if name else ""
    return keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: logger.info(
            "%sepoch %d/%d: %s", prefix, epoch + 1, epochs, ", ".join(f"{key} {value:.4f}" for key, value in logs.items())
        )
    )


# StandardScaler.partial_fit makes float64 temporaries of about twice its input and IncrementalPCA's SVD several
# times its input, so out-of-core fitting feeds them parts of blocks of about this many bytes.
PART_BYTES = 1 << 20


def row_parts(X: np.ndarray, min_rows: int = 1) -> Iterator[np.ndarray]:
    """Consecutive row slices (views) of ``X`` of about ``PART_BYTES``, at least ``min_rows`` rows but the last."""
    rows = max(min_rows, PART_BYTES // max(1, X[:1].nbytes))
    for start in range(0, len(X), rows):
        yield X[start : start + rows]


def fit_scaler(blocks: Iterable, scaler: StandardScaler | None = None) -> StandardScaler:
    """``scaler`` (a new StandardScaler by default) fitted in one pass over ``blocks`` (``Split``), part by part."""
    scaler = StandardScaler() if scaler is None else scaler
    for block in blocks:
        for part in row_parts(block.X):
            scaler.partial_fit(part)
        del block, part  # not held while the next block is read
    return scaler


def _batches(stream, epoch: int | None, batch_size: int):
    """One pass over ``stream(epoch)`` as ``(X, y)`` batches of ``batch_size`` rows (the last one may be short);
    a batch may span two blocks."""
    X_parts, y_parts, pending = [], [], 0
    for block in stream(epoch):
        start = 0
        while start < len(block.y):
            stop = min(start + batch_size - pending, len(block.y))
            X_parts.append(block.X[start:stop])
            y_parts.append(block.y[start:stop])
            pending, start = pending + stop - start, stop
            if pending == batch_size:
                yield np.concatenate(X_parts), np.concatenate(y_parts)
                X_parts, y_parts, pending = [], [], 0
        if pending:  # copies, so that no view keeps the block
            X_parts, y_parts = [np.concatenate(X_parts)], [np.concatenate(y_parts)]
        del block  # not held while the next block is read
    if pending:
        yield np.concatenate(X_parts), np.concatenate(y_parts)


def _block_batches(stream, batch_size: int, encode: Callable[[np.ndarray], np.ndarray], shuffle: bool):
    """A ``keras.utils.PyDataset`` of batches read in order from ``stream`` (one worker).

    Keras requests each pass's batches in order from index 0, which starts a new pass over the blocks (with
    ``shuffle`` a new epoch, seeded by the count of passes started; Keras's peek at the first batches counts as
    one). ``close()`` ends the pass being read, closing its file.
    """
    import keras

    class BlockBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()
            self.passes = self.position = 0
            self.pass_batches = None

        @property
        def num_batches(self) -> int:
            return math.ceil(len(stream) / batch_size)

        def __getitem__(self, index: int):
            with self.lock:
                if index == 0:
                    self.close_pass()
                    self.pass_batches = _batches(stream, self.passes if shuffle else None, batch_size)
                    self.passes, self.position = self.passes + 1, 0
                if self.pass_batches is None or index != self.position:
                    raise IndexError(
                        f"batches of a block stream are read in order: expected {self.position}, got {index}"
                    )
                self.position += 1
                X, y = next(self.pass_batches)
                return X.astype(np.float32, copy=False), encode(y)

        def close_pass(self):
            if self.pass_batches is not None:
                self.pass_batches.close()
                self.pass_batches = None

        def close(self):
            with self.lock:
                self.close_pass()

    return BlockBatches()


class RowSpaceLinearSVC(LinearSVC):
    """scikit-learn's LinearSVC that, given fewer train rows than features, fits in the span of the rows
    (``RowSpace``) and maps its weights back: the same model as the fit on every column, within the solver's
    tolerance, taking the same inputs, in a fraction of the time (the default pyramid layer, 1,257 x 2,688: 5.3 s
    against 28.9 s, predictions identical). With an L1 penalty, or where the basis does not pay, the plain fit.
    (Not for LogisticRegression: lbfgs on the basis, whose columns differ in scale by orders of magnitude, measured
    slower than on the standardized columns.)"""

    def fit(self, X, y, sample_weight=None):
        space = RowSpace.of(X) if isinstance(X, np.ndarray) and X.ndim == 2 and self.penalty == "l2" else None
        if space is None:
            return super().fit(X, y, sample_weight=sample_weight)
        super().fit(space.project_train(), y, sample_weight=sample_weight)
        self.coef_ = space.lift(self.coef_)
        self.n_features_in_ = X.shape[1]
        return self


# Seeded where the estimator is random, so a re-run gives the same model.
ESTIMATORS: dict[str, Callable[[], BaseEstimator]] = {
    "logistic_regression": lambda: LogisticRegression(max_iter=1000),
    "linear_svm": lambda: RowSpaceLinearSVC(),
    "sgd": lambda: SGDClassifier(loss="log_loss", random_state=0),
    "knn": KNeighborsClassifier,
    "random_forest": lambda: RandomForestClassifier(random_state=0),
    "hist_gradient_boosting": lambda: HistGradientBoostingClassifier(random_state=0),
    "mlp": lambda: MLPClassifier(max_iter=500, random_state=0),
    "keras_head": KerasHeadClassifier,
}


def final_estimator(estimator: BaseEstimator) -> BaseEstimator:
    """The classifier itself, also when it sits at the end of a Pipeline."""
    return estimator[-1] if isinstance(estimator, Pipeline) else estimator


def check_hyper_parameters(section: str, name: str, params: Mapping[str, Any], estimator: BaseEstimator) -> None:
    """Every key of ``params`` (the mapping at ``section``) must be a hyper-parameter of ``estimator``; the error
    lists the valid ones."""
    valid = sorted(estimator.get_params(deep=False))
    for key, value in params.items():
        if key not in valid:
            what = f"a hyper-parameter of {name}, one of {valid}"
            raise invalid(f"{section}.{key}", value, what, did_you_mean(key, valid))


def search_prefix(estimator: BaseEstimator) -> str:
    """What the classifier's hyper-parameter names take in a search over ``estimator``: ``clf__`` at a Pipeline's end."""
    return f"{estimator.steps[-1][0]}__" if isinstance(estimator, Pipeline) else ""


def build_search(estimator: BaseEstimator, config: ClassifierConfig):
    """GridSearchCV or RandomizedSearchCV over ``config.search.space`` with stratified, seeded folds (grouped by
    image when training on augmented views); refits the best."""
    from scipy import stats
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, StratifiedGroupKFold, StratifiedKFold

    search = config.search
    prefix = search_prefix(estimator)
    distributions = {"uniform": lambda lo, hi: stats.uniform(lo, hi - lo), "loguniform": stats.loguniform, "randint": stats.randint}
    space = {}
    for key, values in search.space.items():
        if isinstance(values, Mapping):
            (kind, (low, high)), = values.items()
            space[prefix + key] = distributions[kind](low, high)
        else:
            space[prefix + key] = list(values)
    # With augmented views, the views of an image stay in its fold (fit with groups=image): no leak across folds.
    folds = (StratifiedGroupKFold if config.augmented else StratifiedKFold)(
        search.cv, shuffle=True, random_state=search.seed
    )
    common = {"scoring": search.scoring, "cv": folds, "n_jobs": search.n_jobs, "refit": True}
    if search.method == "grid":
        return GridSearchCV(estimator, space, **common)
    return RandomizedSearchCV(estimator, space, n_iter=search.n_iter, random_state=search.seed, **common)


class SpatialPool(TransformerMixin, BaseEstimator):
    """Global ``avg``/``max`` pooling of stored unpooled maps: flat rows of ``h*w*channels`` values -> ``channels``."""

    def __init__(self, channels: int = 1, mode: str = "avg"):
        self.channels = channels
        self.mode = mode

    def fit(self, X, y=None):
        check_int("channels", self.channels, minimum=1)
        check_one_of("mode", self.mode, ["avg", "max"])
        X = validate_data(self, X, dtype="numeric")
        if X.shape[1] % self.channels:
            raise ConfigError(
                f"X must hold whole maps of channels={self.channels}, a multiple of {self.channels} features per row. "
                f"Received: {X.shape[1]} features"
            )
        return self

    def transform(self, X) -> np.ndarray:
        """Float32 pooled rows, ``channels`` values each."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        maps = X.reshape(len(X), -1, self.channels)
        return maps.mean(axis=1) if self.mode == "avg" else maps.max(axis=1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # transform computes and returns float32
        return tags


def configured_estimator(config: ClassifierConfig) -> BaseEstimator:
    """The bare estimator with its params set; an unknown name or hyper-parameter (params or search) fails here."""
    check_one_of(f"classifiers.{config.name}.estimator", config.estimator, ESTIMATORS)
    estimator = ESTIMATORS[config.estimator]()
    check_hyper_parameters(f"classifiers.{config.name}.params", config.estimator, config.params, estimator)
    if config.search is not None:
        check_hyper_parameters(f"classifiers.{config.name}.search.space", config.estimator, config.search.space, estimator)
    return estimator.set_params(**config.params)


def build_estimator(config: ClassifierConfig, feature_shape: tuple[int, ...] | None = None) -> BaseEstimator:
    """The estimator for one params.yaml entry; unknown names and hyper-parameters fail with the allowed values.

    Optional steps run before the classifier, in this order: ``pool`` (needs ``feature_shape``, the stored
    per-image shape of an unpooled layer), ``scale`` (StandardScaler; inside the Keras head it is the head's own
    normalization layer) and ``pca``.
    """
    estimator = configured_estimator(config)
    steps = []
    if config.pool is not None:
        if feature_shape is None or len(feature_shape) < 2:
            raise ConfigError(
                f"classifiers.{config.name}.pool needs a layer stored unpooled (extract.pooling: none); "
                f"{config.layer} is stored with shape {feature_shape}. Received: classifiers.{config.name}.pool={config.pool!r}"
            )
        steps.append(("pool", SpatialPool(channels=int(feature_shape[-1]), mode=config.pool)))
    if isinstance(estimator, KerasHeadClassifier):
        estimator.set_params(normalize=config.scale)
    elif config.scale:
        steps.append(("scale", StandardScaler()))
    if config.pca is not None:
        steps.append(("pca", PCA(n_components=config.pca, random_state=0)))
    return Pipeline([*steps, ("clf", estimator)]) if steps else estimator
