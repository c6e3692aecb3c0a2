"""End to end: sharing through a DVC remote (README, "Share features and models with your team"): Alice runs the
pipeline and pushes to a local-directory remote; a teammate's fresh `git clone` pulls and trains without running the CNN."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from dvc_project import GIT, REPO, copy_project, dvc, edit_params, read_json, run, sha256, stages_run, tiny_data

pytestmark = pytest.mark.slow  # real `dvc repro` runs: minutes

TEAM_LAYER = "conv_pw_7_relu"
TEAM_CLASSIFIERS = ["linear_svm", "sgd_stream"]  # the team's tiny matrix: 2 classifiers x 1 layer
TRIED_C = 0.1  # a linear_svm C that Alice ran and pushed, then went back from: only the run-cache records it
NEW_C = 1.0  # a linear_svm C nobody has run


class Team(NamedTuple):
    alice: Path  # her clone: committed dvc.lock and .dvc/config (remote "team" as default), outputs pushed
    remote: Path  # the DVC remote, a plain directory
    tried: str  # sha256 of the model.json Alice trained with C=TRIED_C (it records fit_seconds: a re-run differs)


def set_svm_c(repo: Path, value: float) -> None:
    edit_params(repo, lambda p: p["classifiers"]["linear_svm"]["params"].update(C=value))


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """Alice's clone after `dvc repro` and `dvc push --run-cache` to a local-directory remote, everything committed.

    She first ran and pushed linear_svm with C=TRIED_C, then went on to the committed C: dvc.lock records only the
    latter, the earlier run is in the run-cache (and its outputs on the remote)."""
    root = tmp_path_factory.mktemp("team")
    remote = root / "remote"
    committed_c = yaml.safe_load((REPO / "params.yaml").read_text())["classifiers"]["linear_svm"]["params"]["C"]
    assert committed_c not in (TRIED_C, NEW_C)

    def tiny_matrix(params):
        tiny_data(params)
        params["extract"]["layers"] = [TEAM_LAYER]
        params["train"]["layers"] = [TEAM_LAYER]
        params["classifiers"] = {name: params["classifiers"][name] for name in TEAM_CLASSIFIERS}
        params["classifiers"]["sgd_stream"].update(passes=3)
        params["finetune"] = {}  # no stage beyond the matrix

    alice = copy_project(root / "alice", tiny_matrix)
    dvc("remote", "add", "-d", "team", str(remote), cwd=alice)
    set_svm_c(alice, TRIED_C)
    dvc("repro", cwd=alice)
    dvc("push", cwd=alice)
    tried = sha256(alice / "data" / "models" / "linear_svm" / TEAM_LAYER / "model.json")
    set_svm_c(alice, committed_c)
    dvc("repro", cwd=alice)
    run([*GIT, "add", "dvc.lock", ".dvc/config"], alice)
    run([*GIT, "commit", "-qm", "dvc.lock and the team remote"], alice)
    assert run(["git", "status", "--porcelain", "--untracked-files=no"], alice) == ""  # params.yaml as committed
    dvc("push", "--run-cache", cwd=alice)
    return Team(alice, remote, tried)


def test_teammate_clone_trains_on_pulled_features_without_running_the_cnn(team, tmp_path):
    bob = tmp_path / "bob"
    run(["git", "clone", "-q", str(team.alice), str(bob)], tmp_path)
    features = bob / "data" / "features.h5"
    assert not features.exists() and not (bob / ".dvc" / "cache").exists()  # git carries no data and no DVC cache
    dvc("pull", "--run-cache", cwd=bob)
    assert sha256(features) == sha256(team.alice / "data" / "features.h5")
    set_svm_c(bob, NEW_C)
    # Before anything runs, DVC sees only the edited classifier's train stage and the leaderboard out of date.
    assert sorted(json.loads(dvc("status", "--json", cwd=bob))) == ["leaderboard", "train@linear_svm"]
    before = features.stat()
    log = dvc("repro", cwd=bob)
    assert "Stage 'prepare' didn't change, skipping" in log and "Stage 'extract' didn't change, skipping" in log
    assert stages_run(log) == ["leaderboard", "train@linear_svm"]
    after = features.stat()  # not rewritten: a run of extract writes a new file and renames it over the old one
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sha256(features) == sha256(team.alice / "data" / "features.h5")
    lock, alice_lock = (yaml.safe_load((repo / "dvc.lock").read_text())["stages"] for repo in (bob, team.alice))
    for stage in ("prepare", "extract", "train@sgd_stream"):
        assert lock[stage] == alice_lock[stage], stage
    # A new model, trained by Bob with his C on Alice's features, and its metrics.
    model_dir = Path("data") / "models" / "linear_svm" / TEAM_LAYER
    model, alice_model = (read_json(repo / model_dir / "model.json") for repo in (bob, team.alice))
    assert model["params"]["C"] == NEW_C and model["features"] == alice_model["features"]
    assert sha256(bob / model_dir / "model.joblib") != sha256(team.alice / model_dir / "model.joblib")
    metrics = read_json(bob / "data" / "eval" / "linear_svm" / "metrics" / f"{TEAM_LAYER}.json")
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 15


def test_run_cache_restores_a_run_that_no_commit_records(team, tmp_path):
    carol = tmp_path / "carol"
    run(["git", "clone", "-q", str(team.alice), str(carol)], tmp_path)
    set_svm_c(carol, TRIED_C)
    # One command in a fresh clone: pull what is unchanged, restore what the run-cache knows, run the rest (nothing).
    log = dvc("repro", "--pull", cwd=carol)
    assert stages_run(log) == [], log
    for stage in ("train@linear_svm", "leaderboard"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in log
    model = carol / "data" / "models" / "linear_svm" / TEAM_LAYER / "model.json"
    assert read_json(model)["params"]["C"] == TRIED_C and sha256(model) == team.tried
    assert sha256(carol / "data" / "features.h5") == sha256(team.alice / "data" / "features.h5")
