"""Tests for pipeline.classification.probe: a linear probe on every stored layer of real (small, generated) HDF5
features files, its curve, PNG and metrics, the stage that runs it and the leaderboard line that names its best block."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pipeline.atomic import write_json
from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.leaderboard import write_leaderboard
from pipeline.classification.probe import row_space, run_probe, standardize
from pipeline.config import ProbeConfig
from pipeline.store import FeatureWriter
from pipeline.validation import ConfigError

REPO = Path(__file__).resolve().parents[2]
CLASSES = 4
N = 400
CHANNELS = 4  # of the pyramid layer: 21 x 4 columns, the first 4 its global average


def generated(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Rows of five layers, in depth order: ``early`` (pyramid: its 1x1 cell is noise, its finer cells tell the
    classes apart), ``noise`` (avg, pure noise), ``good`` (avg, class centroids far apart), ``maps`` (unpooled 2x2x8,
    class centroids per channel) and ``pixels`` (4x4x3, weakly informative); labels and splits (60/20/20)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, N)
    splits = rng.choice(["train", "val", "test"], N, p=[0.6, 0.2, 0.2])
    early = rng.standard_normal((N, 21 * CHANNELS)).astype(np.float32)
    early[:, CHANNELS:] += 0.25 * rng.standard_normal((CLASSES, 20 * CHANNELS)).astype(np.float32)[y]
    good = 3.0 * rng.standard_normal((CLASSES, 32))[y] + rng.standard_normal((N, 32))
    maps = rng.standard_normal((CLASSES, 8))[y][:, None, None, :] + rng.standard_normal((N, 2, 2, 8))
    pixels = 0.1 * rng.standard_normal((CLASSES, 48))[y].reshape(N, 4, 4, 3) + rng.standard_normal((N, 4, 4, 3))
    layers = {"early": early, "noise": rng.standard_normal((N, 16)), "good": good, "maps": maps, "pixels": pixels}
    return layers, y, splits


POOLING = {"early": "pyramid", "noise": "avg", "good": "avg", "maps": "none", "pixels": "none"}


def write(path: Path, layers: dict[str, np.ndarray], pooling: dict[str, str], y, splits) -> Path:
    """A complete features file with the provenance the probe reads (layer order, pooling, dtype)."""
    specs = {name: (X.shape[1:], "float16" if name == "maps" else "float32") for name, X in layers.items()}
    attrs = {"layers": list(layers), "pooling": pooling, "dtype": {name: dtype for name, (_, dtype) in specs.items()},
             "class_names": [str(c) for c in range(CLASSES)]}
    with FeatureWriter(path, capacity=N, layers=specs, attrs=attrs, resume_key="probe-test") as writer:
        writer.write(N, layers, [f"{i}.png" for i in range(N)], y, splits.tolist())
    return path


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    layers, y, splits = generated()
    return write(tmp_path_factory.mktemp("probe") / "features.h5", layers, POOLING, y, splits)


@pytest.fixture(scope="module")
def probed(features, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe_out") / "probe"
    return run_probe(features, out, ProbeConfig()), out


def curve(out: Path) -> list[dict]:
    return json.loads((out / "curve.json").read_text())


def test_the_best_block_is_chosen_by_val_accuracy(probed):
    metrics, out = probed
    assert metrics["best_layer"] == "good" and metrics["probe"] == "logreg avg" and metrics["depth"] == 3
    assert metrics["val_accuracy"] > 0.95 and metrics["test_accuracy"] > 0.95
    rows = {(row["layer"], row["probe"]): row for row in curve(out)}
    assert rows["noise", "logreg avg"]["val_accuracy"] < 0.5  # chance is 0.25
    best = max((row for row in rows.values() if row["layer"] != "pixels"), key=lambda row: row["val_accuracy"])
    assert (best["layer"], best["C"], best["val_accuracy"]) == ("good", metrics["C"], metrics["val_accuracy"])
    assert metrics["C"] in ProbeConfig().C


def test_every_layer_gets_a_line_per_pooling_in_depth_order(probed):
    _, out = probed
    rows = curve(out)
    assert [(row["depth"], row["layer"], row["probe"]) for row in rows] == [
        (0, "pixels", "logreg avg"), (0, "pixels", "logreg pyramid"),  # the baseline starts every line
        (1, "early", "logreg avg"), (1, "early", "logreg pyramid"),
        (2, "noise", "logreg avg"), (3, "good", "logreg avg"), (4, "maps", "logreg avg"),
    ]
    early = {row["probe"]: row for row in rows if row["layer"] == "early"}
    assert early["logreg avg"]["features"] == CHANNELS and early["logreg pyramid"]["features"] == 21 * CHANNELS
    assert early["logreg pyramid"]["val_accuracy"] > early["logreg avg"]["val_accuracy"] + 0.3  # the layout helps
    assert {row["features"] for row in rows if row["layer"] == "maps"} == {8}  # its global average
    assert {row["features"] for row in rows if row["layer"] == "pixels"} == {48}  # raw, flattened


def test_the_avg_line_of_a_pyramid_or_unpooled_layer_is_the_probe_of_its_global_average(probed, tmp_path):
    _, out = probed
    layers, y, splits = generated()
    averaged = {
        "early": layers["early"][:, :CHANNELS],  # the 1x1 cell
        "maps": layers["maps"].astype(np.float16).astype(np.float32).mean(axis=(1, 2)),
    }
    features = write(tmp_path / "averaged.h5", averaged, {"early": "avg", "maps": "avg"}, y, splits)
    run_probe(features, tmp_path / "probe", ProbeConfig())
    keys = ("C", "val_accuracy", "test_accuracy", "features")
    expected = {row["layer"]: {key: row[key] for key in keys} for row in curve(tmp_path / "probe")}
    for layer in ("early", "maps"):
        row = next(row for row in curve(out) if row["layer"] == layer and row["probe"] == "logreg avg")
        assert {key: row[key] for key in keys} == pytest.approx(expected[layer], abs=1e-9), layer


def test_the_outputs_are_written_whole(probed):
    metrics, out = probed
    assert sorted(path.name for path in out.iterdir()) == ["curve.json", "curve.png", "metrics.json"]  # no .partial
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert set(metrics) == {"best_layer", "probe", "estimator", "pooling", "depth", "features", "C", "val_accuracy",
                            "test_accuracy", "per_probe", "layers", "seconds", "pixels"}
    assert metrics["layers"] == 4 and set(metrics["per_probe"]) == {"logreg avg", "logreg pyramid"}
    assert metrics["per_probe"]["logreg pyramid"]["layer"] == "early"
    for row in curve(out):
        assert {"depth", "layer", "probe", "estimator", "pooling", "features", "C", "val_accuracy",
                "test_accuracy"} <= set(row)
        assert 0 <= row["val_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1


def test_pixels_can_be_left_out(features, tmp_path):
    metrics = run_probe(features, tmp_path / "probe", ProbeConfig(pixels=False))
    assert "pixels" not in metrics
    assert all(row["layer"] != "pixels" and row["depth"] >= 1 for row in curve(tmp_path / "probe"))


def test_the_row_space_fit_equals_the_fit_on_every_column():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    X = (rng.standard_normal((3, 500))[np.r_[y, y[:20]]] + rng.standard_normal((80, 500))).astype(np.float32)
    train, val = X[:60], X[60:]
    standardize(train, val)
    reduced, reduced_val = row_space(train, val)
    assert reduced.shape == (60, 59) and reduced_val.shape == (20, 59)  # centred rows span n - 1 dimensions
    full = LogisticRegression(C=0.1, tol=1e-10, max_iter=5000).fit(train, y)
    small = LogisticRegression(C=0.1, tol=1e-10, max_iter=5000).fit(reduced, y)
    np.testing.assert_allclose(small.decision_function(reduced_val), full.decision_function(val), atol=2e-3)


def test_a_layer_over_the_memory_budget_is_refused_before_any_fit(features, tmp_path):
    with pytest.raises(ConfigError, match=r"^the probe of layer pixels needs 75.0 KiB in memory .* over train.memory_budget 1.0 KiB"):
        run_probe(features, tmp_path / "probe", ProbeConfig(), memory_budget=1024)
    assert not (tmp_path / "probe").exists()


@pytest.mark.parametrize(("params", "message"), [
    ({"C": []}, "probe.C must be a non-empty list of positive numbers (the regularization grid). Received: probe.C=[]"),
    ({"C": [0.1, 0]}, "probe.C must be a non-empty list of positive numbers (the regularization grid). "
                      "Received: probe.C=[0.1, 0]"),
    ({"C": [1, 1.0]}, "probe.C must be a list of positive numbers without repeats. Received: probe.C=[1, 1.0]"),
    ({"max_iter": 0}, "probe.max_iter must be an integer >= 1. Received: probe.max_iter=0"),
    ({"tol": "1e-4"}, "probe.tol must be a number > 0 (YAML reads a number like 1e-4 without a decimal point as a "
                      "string: write 1.0e-4). Received: probe.tol='1e-4'"),
    ({"estimator": "svm"}, "probe.estimator must be one of ['logistic_regression']. Received: probe.estimator='svm'"),
    ({"pixels": "yes"}, "probe.pixels must be true or false. Received: probe.pixels='yes'"),
    ({"Cs": [1.0]}, "probe.Cs must be a key of probe, one of ['C', 'estimator', 'max_iter', 'pixels', 'tol']. "
                    "Received: probe.Cs=[1.0] Did you mean 'C'?"),
])
def test_bad_params_are_refused_under_their_key(params, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        ProbeConfig.from_params(params)


def test_the_grid_is_fitted_in_ascending_order():
    assert ProbeConfig.from_params({"C": [10, 0.1, 1]}).C == (0.1, 1.0, 10.0)


def test_the_stage_probes_with_the_repository_params(features, tmp_path):
    result = subprocess.run(
        [sys.executable, "stages/probe.py", "--features", str(features), "--out", str(tmp_path / "probe")], cwd=REPO,
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "best good (logreg avg" in result.stderr
    assert sorted(path.name for path in (tmp_path / "probe").iterdir()) == ["curve.json", "curve.png", "metrics.json"]


def test_the_leaderboard_names_the_best_block(probed, tmp_path):
    _, out = probed
    write_json(EvalFiles(tmp_path / "eval" / "logreg", "good").metrics, {"accuracy": 0.9, "n": 80})
    write_leaderboard(tmp_path / "eval", ["logreg"], ["good"], tmp_path / "board", probe=out / "metrics.json")
    text = (tmp_path / "board" / "leaderboard.md").read_text()
    assert re.search(
        r"^Linear probe over all 4 stored backbone layers: best block `good` \(logreg avg, C=[\d.e-]+, val [01]\.\d{3}, "
        rf"test [01]\.\d{{3}}; raw pixels: val 0\.\d{{3}}, test 0\.\d{{3}}\); curve in {re.escape(str(out / 'curve.png'))}$",
        text, re.MULTILINE,
    ), text
    with pytest.raises(ConfigError, match="no probe metrics at"):
        write_leaderboard(tmp_path / "eval", ["logreg"], ["good"], tmp_path / "other", probe=tmp_path / "none.json")
    assert not (tmp_path / "other").exists()
