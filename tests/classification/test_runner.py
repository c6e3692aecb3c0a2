"""Tests for pipeline.classification.runner: one classifier trained and evaluated on every train.layers entry of a real
features file, and with a reuse folder, pairs whose inputs are unchanged copied back instead of trained."""

from __future__ import annotations

import json
import logging
import re
import shutil

import h5py
import pytest

from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.evaluate import evaluate_model
from pipeline.classification.models import read_metadata
from pipeline.classification.runner import run_classifier
from pipeline.config import TrainConfig
from pipeline.validation import ConfigError

CLASSIFIERS = {
    "lr": {"estimator": "logistic_regression", "params": {"C": 0.1}},
    "knn": {"estimator": "knn", "params": {"n_neighbors": 3}},
}
LAYERS = ("pixels", "conv_pw_5_relu", "pixels+conv_pw_5_relu")
COPIED = re.compile(r"^(\S+) on (\S+): its inputs are those of a kept run; model and evaluation copied back$")


def files_under(root):
    """Every file under ``root``: relative path -> bytes."""
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


class Project:
    """The folders of one DVC project's train stage: ``models/<name>``, ``eval/<name>`` and ``.train.reuse``."""

    def __init__(self, root, features):
        self.root, self.features = root, features
        self.reuse_dir = root / ".train.reuse"

    def models(self, name="lr"):
        return self.root / "models" / name

    def eval(self, name="lr"):
        return self.root / "eval" / name

    def run(self, caplog, layers=LAYERS, name="lr", classifiers=CLASSIFIERS, reuse=3, keep_store=True):
        """Run the stage as DVC does (its outputs removed first); returns (metrics, the runs copied back)."""
        shutil.rmtree(self.models(name), ignore_errors=True)
        shutil.rmtree(self.eval(name), ignore_errors=True)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pipeline.classification.runner"):
            results = run_classifier(
                self.features, classifiers, name, TrainConfig(layers=layers, reuse=reuse), self.models(name),
                self.eval(name), reuse_dir=self.reuse_dir if keep_store else None,
            )
        copied = [m.group(2) for r in caplog.records if (m := COPIED.match(r.getMessage())) and m.group(1) == name]
        return results, copied

    def kept(self, run, name="lr"):
        """The keys kept for ``run`` of classifier ``name``."""
        folder = self.reuse_dir / name / run
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    def outputs(self, name="lr"):
        return {"models": files_under(self.models(name)), "eval": files_under(self.eval(name))}


@pytest.fixture
def project(features_file, tmp_path):
    return Project(tmp_path, features_file)


@pytest.fixture
def own_features(features_file, tmp_path):
    """A project on its own byte copy of the features file, free to be changed."""
    copy = tmp_path / "features.h5"
    shutil.copyfile(features_file, copy)
    return Project(tmp_path, copy)


def layer_changed(path, dataset):
    """Add 1 to one value of ``dataset`` in the features file at ``path``."""
    with h5py.File(path, "r+") as f:
        index = (0,) * f[dataset].ndim
        f[dataset][index] = f[dataset][index] + 1


def test_every_entry_gets_a_model_and_every_evaluation_file(project, caplog):
    results, copied = project.run(caplog)
    assert copied == []
    assert sorted(results) == sorted(LAYERS)
    for entry in LAYERS:
        metadata = read_metadata(project.models() / entry)
        assert metadata["layer"] == entry and metadata["layers"] == entry.split("+")
        assert metadata["classifier"] == "lr"
        files = EvalFiles(project.eval(), entry)
        assert all(path.is_file() for path in files.named().values()), entry
        assert json.loads(files.metrics.read_text()) == results[entry]
        assert 0 <= results[entry]["accuracy"] <= 1
        assert len(project.kept(entry)) == 1  # kept for the next run
    assert sorted(p.name for p in project.models().iterdir()) == sorted(LAYERS)
    assert "lr: 3 layer(s) trained, 0 copied back unchanged (none)" in caplog.text


def test_a_second_run_with_the_same_inputs_copies_every_pair_back(project, caplog):
    first, _ = project.run(caplog)
    outputs = project.outputs()
    second, copied = project.run(caplog)
    assert sorted(copied) == sorted(LAYERS)
    assert project.outputs() == outputs  # model.json's fit_seconds too: nothing trained
    assert second == first
    assert "lr: 0 layer(s) trained, 3 copied back unchanged (pixels, conv_pw_5_relu, pixels+conv_pw_5_relu)" in caplog.text


def test_adding_a_layer_trains_only_the_new_one(project, caplog):
    project.run(caplog, layers=("pixels", "conv_pw_5_relu"))
    before = project.outputs()
    results, copied = project.run(caplog, layers=LAYERS)
    assert copied == ["pixels", "conv_pw_5_relu"]
    after = project.outputs()
    for kind, files in before.items():
        assert {path: after[kind][path] for path in files} == files  # the old pairs' files, byte for byte
    assert read_metadata(project.models() / "pixels+conv_pw_5_relu")["layer"] == "pixels+conv_pw_5_relu"
    assert json.loads(EvalFiles(project.eval(), "pixels+conv_pw_5_relu").metrics.read_text()) == results["pixels+conv_pw_5_relu"]


def with_params(**params):
    return {**CLASSIFIERS, "lr": {"estimator": "logistic_regression", "params": params}}


def test_a_changed_hyper_parameter_retrains_every_pair_and_keeps_both_runs(project, caplog):
    layers = ("pixels", "pixels+conv_pw_5_relu")
    project.run(caplog, layers=layers, classifiers=with_params(C=0.1))
    _, copied = project.run(caplog, layers=layers, classifiers=with_params(C=0.2))
    assert copied == []
    assert [len(project.kept(entry)) for entry in layers] == [2, 2]
    _, copied = project.run(caplog, layers=layers, classifiers=with_params(C=0.1))  # back to the first
    assert copied == list(layers)
    assert [len(project.kept(entry)) for entry in layers] == [2, 2]


def test_reuse_one_keeps_only_the_last_run(project, caplog):
    layers = ("pixels",)
    project.run(caplog, layers=layers, classifiers=with_params(C=0.1), reuse=1)
    project.run(caplog, layers=layers, classifiers=with_params(C=0.2), reuse=1)
    assert len(project.kept("pixels")) == 1
    _, copied = project.run(caplog, layers=layers, classifiers=with_params(C=0.1), reuse=1)
    assert copied == []  # C=0.1's run was dropped
    _, copied = project.run(caplog, layers=layers, classifiers=with_params(C=0.1), reuse=1)
    assert copied == ["pixels"]


def test_reuse_zero_never_copies_back_and_removes_the_classifiers_store(project, caplog):
    layers = ("pixels",)
    project.run(caplog, layers=layers, name="knn")
    project.run(caplog, layers=layers)
    assert project.kept("pixels") and project.kept("pixels", name="knn")
    outputs = project.outputs()
    _, copied = project.run(caplog, layers=layers, reuse=0)
    assert copied == []
    assert project.outputs()["models"]["pixels/model.json"] != outputs["models"]["pixels/model.json"]  # trained again
    assert not (project.reuse_dir / "lr").exists()
    assert len(project.kept("pixels", name="knn")) == 1  # another classifier's store stays


def test_changed_layer_data_retrains_that_layers_pairs_only(own_features, caplog):
    project = own_features
    project.run(caplog)
    before = project.outputs()
    layer_changed(project.features, "features/conv_pw_5_relu")
    _, copied = project.run(caplog)
    assert copied == ["pixels"]
    after = project.outputs()
    assert after["models"]["pixels/model.json"] == before["models"]["pixels/model.json"]
    for entry in ("conv_pw_5_relu", "pixels+conv_pw_5_relu"):
        assert after["models"][f"{entry}/model.json"] != before["models"][f"{entry}/model.json"]
        assert len(project.kept(entry)) == 2
    assert len(project.kept("pixels")) == 1


BAD_ENTRIES = {
    "unknown layer": (
        {}, "lr", ("pixels", "conv_pw_7_relu"),
        r"^train\.layers must be one of \['conv_pw_13_relu', 'conv_pw_5_relu', 'pixels'\]\. "
        r"Received: train\.layers='conv_pw_7_relu'$",
    ),
    "unknown layer in a concatenation": (
        {}, "lr", ("pixels", "pixels+conv_pw_7_relu"),
        r"^train\.layers must be layers of .* joined by '\+' \('conv_pw_7_relu' is not one of \['conv_pw_13_relu', "
        r"'conv_pw_5_relu', 'pixels'\]\)\. Received: train\.layers='pixels\+conv_pw_7_relu'$",
    ),
    "unknown classifier": (
        {}, "svm", ("pixels",), r"^classifier must be one of \['knn', 'lr'\]\. Received: classifier='svm'$",
    ),
    "unknown estimator": (
        {"bad": {"estimator": "logistic"}}, "bad", ("pixels",),
        r"^classifiers\.bad\.estimator must be one of \[.*'logistic_regression'.*\]\. "
        r"Received: classifiers\.bad\.estimator='logistic'",
    ),
    "unknown hyper-parameter": (
        {"bad": {"estimator": "logistic_regression", "params": {"c": 0.1}}}, "bad", ("pixels",),
        r"^classifiers\.bad\.params\.c must be a hyper-parameter of logistic_regression, one of \[.*\]\. "
        r"Received: classifiers\.bad\.params\.c=0\.1 Did you mean 'C'\?$",
    ),
}


@pytest.mark.parametrize(("extra", "name", "layers", "message"), BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_a_bad_entry_fails_before_any_model_folder_is_written(project, caplog, extra, name, layers, message):
    with pytest.raises(ConfigError, match=message):
        project.run(caplog, layers=layers, name=name, classifiers={**CLASSIFIERS, **extra})
    assert sorted(p.name for p in project.root.iterdir()) == []  # no models, no evaluation, no kept run


def test_without_a_reuse_folder_nothing_is_kept_or_copied(project, caplog):
    layers = ("pixels",)
    project.run(caplog, layers=layers, keep_store=False)
    first = project.outputs()
    _, copied = project.run(caplog, layers=layers, keep_store=False)
    assert copied == []
    assert "lr: 1 layer(s) trained, 0 copied back unchanged (none)" in caplog.text
    assert project.outputs()["models"]["pixels/model.json"] != first["models"]["pixels/model.json"]  # trained again
    assert sorted(p.name for p in project.root.iterdir()) == ["eval", "models"]


def test_a_pair_copied_back_records_the_provenance_of_the_features_file_it_is_for(own_features, caplog):
    project = own_features
    project.run(caplog, layers=("pixels",))
    with h5py.File(project.features, "r+") as f:  # same rows, another extraction config (as after a new extract layer)
        f.attrs["config_hash"] = "0" * 64
    project.run(caplog, layers=("pixels",))
    assert read_metadata(project.models() / "pixels")["features"]["config_hash"] == "0" * 64
    evaluate_model(project.models() / "pixels", project.features, EvalFiles(project.root / "check", "pixels"))
