"""Classifier registry: an estimator name from params.yaml -> a scikit-learn estimator, Keras dense head included."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping

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
from sklearn.utils.validation import check_is_fitted

from pipeline.config import ClassifierConfig
from pipeline.validation import ConfigError, check_one_of, did_you_mean

log = logging.getLogger(__name__)


class KerasHeadClassifier(ClassifierMixin, BaseEstimator):
    """A small Keras head on bottleneck features, as a scikit-learn classifier.

    Dense(units) -> BatchNormalization -> ReLU -> Dropout -> Dense(n_classes, softmax), trained with Adam on
    sparse categorical cross-entropy. With ``normalize`` the first layer is a ``keras.layers.Normalization``
    adapted to the training features, so the saved ``.keras`` model maps raw features to probabilities.
    ``fit(X, y, validation_data=(X_val, y_val))`` stops early on the validation loss and keeps the best weights.
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

    def _build(self, X: np.ndarray, n_classes: int):
        import keras

        keras.utils.set_random_seed(self.seed)
        inputs = keras.Input((X.shape[1],), name="features")
        x = inputs
        if self.normalize:
            # Like StandardScaler: constant features (common after ReLU) are centred, not divided by ~0.
            variance = X.var(axis=0)
            variance[variance < 1e-12] = 1.0
            x = keras.layers.Normalization(mean=X.mean(axis=0), variance=variance, name="standardize")(x)
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

    def _encode(self, y: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.classes_, y)
        if np.any(index >= len(self.classes_)) or np.any(self.classes_[np.minimum(index, len(self.classes_) - 1)] != y):
            raise ValueError(f"labels {sorted(set(np.asarray(y).tolist()) - set(self.classes_.tolist()))} were not seen in fit")
        return index

    def fit(self, X, y, validation_data: tuple[np.ndarray, np.ndarray] | None = None):
        import keras

        X = np.asarray(X, dtype=np.float32)
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        self.model_ = self._build(X, len(self.classes_))
        callbacks, validation = [], None
        if validation_data is not None:
            X_val, y_val = validation_data
            validation = (np.asarray(X_val, dtype=np.float32), self._encode(np.asarray(y_val)))
            callbacks.append(
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.patience, restore_best_weights=True)
            )
        history = self.model_.fit(
            X, self._encode(np.asarray(y)), epochs=self.epochs, batch_size=self.batch_size,
            validation_data=validation, callbacks=callbacks, verbose=self._verbosity(), shuffle=True,
        )
        self.history_ = history.history
        return self

    def _verbosity(self) -> int:
        """``auto``: a progress bar on a terminal, one line per epoch in logs."""
        if self.verbose == "auto":
            return 1 if sys.stdout.isatty() else 2
        return self.verbose

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict(np.asarray(X, dtype=np.float32), batch_size=1024, verbose=0)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


# Seeded where the estimator is random, so a re-run gives the same model.
ESTIMATORS: dict[str, Callable[[], BaseEstimator]] = {
    "logistic_regression": lambda: LogisticRegression(max_iter=1000),
    "linear_svm": lambda: LinearSVC(),
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


def check_hyper_parameters(section: str, name: str, keys, estimator: BaseEstimator) -> None:
    """Every key must be a hyper-parameter of ``estimator``; the error lists the valid ones."""
    valid = sorted(estimator.get_params(deep=False))
    for key in keys:
        if key not in valid:
            raise ConfigError(
                f"unknown hyper-parameter {section}.{key} for {name}{did_you_mean(key, valid) or '.'} "
                f"Valid hyper-parameters: {valid}"
            )


def build_search(estimator: BaseEstimator, config: ClassifierConfig):
    """GridSearchCV or RandomizedSearchCV over ``config.search.space`` with stratified, seeded folds; refits the best."""
    from scipy import stats
    from sklearn.model_selection import GridSearchCV, RandomizedSearchCV, StratifiedKFold

    search = config.search
    prefix = f"{estimator.steps[-1][0]}__" if isinstance(estimator, Pipeline) else ""
    distributions = {"uniform": lambda lo, hi: stats.uniform(lo, hi - lo), "loguniform": stats.loguniform, "randint": stats.randint}
    space = {}
    for key, values in search.space.items():
        if isinstance(values, Mapping):
            (kind, (low, high)), = values.items()
            space[prefix + key] = distributions[kind](low, high)
        else:
            space[prefix + key] = list(values)
    folds = StratifiedKFold(search.cv, shuffle=True, random_state=search.seed)
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
        if np.shape(X)[1] % self.channels:
            raise ValueError(f"{np.shape(X)[1]} features are not whole maps of {self.channels} channels")
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        maps = np.asarray(X, dtype=np.float32).reshape(len(X), -1, self.channels)
        return maps.mean(axis=1) if self.mode == "avg" else maps.max(axis=1)


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
                f"classifiers.{config.name}.pool needs a layer stored unpooled (extract pooling: none); "
                f"{config.layer} is stored with shape {feature_shape}"
            )
        steps.append(("pool", SpatialPool(channels=int(feature_shape[-1]), mode=config.pool)))
    if isinstance(estimator, KerasHeadClassifier):
        estimator.set_params(normalize=config.scale)
    elif config.scale:
        steps.append(("scale", StandardScaler()))
    if config.pca is not None:
        steps.append(("pca", PCA(n_components=config.pca, random_state=0)))
    return Pipeline([*steps, ("clf", estimator)]) if steps else estimator
