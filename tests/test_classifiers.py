"""Tests for pipeline.classifiers: the registry, hyper-parameter checks and the Keras head as a scikit-learn estimator."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.classifiers import ESTIMATORS, KerasHeadClassifier, build_estimator, final_estimator
from pipeline.config import ClassifierConfig
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
    with pytest.raises(ConfigError, match=r"unknown hyper-parameter classifiers.svm.params.c for linear_svm; did you mean 'C'\?.*Valid hyper-parameters: \[.*'C'"):
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
    with pytest.raises(ValueError, match=r"labels \[42\] were not seen in fit"):
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
