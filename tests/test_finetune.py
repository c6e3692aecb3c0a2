"""Tests for pipeline.finetune: the real ImageNet MobileNet cut at a layer, joined to a trained Keras head, fine-tuned
on real digit images streamed from disk, saved, evaluated and compared with the head it started from."""

from __future__ import annotations

import json
import re
import shutil

import h5py
import numpy as np
import pytest

from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.evaluate import evaluate_model
from pipeline.classification.models import METADATA
from pipeline.classification.train import train_classifier
from pipeline.config import FINETUNED, AugmentConfig, ClassifierConfig, FinetuneConfig
from pipeline.extraction.backbone import load_backbone
from pipeline.finetune import (
    BACKBONE,
    ImageRows,
    build_model,
    check_images,
    evaluate_finetuned,
    finetune_model,
    fit,
    image_batches,
    image_rows,
    load_finetuned,
    load_head,
    run_finetune,
)
from pipeline.validation import ConfigError

pytestmark = pytest.mark.slow  # fine-tuning trains the backbone

LAYER = "conv_pw_5_relu"  # stored average-pooled (256 values) in the conftest features file, at 64x64
# MobileNet's block 5 is conv_dw_5, its BatchNormalization and ReLU, then conv_pw_5, its BatchNormalization and ReLU.
BLOCK5 = ["conv_dw_5", "conv_dw_5_bn", "conv_dw_5_relu", "conv_pw_5", "conv_pw_5_bn", "conv_pw_5_relu"]
TRAINED = ["conv_dw_5", "conv_dw_5_relu", "conv_pw_5", "conv_pw_5_relu"]  # BatchNormalization layers stay frozen
CONFIG = FinetuneConfig(
    name="top", head="head", layer=LAYER, trainable_from="conv_dw_5", learning_rate=1e-4, epochs=3, batch_size=16,
    patience=2,
)
# The head's val loss comes from the stored features; the fine-tuned model recomputes them in its graph (another
# order of float32 operations in the forward pass and the pooling), so the very same weights give a val loss that
# differs in the 7th digit (measured: 3e-7 relative). Comparisons with the head's val loss allow this much.
FLOAT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def head(features_file, tmp_path_factory):
    """A Keras head trained on the stored conv_pw_5_relu features: the starting point."""
    out = tmp_path_factory.mktemp("heads") / "head"
    params = {"units": 32, "epochs": 30, "patience": 5, "verbose": 0}
    train_classifier(features_file, ClassifierConfig(name="head", estimator="keras_head", layer=LAYER, params=params), out)
    return out


@pytest.fixture(scope="module")
def finetuned(features_file, digits_dir, head, tmp_path_factory):
    """The head and MobileNet's block 5 fine-tuned (stage function: fit, save, evaluate): (model dir, eval files, metrics)."""
    root = tmp_path_factory.mktemp("finetuned")
    metrics = run_finetune(features_file, digits_dir, head, CONFIG, root / "model", root / "eval", verbose=0)
    return root / "model", EvalFiles(root / "eval", CONFIG.name), metrics


@pytest.fixture(scope="module")
def saved(finetuned):
    model, metadata = load_finetuned(finetuned[0])
    return model, metadata


def head_val_loss(head_dir) -> float:
    return min(row["val_loss"] for row in json.loads((head_dir / METADATA).read_text())["history"])


def test_frozen_layers_are_bit_identical_and_batch_norm_keeps_its_statistics(saved, mobilenet, head):
    import keras

    model, _ = saved
    cut = model.get_layer(BACKBONE)
    batch_norms = [layer for layer in [*cut.layers, *model.layers] if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) == 1 + 2 * 5 + 1 and not any(layer.trainable for layer in batch_norms)  # inference mode
    frozen = [layer for layer in cut.layers if layer.weights and layer.name not in TRAINED]
    assert len(frozen) == 2 + 4 * 4 + 2  # conv1 and its bn, blocks 1-4 (dw, bn, pw, bn), block 5's two bn
    for layer in frozen:
        for after, before in zip(layer.get_weights(), mobilenet.model.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(after, before, err_msg=layer.name)
    start, _ = load_head(head, LAYER)
    np.testing.assert_array_equal(  # the head's BatchNormalization: gamma, beta, moving mean and variance
        np.concatenate([w.ravel() for w in model.get_layer("batch_norm").get_weights()]),
        np.concatenate([w.ravel() for w in start.get_layer("batch_norm").get_weights()]),
    )


def test_trainable_layers_changed(saved, mobilenet, head):
    model, metadata = saved
    assert metadata["trainable_layer_names"] == TRAINED
    assert metadata["best_epoch"] >= 1  # an epoch beat the start, so the kept weights are trained ones
    assert metadata["val_loss"] < metadata["initial_val_loss"]
    cut = model.get_layer(BACKBONE)
    for name in ("conv_dw_5", "conv_pw_5"):
        (after,), (before,) = cut.get_layer(name).get_weights(), mobilenet.model.get_layer(name).get_weights()
        assert not np.array_equal(after, before), name
        assert np.abs(after - before).max() < 0.05, f"{name}: a small learning rate adjusts, it does not wreck"
    start, _ = load_head(head, LAYER)
    for name in ("dense", "predictions"):
        assert not np.array_equal(model.get_layer(name).get_weights()[0], start.get_layer(name).get_weights()[0])


def test_the_loss_decreased_on_a_tiny_dataset(head, features_file, digits_dir):
    """16 train images, with the same 16 images as the val data: their loss in inference mode (no dropout, the
    head's 0.5 makes the training loss too noisy to compare) before training and after each epoch."""
    start, _ = load_head(head, LAYER)
    model, _ = build_model(load_backbone("mobilenet", "imagenet", (64, 64)), LAYER, "avg", start, "conv_dw_5")
    train = image_rows(features_file, digits_dir, "train")
    tiny = ImageRows(train.rows[:16], train.paths[:16], train.labels[:16])
    batches = image_batches(tiny, tiny.labels, (64, 64), "bilinear", "exact", 8, shuffle_seed=0)
    same = image_batches(tiny, tiny.labels, (64, 64), "bilinear", "exact", 8)
    config = FinetuneConfig(name="tiny", head="head", layer=LAYER, trainable_from="conv_dw_5", learning_rate=1e-4,
                            epochs=5, patience=5)
    fitted = fit(model, batches, same, config, verbose=0)
    losses = [row["val_loss"] for row in fitted.history]
    assert max(losses[1:]) < 0.5 * fitted.initial_val_loss, (fitted.initial_val_loss, losses)
    assert fitted.best_epoch >= 2 and fitted.val_loss == min(losses)


def test_starting_from_the_trained_head_beats_a_random_head(finetuned, head, features_file, digits_dir, tmp_path):
    import keras

    head_loss = head_val_loss(head)
    metadata = json.loads((finetuned[0] / METADATA).read_text())
    assert metadata["head"]["val_loss"] == head_loss
    # Before training, backbone + head is the head on its features: the same val loss.
    assert metadata["initial_val_loss"] == pytest.approx(head_loss, rel=FLOAT_TOLERANCE)
    assert metadata["history"][0]["val_loss"] <= head_loss * (1 + FLOAT_TOLERANCE)

    # The same model with a freshly initialised head (same layers and standardization, new random weights).
    trained, _ = load_head(head, LAYER)
    keras.utils.set_random_seed(1)
    fresh = keras.models.clone_model(trained)
    random_head = shutil.copytree(head, tmp_path / "random_head")
    fresh.save(random_head / "model.keras")
    record = finetune_model(features_file, digits_dir, random_head, CONFIG, tmp_path / "random", verbose=0)
    assert record["initial_val_loss"] > 1.2 * head_loss
    assert record["history"][0]["val_loss"] > head_loss * (1 + FLOAT_TOLERANCE)


def test_model_json_records_what_it_started_from_and_how_it_trained(finetuned, head, features_file):
    model_dir, _, _ = finetuned
    metadata = json.loads((model_dir / METADATA).read_text())
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.keras"]
    assert metadata["kind"] == FINETUNED and metadata["file"] == "model.keras" and metadata["format_version"] == 1
    assert metadata["head"]["classifier"] == "head" and metadata["head"]["model"] == str(head)
    assert metadata["layer"] == LAYER and metadata["pooling"] == "avg"
    assert metadata["classes"] == list(range(10)) and metadata["class_names"] == [str(i) for i in range(10)]
    with h5py.File(features_file) as f:
        assert metadata["features"]["config_hash"] == f.attrs["config_hash"]
        assert metadata["features"]["weights_sha256"] == f.attrs["weights_sha256"]
    assert metadata["params"]["learning_rate"] == 1e-4 and metadata["params"]["trainable_from"] == "conv_dw_5"
    history = metadata["history"]
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert all(set(row) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} for row in history)
    best = history[metadata["best_epoch"] - 1]
    assert metadata["val_loss"] == best["val_loss"] == min(row["val_loss"] for row in history)
    assert metadata["val_accuracy"] == best["val_accuracy"]
    assert all((row["val_accuracy"] * 16).is_integer() for row in history)  # exact fractions of the 16 val images
    assert metadata["fit_seconds"] > 0 and metadata["versions"]["keras"]


def test_evaluation_writes_what_the_evaluate_stage_writes(finetuned, head, features_file, digits_dir, saved, tmp_path):
    model_dir, files, metrics = finetuned
    head_files = EvalFiles(tmp_path / "head_eval", "head")
    head_metrics = evaluate_model(head, features_file, head_files)
    assert all(path.is_file() for path in [*files.named().values(), *head_files.named().values()])
    assert set(metrics) == set(head_metrics)
    assert json.loads(files.metrics.read_text()) == metrics
    model, metadata = saved
    rows = image_rows(features_file, digits_dir, "test")
    proba = model.predict(np.stack([np.asarray(image_from(path)) for path in rows.paths]), verbose=0)
    assert metrics["n"] == len(rows) == 15
    assert metrics["accuracy"] == pytest.approx(np.mean(np.argmax(proba, axis=1) == rows.labels))
    assert metrics["val_accuracy"] == metadata["val_accuracy"]
    assert json.loads(files.path("learning_curve").read_text()) == metadata["history"]
    confusion = json.loads(files.path("confusion").read_text())
    assert [row["actual"] for row in confusion] == [str(label) for label in rows.labels]
    assert files.confusion_png.read_bytes()[:4] == b"\x89PNG"
    again = evaluate_finetuned(model_dir, features_file, digits_dir, EvalFiles(tmp_path / "again", CONFIG.name))
    assert {k: v for k, v in again.items() if k != "predict_seconds"} == {
        k: v for k, v in metrics.items() if k != "predict_seconds"
    }


def image_from(path):
    from pipeline.extraction.images import decode_image

    return decode_image(path, (64, 64), "bilinear")


@pytest.fixture(scope="module")
def backbone():
    """A MobileNet of its own, for tests that freeze and unfreeze its layers (conftest's stays untouched)."""
    return load_backbone("mobilenet", "imagenet", (64, 64))


def test_trainable_layers_counts_from_the_end(backbone, head):
    trained, _ = load_head(head, LAYER)
    _, by_name = build_model(backbone, LAYER, "avg", trained, trainable_from="conv_dw_5")
    _, by_count = build_model(backbone, LAYER, "avg", trained, trainable_layers=len(BLOCK5))
    assert by_name == by_count == TRAINED
    _, last = build_model(backbone, LAYER, "avg", trained, trainable_layers=1)
    assert last == ["conv_pw_5_relu"]


def test_a_pyramid_pooled_layer_is_pooled_by_the_extract_stages_layer(backbone, head):
    """Pyramid pooling fine-tunes (the extract stage's own SpatialPool layer); a head trained on the average of the
    layer is refused for it by its width: 21 x 256 features."""
    trained, _ = load_head(head, LAYER)
    with pytest.raises(ConfigError, match=r"finetune.top: conv_pw_5_relu with pooling 'pyramid' gives 5376 features, "
                                          r"but the head takes 256"):
        build_model(backbone, LAYER, "pyramid", trained, trainable_layers=2, name="top")


def test_bad_trainable_settings_name_the_parameter(backbone, head):
    trained, _ = load_head(head, LAYER)
    with pytest.raises(ConfigError, match=re.escape(
        "finetune.top.trainable_from must be a layer of mobilenet up to conv_pw_5_relu (from the last: conv_pw_5_relu, "
    ) + r".*Received: finetune.top.trainable_from='conv_dw_6' Did you mean 'conv_dw_\d'\?$"):
        build_model(backbone, LAYER, "avg", trained, trainable_from="conv_dw_6", name="top")
    with pytest.raises(ConfigError, match=re.escape(
        "finetune.top.trainable_layers must be at most 35, the layers of mobilenet up to conv_pw_5_relu. "
        "Received: finetune.top.trainable_layers=36"
    )):
        build_model(backbone, LAYER, "avg", trained, trainable_layers=36, name="top")
    with pytest.raises(ConfigError, match=r"finetune.top: conv_pw_5_relu with pooling 'none' gives 16384 features, "
                                          r"but the head takes 256"):
        build_model(backbone, LAYER, "none", trained, trainable_layers=1, name="top")


def test_heads_that_cannot_be_fine_tuned_are_refused(features_file, head, tmp_path):
    models = tmp_path / "models"
    train_classifier(features_file, ClassifierConfig(name="lr", estimator="logistic_regression", layer=LAYER), models / "lr")
    with pytest.raises(ConfigError, match=r"finetune.top.head must be a keras_head model; .*lr holds 'logistic_regression'"):
        load_head(models / "lr", LAYER, "top")
    pca = ClassifierConfig(name="pca", estimator="keras_head", layer=LAYER, pca=8, params={"epochs": 1, "verbose": 0})
    train_classifier(features_file, pca, models / "pca")
    with pytest.raises(ConfigError, match=r"finetune.top.head: .*pca has steps before the Keras head \(pool None, pca 8\)"):
        load_head(models / "pca", LAYER, "top")
    with pytest.raises(ConfigError, match=r"finetune.top.layer is 'conv_pw_13_relu', but .*head was trained on \['conv_pw_5_relu'\]"):
        load_head(head, "conv_pw_13_relu", "top")
    with pytest.raises(ConfigError, match=r"finetune.top.head: no trained head at .*absent"):
        load_head(models / "absent", LAYER, "top")


def test_augmented_train_batches_are_seeded_per_image_and_epoch(features_file, digits_dir):
    rows = image_rows(features_file, digits_dir, "train")
    targets = rows.labels
    config = AugmentConfig(flip="horizontal", rotation=20, crop=0.8, seed=3)
    def batch(augmentation, epoch, shuffle_seed=None):
        dataset = image_batches(rows, targets, (64, 64), "bilinear", "exact", 8, augmentation, shuffle_seed)
        dataset.epoch = epoch
        assert len(dataset) == 9  # 69 images in batches of 8
        return dataset[0]

    clean, labels = batch(None, 0)
    np.testing.assert_array_equal(clean, np.stack([image_from(p) for p in rows.paths[:8]]))
    assert clean.dtype == np.uint8  # the model preprocesses on the device
    np.testing.assert_array_equal(labels, targets[:8])
    np.testing.assert_array_equal(batch(None, 5)[0], clean)  # no augmentation, no shuffle: every epoch the same
    first, again, second = batch(config, 0)[0], batch(config, 0)[0], batch(config, 1)[0]
    np.testing.assert_array_equal(first, again)  # repeatable
    assert not np.array_equal(first, clean) and not np.array_equal(first, second)  # augmented, anew each epoch
    for epoch in (0, 1):  # shuffled: a seeded permutation per epoch
        order = np.random.default_rng([0, epoch]).permutation(len(rows))[:8]
        np.testing.assert_array_equal(batch(None, epoch, shuffle_seed=0)[1], targets[order])
    assert not np.array_equal(batch(None, 0, shuffle_seed=0)[1], batch(None, 1, shuffle_seed=0)[1])


def test_changed_or_missing_images_are_refused(features_file, digits_dir, tmp_path):
    copy = shutil.copytree(digits_dir, tmp_path / "images")
    check_images(features_file, copy)  # the same files: accepted
    with h5py.File(features_file) as f:
        first = f["paths"].asstr()[0]
    (copy / first).write_bytes((copy / first).read_bytes() + b"\0")
    with pytest.raises(ConfigError, match=rf"1 of 100 images under .* changed since .* was extracted .*{re.escape(first)}"):
        check_images(features_file, copy)
    (copy / first).unlink()
    with pytest.raises(ConfigError, match=r"1 of 100 images of .* are not under "):
        check_images(features_file, copy)


def test_the_features_evaluation_refuses_a_fine_tuned_model(finetuned, features_file, tmp_path):
    with pytest.raises(ConfigError, match=r"is a fine-tuned model, which takes images, not features"):
        evaluate_model(finetuned[0], features_file, EvalFiles(tmp_path / "eval", "x"))
