"""Tests for pipeline.cli (`python -m pipeline`): the layers table and extract with flags over params.yaml."""

import subprocess
import sys

import h5py
import pytest
import yaml

from pipeline.cli import build_parser, describe_layers, extract_config, human_bytes
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


@pytest.mark.parametrize(("n", "text"), [(500, "500 B"), (1536, "1.5 KiB"), (1572864, "1.5 MiB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


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
