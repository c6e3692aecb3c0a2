"""Tests for the DVC entry points in stages/: a user error exits with status 2 and one clear message."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_params

REPO = Path(__file__).resolve().parents[1]


def stage(name, *args):
    return subprocess.run([sys.executable, f"stages/{name}.py", *args], cwd=REPO, capture_output=True, text=True)


def test_unknown_classifier_names_the_configured_ones():
    result = stage("train", "no_such_clf", "--features", "data/features.h5", "--models", "/tmp/unused", "--eval", "/tmp/unused")
    assert result.returncode == 2
    names = sorted(load_params(REPO / "params.yaml")["classifiers"])
    assert f"classifier must be one of {names}. Received: classifier='no_such_clf'" in result.stderr


def test_leaderboard_names_the_missing_evaluations(tmp_path):
    result = stage("leaderboard", "--eval", str(tmp_path / "eval"), "--out", str(tmp_path / "board"))
    assert result.returncode == 2
    params = load_params(REPO / "params.yaml")
    runs = len(params["classifiers"]) * len(params["train"]["layers"]) + len(params.get("finetune") or {})
    assert f"no metrics for {runs} of {runs} classifier x layer pairs" in result.stderr
    assert str(tmp_path / "eval" / "logreg" / "metrics" / "pixels.json") in result.stderr
    assert not (tmp_path / "board").exists()


def test_train_names_a_missing_features_file(tmp_path):
    args = ["--features", str(tmp_path / "none.h5"), "--models", str(tmp_path / "m"), "--eval", str(tmp_path / "e")]
    result = stage("train", "linear_svm", *args, "--reuse", str(tmp_path / "reuse"))
    assert result.returncode == 2
    assert f"features file not found: {tmp_path / 'none.h5'}" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_probe_names_a_missing_features_file(tmp_path):
    result = stage("probe", "--features", str(tmp_path / "none.h5"), "--out", str(tmp_path / "probe"))
    assert result.returncode == 2
    assert f"features file not found: {tmp_path / 'none.h5'}" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "probe").exists()


def test_missing_image_folder_is_named(tmp_path):
    result = stage("extract", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "f.h5"))
    assert result.returncode == 2
    assert f"image folder not found: {tmp_path / 'nowhere'}" in result.stderr
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.slow
def test_finetune_names_the_configured_entries_and_checks_the_head(tmp_path):
    args = ["--features", "data/features.h5", "--images", "data/images", "--head", str(tmp_path / "head"),
            "--out", str(tmp_path / "model"), "--eval", str(tmp_path / "eval")]
    result = stage("finetune", "no_such_run", *args)
    assert result.returncode == 2
    configured = sorted(load_params(REPO / "params.yaml").get("finetune") or {})
    assert f"finetune entry must be one of {configured}. Received: finetune entry='no_such_run'" in result.stderr
    if configured:  # a configured entry whose head is not where --head points
        result = stage("finetune", configured[0], *args)
        assert result.returncode == 2
        assert f"finetune.{configured[0]}.head: no trained head at {tmp_path / 'head'}" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "model").exists()
