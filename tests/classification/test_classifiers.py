"""Tests for pipeline.classification.classifiers: the registry, hyper-parameter checks, the Keras head as a scikit-learn
estimator, and the linear SVM's row-space fit."""

import logging
import re

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from pipeline.classification.classifiers import (
    ESTIMATORS,
    KerasHeadClassifier,
    RowSpaceLinearSVC,
    SpatialPool,
    _block_batches,
    build_estimator,
    build_search,
    encode_labels,
    final_estimator,
    keras_verbosity,
    search_prefix,
)
from pipeline.config import ClassifierConfig
from pipeline.store import Split
from pipeline.validation import ConfigError


def blobs(n_per_class=40, labels=(3, 7, 9), n_features=12, seed=0):
    """Well separated Gaussian blobs with non-contiguous integer labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(len(labels), n_features))
    X = np.concatenate([c + rng.normal(size=(n_per_class, n_features)) for c in centres]).astype(np.float32)
    y = np.repeat(np.asarray(labels), n_per_class)
    return X, y


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_registered_estimator_builds_and_fits(name):
    estimator = build_estimator(ClassifierConfig(name="c", estimator=name, layer="l", params={}))
    if isinstance(final_estimator(estimator), KerasHeadClassifier):
        estimator.set_params(epochs=3, verbose=0)
    X, y = blobs()
    estimator.fit(X, y)
    assert set(estimator.predict(X)) <= {3, 7, 9}
    assert np.mean(estimator.predict(X) == y) > 0.9


def test_scale_wraps_sklearn_estimators_in_a_standard_scaler_pipeline():
    scaled = build_estimator(ClassifierConfig(name="c", estimator="logistic_regression", layer="l", params={"C": 0.5}))
    assert isinstance(scaled, Pipeline) and isinstance(scaled[0], StandardScaler)
    assert final_estimator(scaled).C == 0.5
    bare = build_estimator(ClassifierConfig(name="c", estimator="linear_svm", layer="l", scale=False))
    assert not isinstance(bare, Pipeline)


def test_scale_becomes_the_keras_heads_own_normalization():
    head = build_estimator(ClassifierConfig(name="c", estimator="keras_head", layer="l", scale=False, params={"units": 8}))
    assert isinstance(head, KerasHeadClassifier)
    assert head.normalize is False and head.units == 8


def test_unknown_estimator_lists_the_allowed_names():
    config = ClassifierConfig(name="mine", estimator="random_forrest", layer="l")
    with pytest.raises(ConfigError, match=r"classifiers.mine.estimator must be one of \[.*'logistic_regression'.*\]. Received"):
        build_estimator(config)


def test_unknown_hyper_parameter_lists_the_valid_ones():
    config = ClassifierConfig(name="svm", estimator="linear_svm", layer="l", params={"c": 1.0})
    with pytest.raises(ConfigError, match=(
        r"^classifiers.svm.params.c must be a hyper-parameter of linear_svm, one of \[.*'C'.*\]. "
        r"Received: classifiers.svm.params.c=1.0 Did you mean 'C'\?$"
    )):
        build_estimator(config)


def test_keras_head_is_a_scikit_learn_estimator():
    head = KerasHeadClassifier(units=16, epochs=20, batch_size=16, verbose=0)
    assert clone(head).get_params() == head.get_params()
    assert head.set_params(dropout=0.1).dropout == 0.1
    X, y = blobs()
    scores = cross_val_score(head, X, y, cv=2)
    assert scores.shape == (2,) and scores.min() > 0.8


def test_keras_head_probabilities_and_original_labels():
    X, y = blobs()
    head = KerasHeadClassifier(units=16, epochs=20, batch_size=16, verbose=0).fit(X, y)
    proba = head.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(head.classes_) == [3, 7, 9]
    assert np.mean(head.predict(X) == y) > 0.95


def test_keras_head_early_stopping_uses_the_validation_split():
    X, y = blobs(seed=1)
    X_val, y_val = blobs(n_per_class=10, seed=1)
    head = KerasHeadClassifier(units=16, epochs=40, patience=2, verbose=0).fit(X, y, validation_data=(X_val, y_val))
    assert "val_loss" in head.history_
    assert len(head.history_["loss"]) <= 40


class Blocks:
    """The block stream ``KerasHeadClassifier.fit_stream`` reads (``pipeline.classification.stream.BlockStream`` reads HDF5), over
    arrays in memory: blocks of ``size`` rows, in order for ``epoch`` None, else of rows shuffled for that epoch."""

    def __init__(self, X, y, size):
        self.X, self.y, self.size = X, y, size

    def __len__(self):
        return len(self.y)

    def __call__(self, epoch=None):
        order = np.arange(len(self.y)) if epoch is None else np.random.default_rng(epoch).permutation(len(self.y))
        for start in range(0, len(self.y), self.size):
            rows = order[start : start + self.size]
            yield Split(X=self.X[rows], y=self.y[rows])


def test_keras_head_fit_stream_normalizes_like_fit_and_learns():
    X, y = blobs()
    X[:, 0] = 0.0  # constant: its variance becomes 1 in both fits
    head = KerasHeadClassifier(units=16, epochs=10, batch_size=16, learning_rate=0.01, verbose=0)
    streamed = head.fit_stream(Blocks(X, y, 7), y)
    in_memory = KerasHeadClassifier(units=16, epochs=1, verbose=0).fit(X, y)
    for name in ("mean", "variance"):
        np.testing.assert_allclose(
            np.ravel(getattr(streamed.model_.get_layer("standardize"), name)),
            np.ravel(getattr(in_memory.model_.get_layer("standardize"), name)), rtol=1e-5, atol=1e-6,
        )
    assert np.ravel(streamed.model_.get_layer("standardize").variance)[0] == 1.0
    assert streamed.n_features_in_ == 12 and list(streamed.classes_) == [3, 7, 9]
    assert len(streamed.history_["loss"]) == 10 and "val_loss" not in streamed.history_
    assert np.mean(streamed.predict(X) == y) > 0.95


def test_keras_head_fit_stream_stops_early_on_the_streamed_validation_split():
    X, y = blobs(seed=1)
    X_val, y_val = blobs(n_per_class=10, seed=1)
    head = KerasHeadClassifier(units=16, epochs=40, patience=1, learning_rate=0.05, normalize=False, verbose=0)
    head.fit_stream(Blocks(X, y, 50), y, validation=Blocks(X_val, y_val, 8))
    assert len(head.history_["loss"]) == len(head.history_["val_loss"]) < 40
    assert head.n_features_in_ == 12 and "standardize" not in [layer.name for layer in head.model_.layers]


def test_streamed_batches_span_blocks_and_are_read_in_order():
    X, y = np.arange(30, dtype=np.float16).reshape(15, 2), np.arange(15)
    batches = _block_batches(Blocks(X, y, 4), 6, encode=lambda labels: labels * 10, shuffle=False)
    assert batches.num_batches == 3
    read = [batches[i] for i in range(3)]
    assert [len(batch_y) for _, batch_y in read] == [6, 6, 3]
    np.testing.assert_array_equal(np.concatenate([batch_X for batch_X, _ in read]), X)
    assert read[0][0].dtype == np.float32 and read[0][1].tolist() == [0, 10, 20, 30, 40, 50]
    np.testing.assert_array_equal(batches[0][0], X[:6])  # index 0 starts a new pass
    with pytest.raises(IndexError, match="read in order: expected 1, got 2"):
        batches[2]
    batches.close()


def test_keras_head_normalization_keeps_constant_features_finite():
    """ReLU features are often 0 on the whole train split; they must not be divided by ~0 for new rows."""
    X, y = blobs()
    X[:, 0] = 0.0
    head = KerasHeadClassifier(units=8, epochs=2, verbose=0).fit(X, y)
    probe = X[:5].copy()
    probe[:, 0] = 50.0
    assert np.isfinite(head.predict_proba(probe)).all()


def test_keras_head_rejects_validation_labels_unseen_in_training():
    X, y = blobs()
    with pytest.raises(ValueError, match=re.escape(
        "validation_data must hold only the classes the model was trained on, [3, 7, 9]. Received: labels [42]"
    )):
        KerasHeadClassifier(units=8, epochs=1, verbose=0).fit(X, y, validation_data=(X[:2], np.array([3, 42])))


def test_pool_scale_pca_steps_run_in_order_before_the_classifier():
    config = ClassifierConfig(name="c", estimator="logistic_regression", layer="l", pool="max", pca=2)
    estimator = build_estimator(config, feature_shape=(2, 2, 3))
    assert [name for name, _ in estimator.steps] == ["pool", "scale", "pca", "clf"]
    maps = np.arange(24, dtype=np.float32).reshape(2, 12)  # two 2x2 maps of 3 channels, flattened
    np.testing.assert_array_equal(estimator[0].fit(maps).transform(maps), [[9, 10, 11], [21, 22, 23]])


def test_pool_needs_an_unpooled_layer():
    config = ClassifierConfig(name="c", estimator="knn", layer="conv_pw_7_relu", pool="avg")
    with pytest.raises(ConfigError, match=r"classifiers.c.pool needs a layer stored unpooled .* shape \(512,\)"):
        build_estimator(config, feature_shape=(512,))


@pytest.mark.parametrize("pca", [0, 1.5, True, "10"])
def test_pca_must_be_components_or_a_variance_fraction(pca):
    with pytest.raises(ConfigError, match=r"classifiers.c.pca must be null, a number of components >= 1"):
        ClassifierConfig(name="c", estimator="knn", layer="l", pca=pca)


def test_keras_head_after_pooling_and_pca_keeps_its_own_normalization():
    config = ClassifierConfig(name="c", estimator="keras_head", layer="l", pool="avg", pca=4, params={"epochs": 2, "verbose": 0})
    estimator = build_estimator(config, feature_shape=(2, 2, 6))
    assert [name for name, _ in estimator.steps] == ["pool", "pca", "clf"] and estimator[-1].normalize


def test_labels_are_encoded_as_positions_in_the_sorted_classes():
    np.testing.assert_array_equal(encode_labels([9, 3, 7, 9], [3, 7, 9]), [2, 0, 1, 2])
    with pytest.raises(ConfigError, match=re.escape(
        "the val split must hold only the classes the model was trained on, [3, 7, 9]. Received: labels [1, 10]"
    )):
        encode_labels([10, 3, 1], [3, 7, 9], "the val split")


def test_auto_verbosity_is_a_progress_bar_on_a_terminal_only(monkeypatch):
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert keras_verbosity("auto") == 0 and keras_verbosity(2) == 2
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert keras_verbosity("auto") == 1
    with pytest.raises(ConfigError, match=re.escape("verbose must be one of [0, 1, 2, 'auto']. Received: verbose='yes'")):
        keras_verbosity("yes")


def test_keras_head_logs_every_epoch(caplog):
    X, y = blobs()
    with caplog.at_level(logging.INFO, logger="pipeline.classification.classifiers"):
        KerasHeadClassifier(units=8, epochs=2, verbose=0).fit(X, y, validation_data=(X, y))
    lines = [record.getMessage() for record in caplog.records if "epoch" in record.getMessage()]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "loss" in lines[0] and "val_accuracy" in lines[0]


def test_keras_head_refuses_bad_input_with_scikit_learns_errors():
    X, y = blobs()
    with pytest.raises(NotFittedError):
        KerasHeadClassifier().predict(X)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        KerasHeadClassifier(epochs=1, verbose=0).fit(X, y + 0.5)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        KerasHeadClassifier(epochs=1, verbose=0).fit(np.where(X > 8, np.nan, X), y)
    head = KerasHeadClassifier(units=8, epochs=1, verbose=0).fit(X, y)
    with pytest.raises(ValueError, match="X has 11 features, but KerasHeadClassifier is expecting 12 features"):
        head.predict(X[:, 1:])
    with pytest.raises(ValueError, match="X has 11 features, but KerasHeadClassifier is expecting 12 features"):
        KerasHeadClassifier(units=8, epochs=1, verbose=0).fit(X, y, validation_data=(X[:, 1:], y))


def test_spatial_pool_refuses_partial_maps_and_unknown_modes():
    with pytest.raises(ConfigError, match=re.escape(
        "X must hold whole maps of channels=3, a multiple of 3 features per row. Received: 10 features"
    )):
        SpatialPool(channels=3).fit(np.zeros((2, 10)))
    with pytest.raises(ConfigError, match=re.escape("mode must be one of ['avg', 'max']. Received: mode='sum'")):
        SpatialPool(channels=2, mode="sum").fit(np.zeros((2, 4)))


def test_search_space_names_take_the_pipelines_classifier_step():
    assert search_prefix(build_estimator(ClassifierConfig(name="c", estimator="knn", layer="l"))) == "clf__"
    assert search_prefix(build_estimator(ClassifierConfig(name="c", estimator="knn", layer="l", scale=False))) == ""


# --- the row-space fit of the linear SVM ---------------------------------------------------------------------------


def wide_rows(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n rows of d features around 3 class centres (float32, as features are stored), and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (rng.standard_normal((3, d))[y] + 2 * rng.standard_normal((n, d))).astype(np.float32), y


def test_row_space_linear_svc_is_the_fit_on_every_column():
    X, y = wide_rows(120, 600)
    train, test = slice(0, 80), slice(80, None)
    settings = {"C": 0.05, "tol": 1e-8, "max_iter": 100_000}
    plain = LinearSVC(**settings).fit(X[train], y[train])
    fast = RowSpaceLinearSVC(**settings).fit(X[train], y[train])
    assert fast.coef_.shape == plain.coef_.shape == (3, 600) and fast.n_features_in_ == 600
    np.testing.assert_allclose(fast.decision_function(X[test]), plain.decision_function(X[test]), atol=1e-4)
    np.testing.assert_array_equal(fast.predict(X[test]), plain.predict(X[test]))


@pytest.mark.parametrize("case", ["more rows than columns", "l1 penalty"])
def test_row_space_linear_svc_is_the_plain_fit_where_the_basis_does_not_apply(case):
    X, y = wide_rows(200, 50) if case == "more rows than columns" else wide_rows(40, 100)
    settings = {"C": 0.1, "random_state": 0} | ({"penalty": "l1", "dual": False} if case == "l1 penalty" else {})
    np.testing.assert_array_equal(RowSpaceLinearSVC(**settings).fit(X, y).coef_, LinearSVC(**settings).fit(X, y).coef_)


def test_the_linear_svm_entry_fits_in_the_row_space_also_in_a_search():
    config = ClassifierConfig(
        name="svm", estimator="linear_svm", layer="x", params={"max_iter": 5000},
        search={"method": "grid", "space": {"C": [0.01, 0.1]}, "cv": 2},
    )
    estimator = build_estimator(config, (400,))
    assert isinstance(final_estimator(estimator), RowSpaceLinearSVC)
    X, y = wide_rows(60, 400)
    searcher = build_search(estimator, config).fit(X, y)
    best = final_estimator(searcher.best_estimator_)
    assert isinstance(best, RowSpaceLinearSVC) and best.coef_.shape == (3, 400) and best.n_features_in_ == 400
    assert searcher.best_estimator_.score(X, y) > 0.9
