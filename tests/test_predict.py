"""Tests for pipeline.predict: images end to end through the model's own backbone, layer and classifier."""

import csv
import dataclasses
import json
import logging
import re
import shutil

import h5py
import numpy as np
import pytest

from pipeline.classification.models import METADATA, load_model
from pipeline.classification.train import train_classifier
from pipeline.cli import main
from pipeline.config import ClassifierConfig, FinetuneConfig
from pipeline.extraction.backbone import load_backbone
from pipeline.extraction.dataset import read_split_folders
from pipeline.extraction.extract import extract_features
from pipeline.extraction.images import iter_batches
from pipeline.finetune import build_model, finetune_model, load_finetuned, load_head
from pipeline.predict import (
    Prediction,
    expand_inputs,
    format_line,
    load_predictor,
    predict_images,
    write_csv,
)
from pipeline.validation import ConfigError

ROWS = slice(0, None, 7)  # 15 of the 100 images, from every split


def train(features_file, tmp_path_factory, name, estimator, layer, **params):
    out = tmp_path_factory.mktemp("models") / name
    train_classifier(features_file, ClassifierConfig(name=name, estimator=estimator, layer=layer, params=params), out)
    return out


@pytest.fixture(scope="module")
def lr_model(features_file, tmp_path_factory):
    return train(features_file, tmp_path_factory, "lr", "logistic_regression", "conv_pw_5_relu")


@pytest.fixture(scope="module")
def head_model(features_file, tmp_path_factory):
    """A Keras head on the unpooled float16 maps: the other pooling and storage dtype."""
    params = {"units": 16, "epochs": 3, "verbose": 0}
    return train(features_file, tmp_path_factory, "head", "keras_head", "conv_pw_13_relu", **params)


@pytest.fixture(scope="module")
def pixels_model(features_file, tmp_path_factory):
    """The raw-pixel baseline: no backbone layer at all, the downscaled decoded images."""
    return train(features_file, tmp_path_factory, "pixels", "logistic_regression", "pixels", max_iter=2000)


@pytest.fixture(scope="module")
def stored(features_file, digits_dir):
    """Absolute paths, labels and stored features (flattened, per layer) of some rows of the features file."""
    with h5py.File(features_file, "r") as f:
        paths = [digits_dir / p for p in f["paths"].asstr()[ROWS]]
        X = {name: f["features"][name][ROWS] for name in f["features"]}
        labels = f["labels"][ROWS]
    return paths, {name: x.reshape(len(x), -1) for name, x in X.items()}, labels


@pytest.fixture(scope="module")
def lr_predictor(lr_model):
    return load_predictor(lr_model)


def full_outputs(prediction: Prediction, class_names) -> np.ndarray:
    values = dict(prediction.top)
    return np.array([values[name] for name in class_names])


@pytest.mark.parametrize(
    ("model", "layer"), [("lr_model", "conv_pw_5_relu"), ("head_model", "conv_pw_13_relu"), ("pixels_model", "pixels")]
)
def test_predictions_equal_the_classifier_on_the_stored_features(request, stored, model, layer, caplog):
    model_dir = request.getfixturevalue(model)
    paths, X, _ = stored
    estimator, metadata = load_model(model_dir)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        predictions = predict_images(model_dir, paths, top_k=10)
    assert "other effective settings" not in caplog.text  # the recorded config hash is reproduced exactly
    names = metadata["class_names"]
    expected = estimator.predict_proba(X[layer])
    got = np.stack([full_outputs(p, names) for p in predictions])
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert [p.label for p in predictions] == [names[c] for c in estimator.predict(X[layer])]
    assert [p.path for p in predictions] == paths
    assert {p.measure for p in predictions} == {"probability"}


@pytest.mark.parametrize("decode", ["fast", "exact"])
def test_photos_are_decoded_as_the_features_file_decoded_them(tmp_path, extract_config, decode):
    # 1200 x 800 JPEGs at 64 x 64: fast decoding reduces them by 8, so the two modes give different features, and
    # prediction must follow the file's mode to give back the classifier's outputs on the stored rows.
    from PIL import Image
    from skimage import data

    for index, split in enumerate(("train", "train", "train", "val", "test")):
        for name in ("chelsea", "coffee"):
            photo = Image.fromarray(getattr(data, name)()[index * 10 :]).resize((1200, 800))
            (tmp_path / "photos" / split / name).mkdir(parents=True, exist_ok=True)
            photo.save(tmp_path / "photos" / split / name / f"{index}.jpg", quality=90)
    config = dataclasses.replace(extract_config, decode=decode, pixels=None)
    features = extract_features(read_split_folders(tmp_path / "photos"), config, tmp_path / "features.h5").path
    layer = "conv_pw_5_relu"
    train_classifier(features, ClassifierConfig(name="lr", estimator="logistic_regression", layer=layer), tmp_path / "lr")
    estimator, metadata = load_model(tmp_path / "lr")
    with h5py.File(features, "r") as f:
        paths = [tmp_path / "photos" / p for p in f["paths"].asstr()[()]]
        X = f["features"][layer][()]
        assert f.attrs["decode"] == decode
    predictions = predict_images(tmp_path / "lr", paths, top_k=2)
    got = np.stack([full_outputs(p, metadata["class_names"]) for p in predictions])
    np.testing.assert_allclose(got, estimator.predict_proba(X), atol=1e-5, rtol=0)


def test_features_equal_the_stored_rows(lr_predictor, stored):
    paths, X, _ = stored
    (batch,) = iter_batches(paths, lr_predictor.backbone.input_size, batch_size=len(paths))
    np.testing.assert_allclose(lr_predictor.features(batch.images), X["conv_pw_5_relu"], atol=1e-5, rtol=1e-5)


def test_a_pixels_model_needs_no_forward_pass_and_reproduces_its_features(pixels_model, stored):
    predictor = load_predictor(pixels_model)
    assert predictor.feature_model is None
    paths, X, _ = stored
    (batch,) = iter_batches(paths, predictor.backbone.input_size, batch_size=len(paths))
    np.testing.assert_array_equal(predictor.features(batch.images), X["pixels"])


def test_top_k_is_ordered_and_clipped_to_the_classes(lr_predictor, stored):
    paths = stored[0][:4]
    every = lr_predictor.predict(paths, top_k=10)
    three = lr_predictor.predict(paths, top_k=3)
    for full, top in zip(every, three):
        values = [value for _, value in full.top]
        assert values == sorted(values, reverse=True)
        assert top.top == full.top[:3]
        assert sorted(label for label, _ in full.top) == [str(i) for i in range(10)]
    assert [len(p.top) for p in lr_predictor.predict(paths, top_k=50)] == [10] * 4
    with pytest.raises(ConfigError, match=r"top_k must be an integer >= 1. Received: top_k=0"):
        lr_predictor.predict(paths, top_k=0)


def test_linear_svm_gives_decision_scores(features_file, tmp_path_factory, stored):
    model_dir = train(features_file, tmp_path_factory, "svm", "linear_svm", "conv_pw_5_relu", C=0.01)
    paths, X, _ = stored
    estimator, _ = load_model(model_dir)
    predictions = predict_images(model_dir, paths[:5], top_k=2)
    scores = estimator.decision_function(X["conv_pw_5_relu"][:5])
    assert [p.measure for p in predictions] == ["score"] * 5
    for prediction, row in zip(predictions, scores):
        best = np.argsort(-row)[:2]
        assert [label for label, _ in prediction.top] == [str(j) for j in best]
        np.testing.assert_allclose([value for _, value in prediction.top], row[best], atol=1e-5, rtol=0)
    assert format_line(predictions[0]).startswith(f"{paths[0]}: {predictions[0].label} (score ")


def test_folders_expand_to_their_images_sorted_and_recursive(digits_dir, tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.webp", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    assert expand_inputs([tmp_path]) == [tmp_path / "a.JPG", tmp_path / "b.png", tmp_path / "sub" / "c.webp"]
    explicit = tmp_path / "notes.txt"
    assert expand_inputs([explicit, digits_dir / "test"])[0] == explicit  # a file named explicitly is kept
    assert len(expand_inputs([digits_dir])) == 100
    with pytest.raises(ConfigError, match=r"image or folder not found: .*absent\.png"):
        expand_inputs([digits_dir / "test", tmp_path / "absent.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no images with extensions .* found under .*empty"):
        expand_inputs([tmp_path / "empty"])


def test_an_undecodable_image_is_reported_not_dropped(lr_predictor, stored, tmp_path, caplog):
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    good = stored[0][:2]
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        predictions = lr_predictor.predict([good[0], bad, good[1]], top_k=2)
    assert [p.path for p in predictions] == [good[0], bad, good[1]]
    assert predictions[1].top == () and predictions[1].label is None
    assert re.search(r"cannot decode image .*bad\.png: not an image \(text file\)", predictions[1].error)
    assert predictions[0].error is None and len(predictions[2].top) == 2
    assert "1 of 3 images could not be decoded" in caplog.text
    assert format_line(predictions[1]).startswith(f"{bad}: ERROR cannot decode image")


def test_csv_has_one_row_per_rank_and_one_per_failure(lr_predictor, stored, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    predictions = lr_predictor.predict([*stored[0][:2], bad], top_k=3)
    out = write_csv(predictions, tmp_path / "out" / "predictions.csv")
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "rank", "label", "probability", "error"]
    assert [(r["path"], r["rank"]) for r in rows[:3]] == [(str(stored[0][0]), str(k)) for k in (1, 2, 3)]
    assert rows[0]["label"] == predictions[0].label
    assert float(rows[0]["probability"]) == pytest.approx(predictions[0].top[0][1], rel=1e-5)
    assert rows[-1]["path"] == str(bad) and rows[-1]["rank"] == "" and "empty file" in rows[-1]["error"]
    assert len(rows) == 7
    assert not list(out.parent.glob(".*partial"))


def edited_copy(model_dir, tmp_path, edit):
    """A copy of ``model_dir`` whose model.json was changed by ``edit(metadata)``."""
    copy = shutil.copytree(model_dir, tmp_path / "model")
    path = copy / METADATA
    metadata = json.loads(path.read_text())
    edit(metadata)
    path.write_text(json.dumps(metadata))
    return copy


def test_refuses_a_folder_that_is_not_a_model(tmp_path, stored):
    with pytest.raises(ConfigError, match=r"is not a model saved by this pipeline \(no model.json\)"):
        predict_images(tmp_path, stored[0][:1])
    with pytest.raises(ConfigError, match=r"model directory not found: .*absent"):
        predict_images(tmp_path / "absent", stored[0][:1])


def test_refuses_a_model_without_its_extract_config(lr_model, tmp_path, stored):
    copy = edited_copy(lr_model, tmp_path, lambda m: m["features"].pop("extract_config"))
    with pytest.raises(ConfigError, match=r"does not record the extract config of its features"):
        predict_images(copy, stored[0][:1])


def test_refuses_when_the_backbone_weights_changed(lr_model, mobilenet, tmp_path, stored):
    copy = edited_copy(lr_model, tmp_path, lambda m: m["features"].update(weights_sha256="0" * 64))
    message = (
        f"model {copy} was trained on features from mobilenet with weights sha256 {'0' * 64}, "
        f"but the backbone now has {mobilenet.weights_sha256}"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        predict_images(copy, stored[0][:1])


def test_refuses_a_layer_the_backbone_lacks(lr_model, tmp_path, stored):
    def rename(metadata):
        layers = metadata["features"]["extract_config"]["layers"]
        layers["conv_pw_99_relu"] = layers.pop("conv_pw_5_relu")
        metadata["layer"] = "conv_pw_99_relu"
        metadata["layers"] = ["conv_pw_99_relu"]

    copy = edited_copy(lr_model, tmp_path, rename)
    with pytest.raises(ConfigError, match=r"^the layers of .*model\.json must be layer names of mobilenet .*'conv_pw_99_relu' is not one"):
        predict_images(copy, stored[0][:1])


def test_refuses_a_feature_width_the_classifier_was_not_fitted_on(lr_model, tmp_path, stored):
    def unpool(metadata):
        metadata["features"]["extract_config"]["layers"]["conv_pw_5_relu"]["pooling"] = "none"

    copy = edited_copy(lr_model, tmp_path, unpool)
    message = r"expects 256 features, but 'conv_pw_5_relu' \(none pooling: \(8, 8, 256\)\) give 16384"
    with pytest.raises(ConfigError, match=message):
        predict_images(copy, stored[0][:1])


# --- fine-tuned models (pipeline.finetune): one Keras model from images to probabilities ----------------------------


@pytest.fixture(scope="module")
def finetuned_model(features_file, digits_dir, head_model, tmp_path_factory):
    """The head on the unpooled conv_pw_13_relu maps, fine-tuned one epoch with the last 3 backbone layers."""
    out = tmp_path_factory.mktemp("models") / "finetuned"
    config = FinetuneConfig(
        name="top", head="head", layer="conv_pw_13_relu", trainable_layers=3, epochs=1, batch_size=16,
        learning_rate=1e-4,
    )
    finetune_model(features_file, digits_dir, head_model, config, out, verbose=0)
    return out


@pytest.mark.slow
def test_a_fine_tuned_model_predicts_end_to_end(finetuned_model, stored, capsys):

    paths = stored[0]
    model, metadata = load_finetuned(finetuned_model)
    predictions = predict_images(finetuned_model, paths, top_k=10)
    (batch,) = iter_batches(paths, (64, 64), batch_size=len(paths))
    expected = model.predict(batch.images, verbose=0)
    names = metadata["class_names"]
    np.testing.assert_allclose(np.stack([full_outputs(p, names) for p in predictions]), expected, atol=1e-5, rtol=0)
    assert [p.label for p in predictions] == [names[j] for j in expected.argmax(axis=1)]
    assert [p.path for p in predictions] == paths and {p.measure for p in predictions} == {"probability"}
    two = predict_images(finetuned_model, paths[:1], top_k=2)  # alone in its batch: other float rounding
    assert [label for label, _ in two[0].top] == [label for label, _ in predictions[0].top[:2]]
    np.testing.assert_allclose([v for _, v in two[0].top], [v for _, v in predictions[0].top[:2]], atol=1e-5)

    main(["predict", "--model", str(finetuned_model), "--top-k", "2", str(paths[0])])  # the command line
    line = capsys.readouterr().out.strip()
    assert line == format_line(two[0])
    assert re.fullmatch(rf"{re.escape(str(paths[0]))}: \d \([01]\.\d\d\), \d \([01]\.\d\d\)", line)


def test_fine_tuning_an_unpooled_layer_starts_from_the_head_on_the_stored_maps(head_model, stored):
    """Before any training, backbone + Flatten + head equals the head on the stored (float16) maps: the maps are
    flattened in the order they were stored in."""

    paths, X, _ = stored
    estimator, _ = load_model(head_model)
    head, _ = load_head(head_model, "conv_pw_13_relu")
    model, _ = build_model(
        load_backbone("mobilenet", "imagenet", (64, 64)), "conv_pw_13_relu", "none", head, trainable_layers=3
    )
    (batch,) = iter_batches(paths, (64, 64), batch_size=len(paths))
    got = model.predict(batch.images, verbose=0)
    np.testing.assert_allclose(got, estimator.predict_proba(X["conv_pw_13_relu"]), atol=2e-3, rtol=0)
