"""Tests for pipeline.cli (`python -m pipeline`): the layers table and extract with flags over params.yaml."""

import csv
import re
import subprocess
import sys

import h5py
import pytest
import yaml

from pipeline.cli import build_parser, describe_layers, extract_config
from pipeline.validation import ConfigError


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True)


def test_help_lists_every_command():
    result = cli("--help")
    assert result.returncode == 0
    assert "layers" in result.stdout and "extract" in result.stdout


def test_layers_prints_shape_and_bytes_per_image():
    result = cli("layers", "vgg16")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("block2_pool "))
    assert line.split()[1:] == ["(56,", "56,", "128)", "1.5", "MiB"]


def test_describe_layers_follows_the_input_size():
    rows = {name: (shape, size) for name, shape, size in describe_layers("mobilenet", (128, 128))}
    assert rows["conv_pw_13_relu"] == ((4, 4, 1024), 4 * 4 * 4 * 1024)


def test_layers_unknown_backbone_is_a_clear_error():
    result = cli("layers", "vgg61")
    assert result.returncode == 2
    assert "backbone must be one of [" in result.stderr and "Received: backbone='vgg61'" in result.stderr




def parse(*args):
    return build_parser().parse_args(["extract", "--images", "x", "--out", "y.h5", *args])


def test_flags_override_params_yaml(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"extract": {
        "backbone": "mobilenet", "input_size": [128, 128], "batch_size": 64,
        "layers": {"conv_pw_7_relu": {"pooling": "none", "dtype": "float16"}},
    }}))
    config = extract_config(parse("--params", str(params), "--layers", "conv_pw_3_relu,conv_pw_5_relu",
                                  "--pooling", "max", "--input-size", "64", "64", "--weights", "null", "--on-error", "fail"))
    assert config.layer_names == ["conv_pw_3_relu", "conv_pw_5_relu"]
    assert {spec.pooling for spec in config.layers} == {"max"}
    assert config.input_size == (64, 64) and config.weights is None and config.on_error == "fail"
    assert config.batch_size == 64  # untouched by the flags, from params.yaml
    kept = extract_config(parse("--params", str(params)))
    assert kept.layers[0].pooling == "none" and kept.layers[0].dtype == "float16"


def test_cluster_flags_override_params_yaml(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"extract": {"layers": ["conv_pw_7_relu"], "cluster": "local:4", "shard_size": 512}}))
    from_file = extract_config(parse("--params", str(params)))
    assert (from_file.cluster, from_file.shard_size) == ("local:4", 512)
    config = extract_config(parse("--params", str(params), "--cluster", "tcp://127.0.0.1:8786", "--shard-size", "64"))
    assert (config.cluster, config.shard_size) == ("tcp://127.0.0.1:8786", 64)
    assert extract_config(parse("--params", str(params), "--cluster", "null")).cluster is None
    with pytest.raises(ConfigError, match=re.escape("extract.shard_size must be an integer >= 1. Received: extract.shard_size=0")):
        extract_config(parse("--params", str(params), "--shard-size", "0"))


def test_without_params_file_layers_are_required(tmp_path):
    with pytest.raises(ConfigError, match=r"extract is missing required key\(s\) \['layers'\]"):
        extract_config(parse("--params", str(tmp_path / "absent.yaml")))


def test_extract_command_writes_a_features_file(digits_dir, tmp_path):
    out = tmp_path / "f.h5"
    result = cli("extract", "--images", str(digits_dir), "--out", str(out), "--params", str(tmp_path / "none.yaml"),
                 "--layers", "conv_pw_3_relu", "--pooling", "max", "--input-size", "64", "64", "--batch-size", "50")
    assert result.returncode == 0, result.stderr
    with h5py.File(out, "r") as f:
        assert f["features/conv_pw_3_relu"].shape == (100, 128)
        assert f.attrs["batch_size"] == 50 and f.attrs["complete"]


@pytest.fixture(scope="module")
def lr_model(features_file, tmp_path_factory):
    from pipeline.config import ClassifierConfig
    from pipeline.train import train_classifier

    out = tmp_path_factory.mktemp("cli_models") / "lr"
    config = ClassifierConfig(name="lr", estimator="logistic_regression", layer="conv_pw_5_relu")
    train_classifier(features_file, config, out)
    return out


def test_predict_prints_top_k_per_image_and_reports_bad_ones(lr_model, digits_dir, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    images = sorted((digits_dir / "train" / "3").iterdir())
    result = cli("predict", "--model", str(lr_model), "--top-k", "2", str(digits_dir / "train" / "3"), str(bad))
    assert result.returncode == 0, result.stderr
    *lines, last = result.stdout.splitlines()
    assert len(lines) == len(images) == 7
    for line, image in zip(lines, images):
        assert re.fullmatch(rf"{re.escape(str(image))}: \d \([01]\.\d\d\), \d \([01]\.\d\d\)", line), line
    assert all(line.split(": ")[1].startswith("3 (") for line in lines)  # its own training images
    assert last.startswith(f"{bad}: ERROR cannot decode image") and "not an image (text file)" in last
    assert "1 of 8 images could not be decoded" in result.stderr


def test_predict_csv_and_missing_model(lr_model, digits_dir, tmp_path):
    out = tmp_path / "predictions.csv"
    result = cli("predict", "--model", str(lr_model), "--csv", str(out), str(digits_dir / "val"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "rank", "label", "probability", "error"]
    images = sorted((digits_dir / "val").rglob("*.png"))
    assert [row["path"] for row in rows] == [str(image) for image in images for _ in range(3)]
    assert [row["rank"] for row in rows] == ["1", "2", "3"] * len(images)
    missing = cli("predict", "--model", str(tmp_path / "no_model"), str(digits_dir / "val" / "0"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert f"model directory not found: {tmp_path / 'no_model'}" in missing.stderr
