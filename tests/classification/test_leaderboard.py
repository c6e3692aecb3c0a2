"""Tests for pipeline.classification.leaderboard: every configured classifier x layer ranked, written as CSV, Markdown, JSON and PNG."""

from __future__ import annotations

import csv
import json
import re

import pytest

from pipeline.atomic import write_json
from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.leaderboard import (
    COLUMNS,
    augmented_twins,
    collect,
    markdown,
    transfer_gains,
    write_leaderboard,
)
from pipeline.validation import ConfigError

RESULTS = {  # (classifier, layer) -> (test accuracy, val accuracy)
    ("logreg", "pixels"): (0.80, 0.79),
    ("logreg", "conv_pw_7_relu"): (0.97, 0.96),
    ("logreg", "conv_pw_13_relu"): (0.93, 0.95),
    ("svm", "pixels"): (0.85, 0.80),
    ("svm", "conv_pw_7_relu"): (0.97, 0.98),
    ("svm", "conv_pw_13_relu"): (0.90, 0.91),
}
CLASSIFIERS = ["logreg", "svm"]
LAYERS = ["pixels", "conv_pw_7_relu", "conv_pw_13_relu"]


@pytest.fixture
def eval_dir(tmp_path):
    root = tmp_path / "eval"
    for (classifier, layer), (accuracy, val_accuracy) in RESULTS.items():
        metrics = {
            "accuracy": accuracy, "balanced_accuracy": accuracy - 0.01, "macro_f1": accuracy - 0.02, "n": 270,
            "val_accuracy": val_accuracy, "fit_seconds": 1.5, "predict_seconds": 0.01,
        }
        if classifier == "logreg":  # the SVM has no probabilities: no log loss, no top-3
            metrics.update(log_loss=0.3, top3_accuracy=0.99)
        write_json(EvalFiles(root / classifier, layer).metrics, metrics)
    return root


def test_collect_ranks_every_pair_by_test_then_val_accuracy(eval_dir):
    rows = collect(eval_dir, CLASSIFIERS, LAYERS)
    assert [(r["classifier"], r["layer"]) for r in rows] == [
        ("svm", "conv_pw_7_relu"),  # ties logreg at 0.97 on test; better on val
        ("logreg", "conv_pw_7_relu"),
        ("logreg", "conv_pw_13_relu"),
        ("svm", "conv_pw_13_relu"),
        ("svm", "pixels"),
        ("logreg", "pixels"),
    ]
    assert rows[0]["log_loss"] is None and rows[1]["log_loss"] == 0.3
    assert set(rows[0]) == {"classifier", "layer", *COLUMNS}


def test_only_the_configured_pairs_are_read(eval_dir):
    write_json(eval_dir / "removed" / "metrics" / "pixels.json", {"accuracy": 1.0})
    rows = collect(eval_dir, ["svm"], ["pixels", "conv_pw_7_relu"])
    assert {(r["classifier"], r["layer"]) for r in rows} == {("svm", "pixels"), ("svm", "conv_pw_7_relu")}


def test_a_missing_pair_is_an_error_naming_its_file(eval_dir):
    with pytest.raises(ConfigError, match=re.escape("no metrics for 2 of 8 classifier x layer pairs; missing: [")) as error:
        collect(eval_dir, CLASSIFIERS, [*LAYERS, "conv_pw_3_relu"])
    assert str(eval_dir / "svm" / "metrics" / "conv_pw_3_relu.json") in str(error.value)
    assert str(eval_dir / "logreg" / "metrics" / "conv_pw_3_relu.json") in str(error.value)


def test_transfer_gain_is_the_best_layer_against_pixels(eval_dir):
    gains = {g["classifier"]: g for g in transfer_gains(collect(eval_dir, CLASSIFIERS, LAYERS))}
    assert gains["logreg"]["best_layer"] == "conv_pw_7_relu"
    assert gains["logreg"]["gain"] == pytest.approx(0.17)
    assert gains["svm"]["gain"] == pytest.approx(0.12)
    assert transfer_gains(collect(eval_dir, CLASSIFIERS, ["conv_pw_7_relu"])) == []  # no pixels row, no gain


def test_markdown_table_has_a_row_per_pair_and_the_pixel_comparison(eval_dir):
    text = markdown(collect(eval_dir, CLASSIFIERS, LAYERS))
    lines = text.splitlines()
    assert lines[0].startswith("| rank | classifier | layer | accuracy | balanced acc. | macro F1 | log loss |")
    assert lines[2] == "| **1** | **svm** | **`conv_pw_7_relu`** | **0.970** | **0.960** | **0.950** | **–** | **–** | **0.980** | **1.50** | **0.01** |"
    assert sum(line.startswith("| ") for line in lines) == 1 + len(RESULTS)
    assert "- logreg: `conv_pw_7_relu` 0.970 vs pixels 0.800 (+0.170)" in lines


def test_write_leaderboard_writes_csv_markdown_plot_data_and_png(eval_dir, tmp_path):
    out = tmp_path / "board"
    rows = write_leaderboard(eval_dir, CLASSIFIERS, LAYERS, out)
    with (out / "leaderboard.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [row["rank"] for row in table] == [str(i) for i in range(1, 7)]
    assert table[0]["classifier"] == "svm" and float(table[0]["accuracy"]) == 0.97 and table[0]["log_loss"] == ""
    assert (out / "leaderboard.md").read_text() == markdown(rows)
    plot = json.loads((out / "leaderboard.json").read_text())
    assert [p["run"] for p in plot][:2] == ["svm · conv_pw_7_relu", "logreg · conv_pw_7_relu"]
    assert (out / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.csv", "leaderboard.json", "leaderboard.md", "leaderboard.png"]


def write_finetuned(eval_dir, name, accuracy, val_accuracy):
    metrics = {
        "accuracy": accuracy, "balanced_accuracy": accuracy, "macro_f1": accuracy, "n": 270, "log_loss": 0.1,
        "top3_accuracy": 1.0, "val_accuracy": val_accuracy, "fit_seconds": 40.0, "predict_seconds": 0.5,
    }
    write_json(EvalFiles(eval_dir / "finetune", name).metrics, metrics)


def test_fine_tuned_runs_join_the_table_marked_with_their_layer(eval_dir, tmp_path):
    write_finetuned(eval_dir, "top", 0.99, 0.97)
    write_json(eval_dir / "finetune" / "metrics" / "removed.json", {})  # an entry no longer configured: not read
    rows = collect(eval_dir, CLASSIFIERS, LAYERS, {"top": "conv_pw_13_relu"})
    assert len(rows) == len(RESULTS) + 1
    assert rows[0] == {
        "classifier": "top (fine-tuned)", "layer": "conv_pw_13_relu", "accuracy": 0.99, "balanced_accuracy": 0.99,
        "macro_f1": 0.99, "log_loss": 0.1, "top3_accuracy": 1.0, "val_accuracy": 0.97, "fit_seconds": 40.0,
        "predict_seconds": 0.5,
    }
    assert markdown(rows).splitlines()[2].startswith("| **1** | **top (fine-tuned)** | **`conv_pw_13_relu`** | **0.990** |")
    assert {g["classifier"] for g in transfer_gains(rows)} == {"logreg", "svm"}  # no pixels row of its own: no gain
    out = tmp_path / "board"
    written = write_leaderboard(eval_dir, CLASSIFIERS, LAYERS, out, {"top": "conv_pw_13_relu"})
    assert written == rows
    with (out / "leaderboard.csv").open() as f:
        assert next(csv.DictReader(f))["classifier"] == "top (fine-tuned)"
    assert json.loads((out / "leaderboard.json").read_text())[0]["run"] == "top (fine-tuned) · conv_pw_13_relu"


def test_a_missing_fine_tuned_evaluation_is_an_error_naming_its_file(eval_dir):
    write_finetuned(eval_dir, "top", 0.99, 0.97)
    finetune = {"top": "conv_pw_13_relu", "other": "conv_pw_7_relu"}
    with pytest.raises(ConfigError, match=re.escape(
        "no metrics for 1 of 8 classifier x layer pairs and fine-tuned models; missing: ["
    )) as error:
        collect(eval_dir, CLASSIFIERS, LAYERS, finetune)
    assert str(eval_dir / "finetune" / "metrics" / "other.json") in str(error.value)


def test_augmented_twins_pair_entries_that_differ_only_in_augmented():
    classifiers = {
        "svm": {"estimator": "linear_svm", "params": {"C": 0.01}},
        "svm_aug": {"estimator": "linear_svm", "params": {"C": 0.01}, "augmented": True},
        "svm_aug_c1": {"estimator": "linear_svm", "params": {"C": 1.0}, "augmented": True},  # no clean twin
    }
    assert augmented_twins(classifiers) == {"svm_aug": "svm"}


def test_the_markdown_says_whether_views_and_fine_tuning_helped(eval_dir, tmp_path):
    for layer, accuracy in (("pixels", 0.90), ("conv_pw_7_relu", 0.95)):
        write_json(EvalFiles(eval_dir / "svm_aug", layer).metrics, {"accuracy": accuracy, "n": 270})
    write_finetuned(eval_dir, "top", 0.99, 0.97)
    out = tmp_path / "board"
    write_leaderboard(
        eval_dir, [*CLASSIFIERS, "svm_aug"], ["pixels", "conv_pw_7_relu"], out, {"top": "conv_pw_7_relu"},
        augmented={"svm_aug": "svm"}, heads={"top": "logreg"},
    )
    text = (out / "leaderboard.md").read_text()
    assert "- svm_aug vs svm on `pixels`: 0.900 vs 0.850 (+0.050)" in text
    assert "- svm_aug vs svm on `conv_pw_7_relu`: 0.950 vs 0.970 (-0.020)" in text
    assert "- top (fine-tuned) vs logreg on `conv_pw_7_relu`: 0.990 vs 0.970 (+0.020)" in text
    assert "on `conv_pw_13_relu`" not in text.split("Augmented views")[1]  # only layers both were evaluated on
