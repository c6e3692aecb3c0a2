"""Tests for pipeline.classification.train: one configured classifier trained on a real features file, saved with provenance and history."""

import h5py
import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.classification.classifiers import KerasHeadClassifier, build_estimator, build_search
from pipeline.classification.models import FEATURE_KEYS, load_model
from pipeline.classification.train import train_classifier, training_history
from pipeline.config import ClassifierConfig
from pipeline.store import load_layers, load_split, split_nbytes
from pipeline.validation import ConfigError


def test_train_saves_a_model_that_records_its_features(features_file, tmp_path):
    config = ClassifierConfig(name="lr", estimator="logistic_regression", layer="conv_pw_5_relu", params={"C": 1.0})
    metadata = train_classifier(features_file, config, tmp_path / "lr")
    estimator, saved = load_model(tmp_path / "lr")
    with h5py.File(features_file, "r") as f:
        assert saved["features"]["config_hash"] == f.attrs["config_hash"]
    assert set(FEATURE_KEYS) == set(saved["features"])
    assert saved["class_names"] == [str(i) for i in range(10)]
    assert saved["layer"] == "conv_pw_5_relu" and saved["layers"] == ["conv_pw_5_relu"]
    assert 0 <= metadata["val_accuracy"] <= 1
    assert metadata["history"] == saved["history"] == []  # no epochs, no learning curve
    test = load_split(features_file, "conv_pw_5_relu", "test")
    assert estimator.predict(test.X).shape == test.y.shape


def test_keras_head_trains_on_unpooled_float16_maps(features_file, tmp_path):
    config = ClassifierConfig(
        name="head", estimator="keras_head", layer="conv_pw_13_relu",
        params={"units": 16, "epochs": 3, "patience": 10, "verbose": 0},
    )
    train_classifier(features_file, config, tmp_path / "head")
    estimator, saved = load_model(tmp_path / "head")
    test = load_split(features_file, "conv_pw_13_relu", "test", flatten=True)
    assert estimator.n_features_in_ == test.X.shape[1] == 2 * 2 * 1024
    assert saved["layers"] == ["conv_pw_13_relu"] and saved["pool"] is None
    history = saved["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(set(row) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} for row in history)
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["val_loss"]) and row["loss"] > 0 for row in history)


def test_keras_history_has_one_row_per_epoch_run_with_early_stopping(features_file):
    train = load_split(features_file, "conv_pw_5_relu", "train")
    val = load_split(features_file, "conv_pw_5_relu", "val")
    head = KerasHeadClassifier(units=8, epochs=40, patience=1, learning_rate=0.05, verbose=0)
    head.fit(train.X, train.y, validation_data=(val.X, val.y))
    history = training_history(head)
    assert len(history) == len(head.history_["loss"])
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert [row["loss"] for row in history] == pytest.approx(head.history_["loss"])
    assert [row["val_loss"] for row in history] == pytest.approx(head.history_["val_loss"])
    assert [row["val_accuracy"] for row in history] == pytest.approx(head.history_["val_accuracy"])


def test_mlp_records_its_training_loss_per_epoch(features_file, tmp_path):
    config = ClassifierConfig(
        name="mlp", estimator="mlp", layer="conv_pw_5_relu", params={"hidden_layer_sizes": [8], "max_iter": 4}
    )
    with pytest.warns(UserWarning, match="Maximum iterations"):  # ConvergenceWarning: 4 epochs on purpose
        metadata = train_classifier(features_file, config, tmp_path / "mlp")
    estimator, saved = load_model(tmp_path / "mlp")
    assert saved["history"] == metadata["history"]
    assert [row["epoch"] for row in saved["history"]] == [1, 2, 3, 4]
    assert [row["loss"] for row in saved["history"]] == pytest.approx(estimator[-1].loss_curve_)
    assert all(set(row) == {"epoch", "loss"} for row in saved["history"])  # no validation split inside the MLP


def test_unknown_layer_names_the_extracted_layers(features_file, tmp_path):
    config = ClassifierConfig(name="lr", estimator="logistic_regression", layer="conv_pw_7_relu")
    with pytest.raises(ConfigError, match=r"classifiers.lr.layer must be one of \['conv_pw_13_relu', 'conv_pw_5_relu', 'pixels'\]"):
        train_classifier(features_file, config, tmp_path / "lr")
    assert not (tmp_path / "lr").exists()


def test_keras_head_behind_pooling_and_pca_round_trips(features_file, tmp_path):
    config = ClassifierConfig(
        name="head", estimator="keras_head", layer="conv_pw_13_relu", pool="avg", pca=8,
        params={"units": 8, "epochs": 3, "verbose": 0},
    )
    trained = train_classifier(features_file, config, tmp_path / "head")
    assert len(trained["history"]) >= 1 and "val_loss" in trained["history"][0]
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["model.json", "model.keras", "preprocess.joblib"]
    estimator, _ = load_model(tmp_path / "head")
    test = load_split(features_file, "conv_pw_13_relu", "test", flatten=True)
    assert [name for name, _ in estimator.steps] == ["pool", "pca", "clf"]
    assert estimator.predict_proba(test.X).shape == (len(test.y), 10)


def test_concatenated_layers_train_evaluate_and_predict(features_file, tmp_path, manifest):
    from pipeline.classification.evalfiles import EvalFiles
    from pipeline.classification.evaluate import evaluate_model
    from pipeline.predict import predict_images

    config = ClassifierConfig(
        name="both", estimator="logistic_regression", layer=["conv_pw_5_relu", "conv_pw_13_relu"], params={"C": 0.1}
    )
    saved = train_classifier(features_file, config, tmp_path / "both")
    estimator, _ = load_model(tmp_path / "both")
    assert saved["layer"] == "conv_pw_5_relu+conv_pw_13_relu" and estimator.n_features_in_ == 256 + 2 * 2 * 1024
    metrics = evaluate_model(tmp_path / "both", features_file, EvalFiles(tmp_path / "eval", "both"))
    assert 0 <= metrics["accuracy"] <= 1
    test_rows = [i for i, split in enumerate(manifest.splits) if split == "test"][:3]
    predictions = predict_images(tmp_path / "both", [manifest.absolute(i) for i in test_rows], top_k=1)
    stored = load_layers(features_file, config.layers, "test")
    expected = estimator.predict(stored.X[:3])
    assert [p.label for p in predictions] == [str(label) for label in expected]


def test_grid_search_picks_by_cross_validation_and_records_it(features_file, tmp_path):
    config = ClassifierConfig.from_params({"s": {
        "estimator": "logistic_regression", "params": {"max_iter": 500},
        "search": {"method": "grid", "space": {"C": [0.001, 1.0]}, "cv": 2, "n_jobs": 2},
    }}, "s", "conv_pw_5_relu")
    saved = train_classifier(features_file, config, tmp_path / "s")
    record = saved["search"]
    assert record["candidates"] == 2 and record["best_params"]["C"] in (0.001, 1.0)
    estimator, _ = load_model(tmp_path / "s")
    assert record["best_params"]["C"] == estimator[-1].C and estimator[-1].max_iter == 500


def test_random_search_samples_distributions(features_file, tmp_path):
    config = ClassifierConfig.from_params({"s": {
        "estimator": "logistic_regression",
        "search": {"method": "random", "space": {"C": {"loguniform": [0.01, 10]}}, "n_iter": 3, "cv": 2},
    }}, "s", "conv_pw_5_relu")
    record = train_classifier(features_file, config, tmp_path / "s")["search"]
    assert record["candidates"] == 3 and 0.01 <= record["best_params"]["C"] <= 10


def test_search_space_keys_are_checked_before_reading_features(tmp_path):
    config = ClassifierConfig.from_params({"s": {
        "estimator": "linear_svm", "search": {"space": {"c": [1, 2]}},
    }}, "s", "l")
    with pytest.raises(ConfigError, match=(
        r"^classifiers.s.search.space.c must be a hyper-parameter of linear_svm, one of \[.*\]. "
        r"Received: classifiers.s.search.space.c=\[1, 2\] Did you mean 'C'\?$"
    )):
        train_classifier(tmp_path / "absent.h5", config, tmp_path / "s")


def test_out_of_core_when_asked_streams_and_records_why(features_file, tmp_path):
    config = ClassifierConfig(
        name="sgd", estimator="sgd", layer="conv_pw_5_relu", out_of_core=True, passes=3, params={"loss": "log_loss"}
    )
    saved = train_classifier(features_file, config, tmp_path / "sgd", chunk_size=8 * 256 * 4)  # 8-row blocks
    assert saved["out_of_core"] == "classifiers.sgd.out_of_core is true"
    assert [row["epoch"] for row in saved["history"]] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(saved["history"][0])
    assert saved["val_accuracy"] > 0.3  # 10 classes; chance is 0.1


def test_out_of_core_is_automatic_over_the_memory_budget(features_file, tmp_path):
    train_bytes = split_nbytes(features_file, ["conv_pw_5_relu"], "train")
    config = ClassifierConfig(name="sgd", estimator="sgd", layer="conv_pw_5_relu", passes=2)
    streamed = train_classifier(features_file, config, tmp_path / "small", memory_budget=train_bytes - 1, chunk_size=4096)
    assert streamed["out_of_core"].startswith("its train features take ")
    assert "over train.memory_budget" in streamed["out_of_core"]
    in_memory = train_classifier(features_file, config, tmp_path / "big", memory_budget=train_bytes, chunk_size=4096)
    assert in_memory["out_of_core"] is None and in_memory["history"] == []


def test_an_estimator_that_cannot_stream_is_refused_over_the_budget(features_file, tmp_path):
    config = ClassifierConfig(name="nn", estimator="knn", layer="conv_pw_5_relu")
    with pytest.raises(ConfigError, match=r"classifiers\.nn\.estimator must be one of \['keras_head', 'mlp', 'sgd'\] "
                                          r"to train out of core \(its train features take .* over train\.memory_budget"):
        train_classifier(features_file, config, tmp_path / "nn", memory_budget=1024, chunk_size=256)
    assert not (tmp_path / "nn").exists()


def test_augmented_trains_on_the_clean_rows_and_their_views(views_file, tmp_path, monkeypatch):
    from pipeline.classification import train as training

    seen, fit = [], training.fit

    def spy(estimator, train, val):  # the real fit, recording how many rows it was given
        seen.append((len(train.y), len(val.y)))
        return fit(estimator, train, val)

    monkeypatch.setattr(training, "fit", spy)
    config = ClassifierConfig(name="aug", estimator="logistic_regression", layer="pixels", augmented=True)
    metadata = train_classifier(views_file, config, tmp_path / "m")
    n_train, n_val = len(load_layers(views_file, ["pixels"], "train").y), len(load_layers(views_file, ["pixels"], "val").y)
    assert seen == [(3 * n_train, n_val)]  # clean + 2 views for training; val stays clean
    assert metadata["augmented"] is True


def test_augmented_search_keeps_an_images_views_in_one_fold(views_file, tmp_path):
    config = ClassifierConfig(
        name="aug", estimator="logistic_regression", layer="pixels", augmented=True,
        search={"space": {"C": [0.1, 1.0]}, "cv": 2},
    )
    assert isinstance(build_search(build_estimator(config), config).cv, StratifiedGroupKFold)
    assert train_classifier(views_file, config, tmp_path / "m")["search"]["candidates"] == 2


def test_augmented_without_views_names_the_setting(features_file, tmp_path):
    config = ClassifierConfig(name="aug", estimator="logistic_regression", layer="pixels", augmented=True)
    with pytest.raises(ConfigError, match=r"classifiers\.aug\.augmented is true, but .* has no augmented views"):
        train_classifier(features_file, config, tmp_path / "m")
