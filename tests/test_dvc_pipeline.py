"""End to end: a real `dvc repro` of this repository's dvc.yaml in a temporary copy, on a tiny subset of the digits: the
matrix, its outputs, and what re-runs after an edit."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import pytest
from dvc_project import copy_project, dvc, edit_params, run, sha256, stages_run, tiny_data

pytestmark = pytest.mark.slow  # real `dvc repro` runs: minutes

CLASSIFIERS = ["logreg", "linear_svm", "sgd_stream", "dense_head"]  # with and without probabilities, streamed, Keras
LAYERS = ["pixels", "conv_pw_7_relu"]  # the test's matrix: 4 classifiers x 2 layers (every stage costs seconds)
FINETUNED = "finetune/mobilenet_top"  # the default fine-tuning entry, moved to conv_pw_7_relu (in the matrix)
RUNS = [f"{c}/{layer}" for c in CLASSIFIERS for layer in LAYERS]
PROBE = "data/probe/metrics.json"  # the linear probe over every stored layer


def eval_file(run_name: str, kind: str, suffix: str = ".json") -> str:
    """Where a run's evaluation file of ``kind`` is: by kind, one file per layer (or fine-tuning entry)."""
    group, name = run_name.split("/")
    return f"data/eval/{group}/{kind}/{name}{suffix}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A git + DVC copy of the committed project files, shrunk to 100 images at 64x64, a 4 x 2 matrix and one epoch
    of fine-tuning, after one `dvc repro`."""

    def shrink(params):
        tiny_data(params)
        params["extract"]["layers"] = ["conv_pw_7_relu", "conv_pw_13_relu"]
        params["train"]["layers"] = LAYERS
        params["classifiers"] = {name: params["classifiers"][name] for name in CLASSIFIERS}
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
    assert sorted(metrics) == sorted([*(eval_file(run, "metrics") for run in [*RUNS, FINETUNED]), PROBE])
    for run_name in [*RUNS, FINETUNED]:
        values = metrics[eval_file(run_name, "metrics")]["data"]
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
    assert "Linear probe over all 2 stored backbone layers: best block `conv_pw_" in markdown


def test_plots_render_for_every_classifier_and_layer(repo, tmp_path):
    # -o: the copies of image plots that `dvc plots show` writes go outside the repository (default: dvc_plots/)
    shown = json.loads(dvc("plots", "show", "--json", "-o", str(tmp_path), cwd=repo))
    assert "errors" not in shown, shown["errors"]
    plots = shown["data"]
    for run_name in [*RUNS, FINETUNED]:
        [confusion] = plots[eval_file(run_name, "confusion")]
        assert confusion["type"] == "vega" and len(confusion["content"]["data"]["values"]) == 15
        [image] = plots[eval_file(run_name, "confusion", ".png")]
        assert image["type"] == "image" and Path(image["url"]).read_bytes()[:4] == b"\x89PNG"
        [per_class] = plots[eval_file(run_name, "per_class")]
        assert per_class["type"] == "vega"
        assert sorted(row["class"] for row in per_class["content"]["data"]["values"]) == [str(i) for i in range(10)]
        assert per_class["content"]["encoding"]["x"]["field"] == "recall"
    # The Keras head draws train vs val loss per epoch (the custom template in .dvc/plots); without epochs, no plot.
    [curve] = plots[eval_file("dense_head/conv_pw_7_relu", "learning_curve")]
    assert curve["type"] == "vega"
    rows = curve["content"]["data"]["values"]
    assert [row["epoch"] for row in rows] == list(range(1, len(rows) + 1)) and 1 <= len(rows) <= 5
    assert all({"loss", "val_loss"} <= set(row) for row in rows)
    assert {"calculate": "datum['val_loss']", "as": "validation"} in curve["content"]["transform"]
    assert plots[eval_file("logreg/pixels", "learning_curve")] == plots[eval_file("linear_svm/pixels", "learning_curve")] == []
    [board] = plots["data/leaderboard/leaderboard.json"]
    assert board["type"] == "vega" and len(board["content"]["data"]["values"]) == len(RUNS) + 1
    assert board["content"]["encoding"]["x"]["field"] == "accuracy"
    [heat] = plots["data/leaderboard/leaderboard.png"]
    assert Path(heat["url"]).read_bytes()[:4] == b"\x89PNG"
    # The probe's curve (the custom template in .dvc/plots): raw pixels at depth 0, then every stored layer.
    [probe] = plots["data/probe/curve.json"]
    assert probe["type"] == "vega" and probe["content"]["encoding"]["color"]["field"] == "probe"
    assert [row["layer"] for row in probe["content"]["data"]["values"]] == ["pixels", "conv_pw_7_relu", "conv_pw_13_relu"]
    [probe_png] = plots["data/probe/curve.png"]
    assert Path(probe_png["url"]).read_bytes()[:4] == b"\x89PNG"


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
    assert sorted(status) == ["leaderboard", "train@linear_svm"]
    log = dvc("repro", cwd=repo)
    assert "Stage 'extract' didn't change, skipping" in log
    assert stages_run(log) == ["leaderboard", "train@linear_svm"]  # one process trains and evaluates every layer
    assert f"linear_svm: {len(LAYERS)} layer(s) trained, 0 copied back" in log
    assert sha256(repo / "data" / "features.h5") == features_hash


def test_adding_an_extracted_layer_to_the_matrix_skips_extraction(repo):
    edit_params(repo, lambda p: p["train"]["layers"].append("conv_pw_7_relu+conv_pw_13_relu"))
    log = dvc("repro", cwd=repo)
    assert "Stage 'extract' didn't change, skipping" in log
    # Every classifier's stage runs (train.layers is a param of each), and trains the new entry only.
    assert stages_run(log) == sorted(["leaderboard", *(f"train@{name}" for name in CLASSIFIERS)])
    for name in CLASSIFIERS:
        assert f"{name}: 1 layer(s) trained, {len(LAYERS)} copied back unchanged ({', '.join(LAYERS)})" in log
    model = json.loads((repo / "data" / "models" / "logreg" / "conv_pw_7_relu+conv_pw_13_relu" / "model.json").read_text())
    assert model["layers"] == ["conv_pw_7_relu", "conv_pw_13_relu"]


def test_adding_a_classifier_runs_only_the_new_one(repo):
    def add(params):
        params["train"]["layers"] = LAYERS  # back to the state every other stage ran with
        params["classifiers"]["knn"] = {"estimator": "knn", "params": {"n_neighbors": 3}}

    edit_params(repo, add)
    log = dvc("repro", cwd=repo)
    # train.layers is back to what the other stages already ran with: DVC's run-cache restores them, only knn runs.
    assert stages_run(log) == ["leaderboard", "train@knn"]
    assert f"knn: {len(LAYERS)} layer(s) trained, 0 copied back" in log
    for name in CLASSIFIERS:
        assert f"Stage 'train@{name}' is cached - skipping run, checking out outputs" in log
    assert "Stage 'finetune@mobilenet_top' didn't change, skipping" in log  # its head was copied back, byte for byte
    assert "knn,pixels" in (repo / "data" / "leaderboard" / "leaderboard.csv").read_text().replace('"', "")


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
