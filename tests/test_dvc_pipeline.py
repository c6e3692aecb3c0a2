"""End to end: a real `dvc repro` of this repository's dvc.yaml in a temporary copy, on a tiny subset of the digits."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import h5py
import pytest
import yaml

pytestmark = pytest.mark.slow  # real `dvc repro` runs: minutes

REPO = Path(__file__).resolve().parents[1]
CLASSIFIERS = ["logreg", "linear_svm", "linear_svm_aug", "sgd_stream", "dense_head"]
LAYERS = ["pixels", "conv_pw_7_relu"]  # the test's matrix: 5 classifiers x 2 layers
FINETUNED = "finetune/mobilenet_top"  # the default fine-tuning entry, moved to conv_pw_7_relu (in the matrix)
RUNS = [f"{c}/{layer}" for c in CLASSIFIERS for layer in LAYERS]


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


GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_project(dest: Path, edit) -> Path:
    """A new git repository at ``dest`` holding the project's files as they are in the working tree (tracked ones and
    new ones git does not ignore: what `git add -A` would commit), with params.yaml changed by ``edit``, committed."""
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listed, cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in files:
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    edit_params(dest, edit)
    run(["git", "init", "-q"], dest)
    run([*GIT, "add", "-A"], dest)
    run([*GIT, "commit", "-qm", "copy"], dest)
    return dest


def tiny_data(params):
    """100 digits at 16x16, features at 64x64."""
    params["prepare"].update(image_size=16, per_class_limit=10)
    params["extract"].update(input_size=[64, 64], batch_size=32)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC copy of the committed project files, shrunk to 100 images at 64x64, a 5 x 2 matrix and one epoch
    of fine-tuning, after one `dvc repro`."""

    def shrink(params):
        tiny_data(params)
        params["extract"]["layers"] = ["conv_pw_7_relu", "conv_pw_13_relu"]
        params["train"]["layers"] = LAYERS
        params["classifiers"]["dense_head"]["params"].update(epochs=5)
        params["classifiers"]["sgd_stream"].update(passes=3)
        params["finetune"]["mobilenet_top"].update(layer="conv_pw_7_relu", trainable_from="conv_dw_7", epochs=1)

    copy = copy_project(tmp_path_factory.mktemp("clone") / "repo", shrink)
    dvc("repro", cwd=copy)
    return copy


def test_repro_writes_the_features_file_layout(repo):
    with h5py.File(repo / "data" / "features.h5", "r") as f:
        assert f.attrs["complete"]
        assert sorted(f["features"]) == ["conv_pw_13_relu", "conv_pw_7_relu", "pixels"]
        assert f["features/conv_pw_7_relu"].shape == (100, 512)
        assert f["features/conv_pw_13_relu"].shape == (100, 1024)
        assert f["features/pixels"].shape == (100, 16, 16, 3)
        assert f["features/conv_pw_7_relu"].chunks[1:] == (512,)
        assert f["labels"].shape == f["paths"].shape == f["split"].shape == (100,)
        assert sorted(set(f["split"].asstr()[()])) == ["test", "train", "val"]
        assert f["paths"].asstr()[0].startswith("train/0/")
        assert json.loads(f.attrs["input_size"]) == [64, 64]
        assert "MobileNetV1" in f.attrs["weights_source"]


def test_metrics_for_every_classifier_and_layer(repo):
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo))
    metrics = next(iter(shown.values()))["data"]
    assert sorted(metrics) == sorted(f"data/eval/{run}/metrics.json" for run in [*RUNS, FINETUNED])
    for run_name in [*RUNS, FINETUNED]:
        values = metrics[f"data/eval/{run_name}/metrics.json"]["data"]
        assert 0.0 <= values["accuracy"] <= 1.0 and values["n"] == 15
        assert values["fit_seconds"] > 0 and values["predict_seconds"] > 0 and 0 <= values["val_accuracy"] <= 1
        assert (repo / "data" / "models" / run_name / "model.json").is_file()
        # log_loss and top-3 accuracy only where the estimator has predict_proba (not LinearSVC)
        assert ("log_loss" in values and "top3_accuracy" in values) == (not run_name.startswith("linear_svm")), values
    streamed = json.loads((repo / "data" / "models" / "sgd_stream" / "pixels" / "model.json").read_text())
    assert streamed["out_of_core"] == "classifiers.sgd_stream.out_of_core is true"
    assert [row["epoch"] for row in streamed["history"]] == [1, 2, 3]


def test_leaderboard_ranks_every_classifier_and_layer(repo):
    with (repo / "data" / "leaderboard" / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    expected = [*RUNS, "mobilenet_top (fine-tuned)/conv_pw_7_relu"]
    assert sorted(f"{r['classifier']}/{r['layer']}" for r in rows) == sorted(expected)
    accuracies = [float(r["accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    markdown = (repo / "data" / "leaderboard" / "leaderboard.md").read_text()
    assert markdown.startswith("| rank | classifier | layer | accuracy |")
    assert "Transfer vs raw pixels" in markdown and "- dense_head: `conv_pw_7_relu`" in markdown


def test_plots_render_for_every_classifier_and_layer(repo, tmp_path):
    # -o: the copies of image plots that `dvc plots show` writes go outside the repository (default: dvc_plots/)
    shown = json.loads(dvc("plots", "show", "--json", "-o", str(tmp_path), cwd=repo))
    assert "errors" not in shown, shown["errors"]
    plots = shown["data"]
    for run_name in [*RUNS, FINETUNED]:
        [confusion] = plots[f"data/eval/{run_name}/confusion.json"]
        assert confusion["type"] == "vega" and len(confusion["content"]["data"]["values"]) == 15
        [image] = plots[f"data/eval/{run_name}/confusion.png"]
        assert image["type"] == "image" and Path(image["url"]).read_bytes()[:4] == b"\x89PNG"
        [per_class] = plots[f"data/eval/{run_name}/per_class.json"]
        assert per_class["type"] == "vega"
        assert sorted(row["class"] for row in per_class["content"]["data"]["values"]) == [str(i) for i in range(10)]
        assert per_class["content"]["encoding"]["x"]["field"] == "recall"
    # The Keras head draws train vs val loss per epoch (the custom template in .dvc/plots); without epochs, no plot.
    [curve] = plots["data/eval/dense_head/conv_pw_7_relu/learning_curve.json"]
    assert curve["type"] == "vega"
    rows = curve["content"]["data"]["values"]
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1)) and 1 <= len(rows) <= 5
    assert all({"loss", "val_loss"} <= set(row) for row in rows)
    assert {"calculate": "datum['val_loss']", "as": "validation"} in curve["content"]["transform"]
    assert plots["data/eval/logreg/pixels/learning_curve.json"] == plots["data/eval/linear_svm/pixels/learning_curve.json"] == []
    [board] = plots["data/leaderboard/leaderboard.json"]
    assert board["type"] == "vega" and len(board["content"]["data"]["values"]) == len(RUNS) + 1
    assert board["content"]["encoding"]["x"]["field"] == "accuracy"
    [heat] = plots["data/leaderboard/leaderboard.png"]
    assert Path(heat["url"]).read_bytes()[:4] == b"\x89PNG"


def test_generated_files_stay_out_of_git(repo):
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], repo).splitlines()
    changed = [line[3:] for line in status]
    # data/.gitignore already ignores every output, so DVC adds no .gitignore files: only dvc.lock changes.
    assert changed == ["dvc.lock"], changed
    assert sorted(p.relative_to(repo).as_posix() for p in (repo / "data").rglob(".gitignore")) == ["data/.gitignore"]


def test_editing_one_classifier_reruns_only_that_classifier(repo):
    features_hash = sha256(repo / "data" / "features.h5")
    edit_params(repo, lambda p: p["classifiers"]["linear_svm"]["params"].update(C=0.5))
    status = json.loads(dvc("status", "--json", cwd=repo))
    assert sorted(status) == sorted([*(f"train@linear_svm-{layer}" for layer in LAYERS), "leaderboard"])
    log = dvc("repro", cwd=repo)
    assert "Stage 'extract' didn't change, skipping" in log
    for layer in LAYERS:
        assert f"Running stage 'train@linear_svm-{layer}'" in log and f"Running stage 'evaluate@linear_svm-{layer}'" in log
    assert log.count("Running stage") == 2 * len(LAYERS) + 1  # and the leaderboard
    assert sha256(repo / "data" / "features.h5") == features_hash


def test_adding_a_classifier_runs_only_the_new_one(repo):
    def add(params):
        params["classifiers"]["knn"] = {"estimator": "knn", "params": {"n_neighbors": 3}}

    edit_params(repo, add)
    log = dvc("repro", cwd=repo)
    for layer in LAYERS:
        assert f"Running stage 'train@knn-{layer}'" in log and f"Running stage 'evaluate@knn-{layer}'" in log
    assert log.count("Running stage") == 2 * len(LAYERS) + 1
    assert "knn,pixels" in (repo / "data" / "leaderboard" / "leaderboard.csv").read_text().replace('"', "")


def test_adding_an_extracted_layer_to_the_matrix_skips_extraction(repo):
    edit_params(repo, lambda p: p["train"]["layers"].append("conv_pw_7_relu+conv_pw_13_relu"))
    log = dvc("repro", cwd=repo)
    assert "Stage 'extract' didn't change, skipping" in log
    assert "Running stage 'train@logreg-conv_pw_7_relu+conv_pw_13_relu'" in log
    assert log.count("Running stage") == 2 * 6 + 1  # six classifiers (knn added above) on the new entry
    model = json.loads((repo / "data" / "models" / "logreg" / "conv_pw_7_relu+conv_pw_13_relu" / "model.json").read_text())
    assert model["layers"] == ["conv_pw_7_relu", "conv_pw_13_relu"]


def test_new_images_go_through_the_model_alone_although_dvc_deletes_the_output(repo):
    # DVC removes data/features.h5 before it runs extract; the rows come from data/.features.h5.reuse, found by
    # content: the user's own copy of the digits (another folder, the same files) reuses every row, and two photos
    # added to it are all that meet the CNN. (Last of the tests on this repository: it changes data.images.)
    shutil.copytree(repo / "data" / "demo", repo / "data" / "images")
    folder = repo / "data" / "images" / "train" / "3"
    for index, source in enumerate(sorted(folder.iterdir())[:2]):
        shutil.copy(source, folder / f"added_{index}.png")
        with (folder / f"added_{index}.png").open("ab") as f:
            f.write(b"\0")  # new bytes (a new content hash), the same decoded image
    edit_params(repo, lambda p: p["data"].update(images="data/images"))
    log = dvc("repro", "-s", "extract", cwd=repo)
    assert "Running stage 'extract'" in log
    assert "100 rows reused from earlier extractions, 2 images computed" in log
    with h5py.File(repo / "data" / "features.h5", "r") as f:
        assert f.attrs["n_rows"] == 102


# Sharing through a DVC remote (README, "Share features and models with your team"): Alice runs the pipeline and
# pushes to a local-directory remote; a teammate's fresh `git clone` pulls and trains without running the CNN.
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


def read_json(path: Path):
    return json.loads(path.read_text())


def stages_run(log: str) -> list[str]:
    return sorted(re.findall(r"Running stage '([^']+)'", log))


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
        params["finetune"]["mobilenet_top"].update(layer="conv_pw_7_relu", trainable_from="conv_dw_7", epochs=1)
        if "finetune" in params:  # no stage beyond the matrix
            params["finetune"] = {}

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
    assert sorted(json.loads(dvc("status", "--json", cwd=bob))) == ["leaderboard", f"train@linear_svm-{TEAM_LAYER}"]
    before = features.stat()
    log = dvc("repro", cwd=bob)
    assert "Stage 'prepare' didn't change, skipping" in log and "Stage 'extract' didn't change, skipping" in log
    assert stages_run(log) == [f"evaluate@linear_svm-{TEAM_LAYER}", "leaderboard", f"train@linear_svm-{TEAM_LAYER}"]
    after = features.stat()  # not rewritten: a run of extract writes a new file and renames it over the old one
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sha256(features) == sha256(team.alice / "data" / "features.h5")
    lock, alice_lock = (yaml.safe_load((repo / "dvc.lock").read_text())["stages"] for repo in (bob, team.alice))
    for stage in ("prepare", "extract", f"train@sgd_stream-{TEAM_LAYER}"):
        assert lock[stage] == alice_lock[stage], stage
    # A new model, trained by Bob with his C on Alice's features, and its metrics.
    model_dir = Path("data") / "models" / "linear_svm" / TEAM_LAYER
    model, alice_model = (read_json(repo / model_dir / "model.json") for repo in (bob, team.alice))
    assert model["params"]["C"] == NEW_C and model["features"] == alice_model["features"]
    assert sha256(bob / model_dir / "model.joblib") != sha256(team.alice / model_dir / "model.joblib")
    metrics = read_json(bob / "data" / "eval" / "linear_svm" / TEAM_LAYER / "metrics.json")
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["n"] == 15


def test_run_cache_restores_a_run_that_no_commit_records(team, tmp_path):
    carol = tmp_path / "carol"
    run(["git", "clone", "-q", str(team.alice), str(carol)], tmp_path)
    set_svm_c(carol, TRIED_C)
    # One command in a fresh clone: pull what is unchanged, restore what the run-cache knows, run the rest (nothing).
    log = dvc("repro", "--pull", cwd=carol)
    assert stages_run(log) == [], log
    for stage in (f"train@linear_svm-{TEAM_LAYER}", f"evaluate@linear_svm-{TEAM_LAYER}", "leaderboard"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in log
    model = carol / "data" / "models" / "linear_svm" / TEAM_LAYER / "model.json"
    assert read_json(model)["params"]["C"] == TRIED_C and sha256(model) == team.tried
    assert sha256(carol / "data" / "features.h5") == sha256(team.alice / "data" / "features.h5")


# Your own images (README, "Your own images"): one params.yaml key, data.images, and nothing of yours is ever lost.
OWN_CLASSES = ("cat", "coffee", "rocket")


def write_photos(folder: Path, per_class: int, first: int = 0, flat: bool = False) -> list[Path]:
    """Distinct JPEG photos (crops, flips and brightness of scikit-image's real photos), a folder per class unless
    ``flat``; returns the files written."""
    import numpy as np
    from PIL import Image
    from skimage import data

    sources = {"cat": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket()}
    written = []
    for name in OWN_CLASSES:
        photo = sources[name]
        for index in range(first, first + per_class):
            rng = np.random.default_rng([OWN_CLASSES.index(name), index])
            top, left = rng.integers(0, 60, 2)
            crop = photo[top : top + 240, left : left + 320]
            crop = crop[:, ::-1] if index % 2 else crop
            crop = np.clip(crop * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
            path = folder / (f"{name}_{index:03d}.jpg" if flat else f"{name}/IMG_{index:04d}.JPG")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).resize((160, 120)).save(path, quality=90)
            written.append(path)
    return written


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its sha256 and modification time."""
    return {p.relative_to(folder).as_posix(): (sha256(p), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def feature_paths(repo: Path) -> list[str]:
    with h5py.File(repo / "data" / "features.h5", "r") as f:
        return sorted(f["paths"].asstr()[()])


def set_images(repo: Path, images: str | Path, image_root: str | Path | None = None) -> None:
    def edit(params):
        params["data"] = {"images": str(images), "image_root": None if image_root is None else str(image_root)}

    edit_params(repo, edit)


def repro_changes_nothing_twice(repo: Path) -> str:
    """`dvc repro`, then a second one that has nothing to do; returns the first one's log."""
    log = dvc("repro", cwd=repo)
    again = dvc("repro", cwd=repo)
    assert stages_run(again) == [] and "Data and pipelines are up to date." in again, again
    return log


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A copy of the project after the default `dvc repro` on the built-in digits, with a small matrix (2 classifiers
    on the last block, fine-tuning for one epoch) so that each change of data.images re-runs everything quickly."""

    def small(params):
        tiny_data(params)
        params["extract"].update(layers=["conv_pw_13_relu"], pixels=None, augment_views=0)
        params["train"]["layers"] = ["conv_pw_13_relu"]
        params["classifiers"] = {"linear_svm": params["classifiers"]["linear_svm"], "dense_head": params["classifiers"]["dense_head"]}
        params["classifiers"]["dense_head"]["params"].update(epochs=2)
        params["finetune"]["mobilenet_top"].update(layer="conv_pw_13_relu", epochs=1)

    repo = copy_project(tmp_path_factory.mktemp("own") / "repo", small)
    assert "Running stage 'prepare'" in dvc("repro", cwd=repo)
    assert len(feature_paths(repo)) == 100 and all(p.endswith(".png") for p in feature_paths(repo))
    return repo


def test_own_photos_in_data_images_run_everything_and_stay_untouched(own, tmp_path):
    # The scenario that lost a user's photos: they filled data/images (the folder the old README named) after the
    # default run. Now they also set data.images, and every stage runs on their photos; the demo is left alone.
    photos = write_photos(own / "data" / "images", per_class=10)
    before, demo = snapshot(own / "data" / "images"), snapshot(own / "data" / "demo")
    # Exactly the old scenario first, the key not yet set: the demo's stages have nothing to do, and nothing of theirs
    # is in data/images any more, so DVC has nothing to restore over the photos.
    assert stages_run(dvc("repro", cwd=own)) == []
    assert snapshot(own / "data" / "images") == before
    set_images(own, "data/images")
    # The stages that read images see the change; the demo's prepare stage does not.
    assert sorted(json.loads(dvc("status", "--json", cwd=own))) == ["extract", "finetune@mobilenet_top"]
    log = repro_changes_nothing_twice(own)
    assert "Stage 'prepare' didn't change, skipping" in log and "Running stage 'finetune@mobilenet_top'" in log
    assert snapshot(own / "data" / "images") == before and snapshot(own / "data" / "demo") == demo
    assert feature_paths(own) == sorted(p.relative_to(own / "data" / "images").as_posix() for p in photos)
    with (own / "data" / "leaderboard" / "leaderboard.csv").open() as f:
        board = {row["classifier"]: row for row in csv.DictReader(f)}
    assert sorted(board) == ["dense_head", "linear_svm", "mobilenet_top (fine-tuned)"]
    model = read_json(own / "data" / "models" / "linear_svm" / "conv_pw_13_relu" / "model.json")
    assert model["class_names"] == list(OWN_CLASSES)
    # Predict on new photos with the trained model, as the README shows.
    [new] = write_photos(tmp_path / "new", per_class=1, first=50, flat=True)[:1]
    out = run([sys.executable, "-m", "pipeline", "predict", "--model", "data/models/linear_svm/conv_pw_13_relu", str(new)], own)
    assert re.search(rf"{re.escape(str(new))}: (cat|coffee|rocket) \(", out), out
    assert snapshot(own / "data" / "images") == before
    assert "data/images" not in run(["git", "status", "--porcelain", "--untracked-files=all"], own)


def test_own_folder_outside_the_project_by_absolute_path(own, tmp_path):
    folder = tmp_path / "My Photos"  # outside the project, with a space in its name
    photos = write_photos(folder, per_class=8, first=100)
    before = snapshot(folder)
    set_images(own, folder)
    log = repro_changes_nothing_twice(own)
    assert "Running stage 'extract'" in log and "Running stage 'leaderboard'" in log
    assert snapshot(folder) == before
    assert feature_paths(own) == sorted(p.relative_to(folder).as_posix() for p in photos)
    with h5py.File(own / "data" / "features.h5", "r") as f:
        assert f.attrs["image_root"] == str(folder)
    # A growing dataset: new photos re-run extraction, which computes only them.
    added = write_photos(folder, per_class=1, first=200)
    log = dvc("repro", "-s", "extract", cwd=own)
    assert f"{len(photos)} rows reused from earlier extractions, {len(added)} images computed" in log
    now = snapshot(folder)
    assert {name: now[name] for name in before} == before and len(now) == len(photos) + len(added)


def test_a_csv_manifest_through_the_same_key(own, tmp_path):
    root = tmp_path / "shoot"
    photos = write_photos(root / "jpegs", per_class=8, first=300, flat=True)
    manifest = tmp_path / "labels" / "labels.csv"  # outside the image folder: data.image_root says where that is
    manifest.parent.mkdir()
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", "split"])  # 24 photos are too few to rely on content splits for a test set
        writer.writerows(
            (p.relative_to(root).as_posix(), p.name.split("_")[0], ("train", "train", "train", "val", "test")[i % 5])
            for i, p in enumerate(photos)
        )
    before = snapshot(tmp_path)
    set_images(own, manifest, image_root=root)
    log = repro_changes_nothing_twice(own)
    assert "Running stage 'extract'" in log and "Running stage 'finetune@mobilenet_top'" in log
    assert snapshot(tmp_path) == before
    assert feature_paths(own) == sorted(p.relative_to(root).as_posix() for p in photos)
