"""End to end: a real `dvc repro` of this repository's dvc.yaml in a temporary copy, on a tiny subset of the digits."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLASSIFIERS = ["logreg", "linear_svm", "dense_head"]


def run(args, cwd):
    """Run a command with this interpreter's environment first on PATH and the copy's own code importable."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def dvc(*args, cwd):
    return run([sys.executable, "-m", "dvc", *args], cwd)


def edit_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC copy of the committed project files, shrunk to 100 images at 64x64, after one `dvc repro`."""
    copy = tmp_path_factory.mktemp("clone") / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)

    def shrink(params):
        params["prepare"].update(image_size=16, per_class_limit=10)
        params["extract"].update(input_size=[64, 64], batch_size=32)
        params["classifiers"]["dense_head"]["params"].update(epochs=5)

    edit_params(copy, shrink)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    run(["git", "init", "-q"], copy)
    run([*git, "add", "-A"], copy)
    run([*git, "commit", "-qm", "copy"], copy)
    dvc("repro", cwd=copy)
    return copy


def test_repro_writes_the_features_file_layout(repo):
    with h5py.File(repo / "data" / "features.h5", "r") as f:
        assert f.attrs["complete"]
        assert sorted(f["features"]) == ["conv_pw_13_relu", "conv_pw_7_relu"]
        assert f["features/conv_pw_7_relu"].shape == (100, 512)
        assert f["features/conv_pw_13_relu"].shape == (100, 1024)
        assert f["features/conv_pw_7_relu"].chunks[1:] == (512,)
        assert f["labels"].shape == f["paths"].shape == f["split"].shape == (100,)
        assert sorted(set(f["split"].asstr()[()])) == ["test", "train", "val"]
        assert f["paths"].asstr()[0].startswith("train/0/")
        assert json.loads(f.attrs["input_size"]) == [64, 64]
        assert "MobileNetV1" in f.attrs["weights_source"]


def test_metrics_for_every_classifier(repo):
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo))
    metrics = next(iter(shown.values()))["data"]
    for name in CLASSIFIERS:
        values = metrics[f"data/eval/{name}/metrics.json"]["data"]
        assert 0.0 <= values["accuracy"] <= 1.0 and values["n"] == 15
        assert values["fit_seconds"] > 0 and values["predict_seconds"] > 0
        assert (repo / "data" / "models" / name / "model.json").is_file()
        # log_loss and top-3 accuracy only where the estimator has predict_proba (not LinearSVC)
        assert ("log_loss" in values and "top3_accuracy" in values) == (name != "linear_svm"), values


def test_plots_render_for_every_classifier(repo, tmp_path):
    # -o: the copies of image plots that `dvc plots show` writes go outside the repository (default: dvc_plots/)
    shown = json.loads(dvc("plots", "show", "--json", "-o", str(tmp_path), cwd=repo))
    assert "errors" not in shown, shown["errors"]
    plots = shown["data"]
    for name in CLASSIFIERS:
        [confusion] = plots[f"data/eval/{name}/confusion.json"]
        assert confusion["type"] == "vega" and len(confusion["content"]["data"]["values"]) == 15
        [image] = plots[f"data/eval/{name}/confusion.png"]
        assert image["type"] == "image" and Path(image["url"]).read_bytes()[:4] == b"\x89PNG"
        [per_class] = plots[f"data/eval/{name}/per_class.json"]
        assert per_class["type"] == "vega"
        assert sorted(row["class"] for row in per_class["content"]["data"]["values"]) == [str(i) for i in range(10)]
        assert per_class["content"]["encoding"]["x"]["field"] == "recall"
    # The Keras head draws train vs val loss per epoch (the custom template in .dvc/plots); without epochs, no plot.
    [curve] = plots["data/eval/dense_head/learning_curve.json"]
    assert curve["type"] == "vega"
    rows = curve["content"]["data"]["values"]
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1)) and 1 <= len(rows) <= 5
    assert all({"loss", "val_loss"} <= set(row) for row in rows)
    assert {"calculate": "datum['val_loss']", "as": "validation"} in curve["content"]["transform"]
    assert plots["data/eval/logreg/learning_curve.json"] == plots["data/eval/linear_svm/learning_curve.json"] == []


def test_generated_files_stay_out_of_git(repo):
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], repo).splitlines()
    changed = [line[3:] for line in status]
    # dvc.lock and the .gitignore entries DVC adds for the new outputs; no data, models or plots.
    assert all(path == "dvc.lock" or path.endswith(".gitignore") for path in changed), changed
    ignored = (repo / "data" / "eval" / "dense_head" / ".gitignore").read_text().split()
    assert {"/metrics.json", "/confusion.json", "/confusion.png", "/per_class.json", "/learning_curve.json"} <= set(ignored)


def test_editing_one_classifier_reruns_only_that_classifier(repo):
    features_hash = sha256(repo / "data" / "features.h5")
    edit_params(repo, lambda p: p["classifiers"]["linear_svm"]["params"].update(C=0.5))
    status = json.loads(dvc("status", "--json", cwd=repo))
    assert list(status) == ["train@linear_svm"]
    log = dvc("repro", cwd=repo)
    assert "Stage 'extract' didn't change, skipping" in log
    assert "Running stage 'train@linear_svm'" in log and "Running stage 'evaluate@linear_svm'" in log
    for name in ("logreg", "dense_head"):
        assert f"Stage 'train@{name}' didn't change, skipping" in log
        assert f"Running stage 'evaluate@{name}'" not in log
    assert sha256(repo / "data" / "features.h5") == features_hash


def test_adding_a_classifier_runs_only_the_new_one(repo):
    def add(params):
        params["classifiers"]["logreg_strong"] = {**params["classifiers"]["logreg"], "params": {"C": 10.0, "max_iter": 2000}}

    edit_params(repo, add)
    log = dvc("repro", cwd=repo)
    assert "Running stage 'train@logreg_strong'" in log and "Running stage 'evaluate@logreg_strong'" in log
    assert log.count("Running stage") == 2
    assert (repo / "data" / "eval" / "logreg_strong" / "metrics.json").is_file()
