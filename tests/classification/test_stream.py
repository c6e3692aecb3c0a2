"""Tests for pipeline.classification.stream: blocks of real HDF5 features files, training from them, and its bounded peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import IncrementalPCA
from synthetic import LABELS, ROW, WIDE, write_features

from pipeline.classification.classifiers import KerasHeadClassifier, build_estimator
from pipeline.classification.models import load_model, save_model
from pipeline.classification.stream import check_streaming, fit_out_of_core
from pipeline.config import ClassifierConfig
from pipeline.store import load_layers, split_nbytes
from pipeline.validation import ConfigError

REPO = Path(__file__).resolve().parents[2]


# --- check_streaming ------------------------------------------------------------------------------------------

REASON = "its train features take 3.1 GiB, over train.memory_budget 2 GiB"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"estimator": "knn"}, r"classifiers.big.estimator must be one of \['keras_head', 'mlp', 'sgd'\] to train out "
                               r"of core \(its train features take 3.1 GiB, over train.memory_budget 2 GiB\). "
                               r"Received: classifiers.big.estimator='knn'"),
        ({"estimator": "sgd", "search": {"space": {"alpha": [1e-4, 1e-3]}}},
         r"classifiers.big.search must be absent to train out of core \(its train .*Received: classifiers.big.search.method='grid'"),
        ({"estimator": "sgd", "pca": 0.95},
         r"classifiers.big.pca must be null or a number of components \(IncrementalPCA\) .*Received: classifiers.big.pca=0.95"),
        ({"estimator": "mlp", "params": {"solver": "lbfgs"}},
         r"classifiers.big.params.solver must be one of \['adam', 'sgd'\] .*Received: classifiers.big.params.solver='lbfgs'"),
    ],
    ids=["knn", "search", "pca fraction", "mlp lbfgs"],
)
def test_check_streaming_refuses_what_cannot_learn_out_of_core(entry, message):
    with pytest.raises(ConfigError, match=message):
        check_streaming(ClassifierConfig(name="big", layer="wide", **entry), REASON)


@pytest.mark.parametrize("estimator", ["sgd", "mlp", "keras_head"])
def test_check_streaming_accepts_incremental_estimators(estimator):
    assert check_streaming(ClassifierConfig(name="big", estimator=estimator, layer="wide", pca=8), REASON) is None


# --- fit_out_of_core ------------------------------------------------------------------------------------------


def streamed(config: ClassifierConfig, path: Path, **kwargs):
    options = {"classes": LABELS, "chunk_bytes": 100 * ROW, "passes": 3, **kwargs}
    return fit_out_of_core(build_estimator(config, (2, 2, 8) if config.pool else None), path, config.layers, **options)


@pytest.mark.parametrize("estimator", ["sgd", "mlp"])
def test_partial_fit_classifiers_learn_and_record_a_history_per_pass(interleaved, estimator):
    params = {"hidden_layer_sizes": [16]} if estimator == "mlp" else {}
    config = ClassifierConfig(name="c", estimator=estimator, layer="wide", params=params)
    fitted = streamed(config, interleaved)
    test = load_layers(interleaved, ["wide"], "test")
    assert np.mean(fitted.predict(test.X) == test.y) > 0.9  # chance is 1/3
    history = fitted[-1].history_
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 3 for values in history.values())
    assert history["val_accuracy"][-1] > 0.9 and all(np.isfinite(history["val_loss"]))


def test_scale_and_pca_become_streamed_scaler_and_incremental_pca(interleaved):
    config = ClassifierConfig(name="c", estimator="sgd", layer=("maps", "wide"), pca=16)
    fitted = streamed(config, interleaved, chunk_bytes=10 * ROW, passes=2)  # 10-row blocks: merged for 16 components
    train = load_layers(interleaved, ["maps", "wide"], "train")
    assert [name for name, _ in fitted.steps] == ["scale", "pca", "clf"]
    np.testing.assert_allclose(fitted["scale"].mean_, train.X.mean(axis=0), rtol=1e-4, atol=1e-4)
    pca = fitted["pca"]
    assert isinstance(pca, IncrementalPCA) and pca.components_.shape == (16, 2 * 2 * 8 + WIDE)
    assert pca.n_samples_seen_ == len(train.y)  # no short tail left out
    test = load_layers(interleaved, ["maps", "wide"], "test")
    assert np.mean(fitted.predict(test.X) == test.y) > 0.9


def test_incremental_pca_needs_as_many_train_rows_as_components(interleaved):
    config = ClassifierConfig(name="c", estimator="sgd", layer="maps", pca=900)
    with pytest.raises(ValueError, match=r"IncrementalPCA with 900 components needs at least 900 rows; the train split"):
        streamed(config, interleaved)


def test_streamed_training_is_fixed_by_its_seed_and_survives_save_and_load(interleaved, tmp_path):
    config = ClassifierConfig(name="c", estimator="sgd", layer="wide")
    first, again, other = (streamed(config, interleaved, seed=seed, passes=2) for seed in (0, 0, 1))
    np.testing.assert_array_equal(first[-1].coef_, again[-1].coef_)
    assert first[-1].history_ == again[-1].history_
    assert not np.array_equal(first[-1].coef_, other[-1].coef_)
    save_model(first, tmp_path / "sgd", {"classifier": "c"})
    loaded, _ = load_model(tmp_path / "sgd")
    test = load_layers(interleaved, ["wide"], "test")
    np.testing.assert_array_equal(loaded.predict_proba(test.X), first.predict_proba(test.X))
    assert loaded[-1].history_ == first[-1].history_


def test_without_a_val_split_the_history_has_train_columns_only(interleaved):
    config = ClassifierConfig(name="c", estimator="sgd", layer="maps", params={"loss": "hinge"})
    fitted = streamed(config, interleaved, val_split=None, passes=2)
    assert list(fitted[-1].history_) == ["accuracy"]  # hinge loss: no probabilities, so no log loss either
    assert len(fitted[-1].history_["accuracy"]) == 2


def test_keras_head_streams_pooled_float16_maps(interleaved, tmp_path):
    config = ClassifierConfig(
        name="head", estimator="keras_head", layer="maps", pool="avg",
        params={"units": 16, "epochs": 12, "patience": 3, "learning_rate": 0.01, "batch_size": 32, "verbose": 0},
    )
    fitted = streamed(config, interleaved, chunk_bytes=50 * 2 * 2 * 8 * 2)  # 50-row blocks: batches span two
    head = fitted[-1]
    assert isinstance(head, KerasHeadClassifier) and [name for name, _ in fitted.steps] == ["pool", "clf"]
    history = head.history_
    assert 1 <= len(history["loss"]) == len(history["val_loss"]) <= 12
    test = load_layers(interleaved, ["maps"], "test")
    proba = fitted.predict_proba(test.X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(LABELS[proba.argmax(axis=1)] == test.y) > 0.8
    pooled = fitted["pool"].transform(load_layers(interleaved, ["maps"], "train").X)
    standardize = head.model_.get_layer("standardize")
    np.testing.assert_allclose(np.ravel(standardize.mean), pooled.mean(axis=0), atol=1e-5)
    expected_variance = pooled.var(axis=0)
    expected_variance[0] = 1.0  # channel 0 is constant: centred, not divided by ~0
    np.testing.assert_allclose(np.ravel(standardize.variance), expected_variance, rtol=1e-4)
    save_model(fitted, tmp_path / "head", {"classifier": "head"})
    loaded, _ = load_model(tmp_path / "head")
    np.testing.assert_allclose(loaded.predict_proba(test.X), proba, rtol=1e-5, atol=1e-6)


# --- peak memory ----------------------------------------------------------------------------------------------

BUDGET = 48 << 20
CHUNK_BYTES = 8 << 20
# ru_maxrss survives exec, so a child of this pytest process (which has TensorFlow loaded by now) would start at
# pytest's peak: the measurement runs in a grandchild, started by a small Python process.
LAUNCH = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
MEASURE = """
import json, resource, sys
import numpy as np
from pipeline.classification.classifiers import build_estimator
from pipeline.config import ClassifierConfig
from pipeline.store import load_layers, split_nbytes
from pipeline.classification.stream import fit_out_of_core

path, mode, chunk_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
estimator = build_estimator(ClassifierConfig(name="big", estimator="sgd", layer="wide"))
split_nbytes(path, ["wide"], "train")  # the HDF5 library's first reads page in its code
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "stream":
    fit_out_of_core(estimator, path, ["wide"], classes=np.array([2, 5, 7]), chunk_bytes=chunk_bytes, passes=2)
else:
    train = load_layers(path, ["wide"], "train")
    estimator.fit(train.X, train.y)
    del train
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
val = load_layers(path, ["wide"], "val")
print(json.dumps({"maxrss_before_kib": before, "maxrss_after_kib": after,
                  "val_accuracy": float(np.mean(estimator.predict(val.X) == val.y))}))
"""


def peak_growth(path: Path, mode: str) -> dict:
    """Fit SGD on the train split streamed or loaded, in a fresh process; its ru_maxrss before and after, in KiB."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", LAUNCH, sys.executable, "-c", MEASURE, str(path), mode, str(CHUNK_BYTES)],
        capture_output=True, text=True, env=env, cwd=REPO, check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["growth_bytes"] = (result["maxrss_after_kib"] - result["maxrss_before_kib"]) * 1024
    print(mode, json.dumps(result))
    return result


@pytest.mark.slow
def test_streaming_keeps_peak_memory_under_the_budget_while_loading_does_not(tmp_path):
    splits = np.random.default_rng(3).choice(["train", "val", "test"], 42_000, p=[0.9, 0.06, 0.04])
    path = write_features(tmp_path / "big.h5", splits)
    train_bytes = split_nbytes(path, ["wide"], "train")
    assert train_bytes > 3 * BUDGET  # about 155 MB of float32 train features, rows interleaved with val and test
    stream = peak_growth(path, "stream")
    assert stream["growth_bytes"] < BUDGET
    assert stream["val_accuracy"] > 0.9
    in_memory = peak_growth(path, "memory")  # the control: the same measurement sees the whole split loaded
    assert in_memory["growth_bytes"] > train_bytes
    assert in_memory["val_accuracy"] > 0.9
