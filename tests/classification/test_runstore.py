"""Tests for pipeline.classification.runstore: run keys of classifier x layer runs, the RunStore of kept runs (save,
restore, prune), and pipeline.store.content_digest, the per-layer data digest the keys are made of."""

from __future__ import annotations

import json
import os
import re
import shutil

import h5py
import numpy as np
import pytest

from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.runstore import RunStore, run_key, source_digest
from pipeline.config import ClassifierConfig, TrainConfig
from pipeline.store import content_digest
from pipeline.validation import ConfigError

HEX = re.compile(r"[0-9a-f]+")


def lr(layer="pixels", **overrides):
    """A logistic regression entry on ``layer``; ``overrides`` replace ClassifierConfig fields."""
    return ClassifierConfig(**{"name": "lr", "estimator": "logistic_regression", "layer": layer,
                               "params": {"C": 0.1}, **overrides})


def edited_copy(source, path, edit):
    """A byte copy of the features file ``source`` at ``path``, then ``edit(f)`` applied to it open in r+ mode."""
    shutil.copyfile(source, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def add_one(dataset_name):
    """An edit that adds 1 to the first value of ``dataset_name``."""
    def edit(f):
        dataset = f[dataset_name]
        index = (0,) * dataset.ndim
        dataset[index] = dataset[index] + 1
    return edit


def files_under(root):
    """Every file under ``root``: relative path -> bytes."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


# run_key


def test_run_key_is_stable_for_equal_inputs(features_file):
    train = TrainConfig(layers=("pixels",))
    key = run_key(features_file, lr(), train)
    assert len(key) == 32 and HEX.fullmatch(key)
    assert run_key(str(features_file), lr(), TrainConfig(layers=("pixels",))) == key  # equal, separately built inputs


def test_run_key_ignores_the_other_train_layers_entries_and_the_number_of_kept_runs(features_file):
    key = run_key(features_file, lr(), TrainConfig(layers=("pixels",)))
    assert run_key(features_file, lr(), TrainConfig(layers=("pixels", "conv_pw_5_relu"), reuse=1)) == key


def test_run_key_changes_with_every_setting_of_the_run(features_file):
    train = TrainConfig(layers=("pixels",))
    variants = {
        "base": (lr(), train),
        "C": (lr(params={"C": 0.2}), train),
        "a param added": (lr(params={"C": 0.1, "max_iter": 50}), train),
        "estimator": (lr(estimator="linear_svm"), train),
        "layer": (lr(layer="conv_pw_5_relu"), train),
        "concatenation": (lr(layer="pixels+conv_pw_5_relu"), train),
        "concatenation order": (lr(layer="conv_pw_5_relu+pixels"), train),
        "scale": (lr(scale=False), train),
        "pca": (lr(pca=4), train),
        "passes": (lr(passes=2), train),
        "search": (lr(search={"space": {"C": [0.1, 1.0]}, "cv": 2}), train),
        "memory_budget": (lr(), TrainConfig(layers=("pixels",), memory_budget=1 << 30)),
        "chunk_size": (lr(), TrainConfig(layers=("pixels",), chunk_size=1 << 20)),
    }
    keys = {what: run_key(features_file, config, t) for what, (config, t) in variants.items()}
    assert len(set(keys.values())) == len(keys), keys


def test_run_key_changes_with_the_data_of_its_layers_only(features_file, tmp_path):
    train = TrainConfig(layers=("pixels", "conv_pw_5_relu"))
    path = edited_copy(features_file, tmp_path / "features.h5", lambda f: None)
    before = {layer: run_key(path, lr(layer), train) for layer in ("pixels", "conv_pw_5_relu", "pixels+conv_pw_5_relu")}
    with h5py.File(path, "r+") as f:
        add_one("features/conv_pw_5_relu")(f)
    after = {layer: run_key(path, lr(layer), train) for layer in before}
    assert after["pixels"] == before["pixels"]
    assert after["conv_pw_5_relu"] != before["conv_pw_5_relu"]
    assert after["pixels+conv_pw_5_relu"] != before["pixels+conv_pw_5_relu"]


def test_source_digest_is_a_sha256_of_the_pipeline_source():
    digest = source_digest()
    assert len(digest) == 64 and HEX.fullmatch(digest)
    assert source_digest.__wrapped__() == source_digest.__wrapped__()  # uncached, twice: the same


# RunStore


@pytest.fixture
def finished(tmp_path):
    """A finished run's outputs, as the runner leaves them: a model folder and every evaluation file."""
    model_dir = tmp_path / "models" / "pixels"
    model_dir.mkdir(parents=True)
    (model_dir / "model.json").write_text(json.dumps({"fit_seconds": 0.123, "layer": "pixels"}))
    (model_dir / "model.joblib").write_bytes(bytes(range(256)))
    files = EvalFiles(tmp_path / "eval", "pixels")
    for name, path in files.named().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"contents of {name}".encode())
    return model_dir, files


def test_save_then_restore_gives_back_the_same_files(finished, tmp_path):
    model_dir, files = finished
    store = RunStore(tmp_path / "reuse" / "lr", keep=3)
    store.save("pixels", "k1", model_dir, files)
    assert sorted(p.name for p in (tmp_path / "reuse" / "lr" / "pixels").iterdir()) == ["k1"]
    restored_model, restored_files = tmp_path / "again" / "models" / "pixels", EvalFiles(tmp_path / "again" / "eval", "pixels")
    assert store.restore("pixels", "k1", restored_model, restored_files) is True
    assert files_under(restored_model) == files_under(model_dir)
    assert files_under(restored_files.root) == files_under(files.root)
    assert sorted(files_under(restored_files.root)) == [
        "confusion/pixels.json", "confusion/pixels.png", "learning_curve/pixels.json", "metrics/pixels.json",
        "per_class/pixels.json",
    ]


def test_restore_replaces_a_model_folder_with_stale_files(finished, tmp_path):
    model_dir, files = finished
    store = RunStore(tmp_path / "reuse", keep=3)
    store.save("pixels", "k1", model_dir, files)
    (model_dir / "model.keras").write_bytes(b"stale")
    (model_dir / "model.json").write_text("{}")
    assert store.restore("pixels", "k1", model_dir, files)
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.joblib", "model.json"]
    assert json.loads((model_dir / "model.json").read_text())["fit_seconds"] == 0.123


def test_restore_of_an_unknown_key_returns_false_and_writes_nothing(finished, tmp_path):
    model_dir, files = finished
    store = RunStore(tmp_path / "reuse", keep=3)
    store.save("pixels", "k1", model_dir, files)
    target_model, target_files = tmp_path / "out" / "model", EvalFiles(tmp_path / "out" / "eval", "pixels")
    assert store.restore("pixels", "k2", target_model, target_files) is False
    assert store.restore("conv_pw_5_relu", "k1", target_model, target_files) is False  # kept for another run
    assert not (tmp_path / "out").exists()


def test_keep_zero_saves_nothing_restores_nothing_and_removes_the_store(finished, tmp_path):
    model_dir, files = finished
    root = tmp_path / "reuse" / "lr"
    RunStore(root, keep=3).save("pixels", "k1", model_dir, files)
    off = RunStore(root, keep=0)
    assert off.restore("pixels", "k1", tmp_path / "out", EvalFiles(tmp_path / "out-eval", "pixels")) is False
    assert not (tmp_path / "out").exists()
    off.save("pixels", "k2", model_dir, files)
    assert not root.exists()
    assert (tmp_path / "reuse").is_dir()  # only this classifier's store goes


def test_save_keeps_the_keep_most_recently_used_keys(finished, tmp_path):
    model_dir, files = finished
    store = RunStore(tmp_path / "reuse", keep=2)
    folder = tmp_path / "reuse" / "pixels"
    for age, key in enumerate(["k1", "k2"]):
        store.save("pixels", key, model_dir, files)
        os.utime(folder / key, (1_000_000 + age, 1_000_000 + age))  # k1 older than k2
    store.save("pixels", "k3", model_dir, files)
    assert sorted(p.name for p in folder.iterdir()) == ["k2", "k3"]


def test_restore_makes_a_key_the_most_recently_used(finished, tmp_path):
    model_dir, files = finished
    store = RunStore(tmp_path / "reuse", keep=3)
    folder = tmp_path / "reuse" / "pixels"
    for age, key in enumerate(["k1", "k2", "k3"]):
        store.save("pixels", key, model_dir, files)
        os.utime(folder / key, (1_000_000 + age, 1_000_000 + age))  # k1 oldest, k3 newest
    assert store.restore("pixels", "k1", tmp_path / "out", EvalFiles(tmp_path / "out-eval", "pixels"))
    assert RunStore(tmp_path / "reuse", keep=1).prune("pixels") == ["k3", "k2"]  # most recently used first
    assert sorted(p.name for p in folder.iterdir()) == ["k1"]


def test_prune_removes_partial_copies_and_leaves_other_runs_alone(finished, tmp_path):
    model_dir, files = finished
    store = RunStore(tmp_path / "reuse", keep=1)
    store.save("pixels", "k1", model_dir, files)
    store.save("conv_pw_5_relu", "k1", model_dir, files)
    partial = tmp_path / "reuse" / "pixels" / ".k2.partial"
    (partial / "model").mkdir(parents=True)  # what a run killed while saving leaves
    assert store.prune("pixels") == []
    assert sorted(p.name for p in (tmp_path / "reuse" / "pixels").iterdir()) == ["k1"]
    assert sorted(p.name for p in (tmp_path / "reuse" / "conv_pw_5_relu").iterdir()) == ["k1"]
    assert store.prune("never_run") == []


# pipeline.store.content_digest


def test_content_digest_is_equal_for_a_copy_of_the_file(features_file, tmp_path):
    copy = edited_copy(features_file, tmp_path / "copy.h5", lambda f: None)
    digest = content_digest(features_file, ["pixels"])
    assert len(digest) == 64 and HEX.fullmatch(digest)
    assert content_digest(copy, ["pixels"]) == digest


def split_moved(f):
    """Move the first train row to the val split (its /split_code value)."""
    names = json.loads(f["split_code"].attrs["names"])
    codes = f["split_code"][()]
    row = int(np.flatnonzero(codes == names.index("train"))[0])
    f["split_code"][row] = names.index("val")


def class_renamed(f):
    names = json.loads(f.attrs["class_names"])
    f.attrs["class_names"] = json.dumps(["zero", *names[1:]])


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(add_one("labels"), id="a label"),
        pytest.param(split_moved, id="a row's split"),
        pytest.param(class_renamed, id="a class name"),
        pytest.param(add_one("features/pixels"), id="a value of the layer"),
    ],
)
def test_content_digest_changes_with_what_training_reads(features_file, tmp_path, edit):
    changed = edited_copy(features_file, tmp_path / "changed.h5", edit)
    assert content_digest(changed, ["pixels"]) != content_digest(features_file, ["pixels"])


def test_content_digest_of_a_concatenation_changes_with_either_layer_and_the_order(features_file, tmp_path):
    both = ["pixels", "conv_pw_5_relu"]
    digest = content_digest(features_file, both)
    assert content_digest(features_file, both[::-1]) != digest
    assert content_digest(features_file, ["pixels"]) != digest
    changed = edited_copy(features_file, tmp_path / "changed.h5", add_one("features/conv_pw_5_relu"))
    assert content_digest(changed, both) != digest


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(add_one("features/conv_pw_13_relu"), id="another layer"),
        pytest.param(lambda f: f.attrs.modify("image_root", "/elsewhere"), id="a provenance attribute"),
        pytest.param(lambda f: f["paths"].__setitem__(0, b"moved.png"), id="an image path"),
    ],
)
def test_content_digest_ignores_what_training_on_the_layers_does_not_read(features_file, tmp_path, edit):
    changed = edited_copy(features_file, tmp_path / "changed.h5", edit)
    assert content_digest(changed, ["pixels", "conv_pw_5_relu"]) == content_digest(features_file, ["pixels", "conv_pw_5_relu"])


def test_content_digest_counts_augmented_views_only_when_asked(views_file, features_file, tmp_path):
    with h5py.File(views_file, "r") as f:
        assert "pixels" in f["views"]  # the fixture stores views of the layer hashed below
    clean, with_views = content_digest(views_file, ["pixels"]), content_digest(views_file, ["pixels"], views=True)
    assert with_views != clean
    changed = edited_copy(views_file, tmp_path / "changed.h5", add_one("views/pixels"))
    assert content_digest(changed, ["pixels"]) == clean
    assert content_digest(changed, ["pixels"], views=True) != with_views
    assert content_digest(features_file, ["pixels"], views=True) == content_digest(features_file, ["pixels"])  # no views


def test_content_digest_of_an_unknown_layer_names_the_stored_ones(features_file):
    with pytest.raises(ConfigError, match=r"layer must be one of \['conv_pw_13_relu', 'conv_pw_5_relu', 'pixels'\]\. "
                                          r"Received: layer='conv_pw_7_relu'"):
        content_digest(features_file, ["pixels", "conv_pw_7_relu"])
