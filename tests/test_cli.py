"""Tests for pipeline.cli (`python -m pipeline`): the layers table and extract with flags over params.yaml."""

import csv
import dataclasses
import logging
import re
import subprocess
import sys

import h5py
import pytest
import yaml

from pipeline.cli import build_parser, describe_layers, extract_settings
from pipeline.config import ExtractConfig, LayerSpec
from pipeline.validation import ConfigError


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_help_lists_every_command():
    result = cli("--help")
    assert result.returncode == 0
    assert "layers" in result.stdout and "extract" in result.stdout


@pytest.mark.slow
def test_layers_prints_shape_and_bytes_per_image():
    result = cli("layers", "vgg16")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("block2_pool "))
    # unpooled 56 x 56 x 128 floats; avg or max: 128; pyramid: 21 x 128 (2,688 floats)
    assert line.split()[1:] == ["(56,", "56,", "128)", "1.5", "MiB", "|", "512", "B", "|", "10.5", "KiB"]


def test_describe_layers_follows_the_input_size():
    rows = {name: (shape, size) for name, shape, size in describe_layers("mobilenet", (128, 128))}
    assert rows["conv_pw_13_relu"] == ((4, 4, 1024), 4 * 4 * 4 * 1024)


def test_layers_blocks_prints_only_the_expansion_in_depth_order(capsys):
    args = build_parser().parse_args(["layers", "mobilenet", "--blocks", "--input-size", "32", "32"])
    args.func(args)
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:2] == ["layer", "output"]
    assert [line.split()[0] for line in lines] == [f"conv_pw_{n}_relu" for n in range(1, 14)]
    # unpooled 16 x 16 x 64 floats; avg or max: 64; pyramid: 21 x 64
    assert lines[0].split()[1:] == ["(16,", "16,", "64)", "64.0", "KiB", "|", "256", "B", "|", "5.2", "KiB"]


def test_layers_blocks_of_a_keras_file_is_an_error_listing_its_layers(tmp_path):
    import keras

    inputs = keras.Input((32, 32, 3), name="image")
    path = tmp_path / "mine.keras"
    keras.Model(inputs, keras.layers.Conv2D(4, 3, name="features")(inputs)).save(path)
    args = build_parser().parse_args(["layers", str(path), "--blocks"])
    with pytest.raises(ConfigError, match=re.escape("not for a .keras file. Its 2 layers: image, features.")):
        args.func(args)


def test_layers_blocks_flag_keeps_every_blocks_pooling(outside):
    from pipeline.extraction.blocks import expand_blocks

    config = settings("--layers", "blocks", "--pooling", "pyramid")
    assert config.layers == (LayerSpec("blocks", "pyramid", "float32"),)
    assert {spec.pooling for spec in expand_blocks(config).layers} == {"pyramid"}


@pytest.mark.slow
def test_layers_unknown_backbone_is_a_clear_error():
    result = cli("layers", "vgg61")
    assert result.returncode == 2
    assert "backbone must be one of [" in result.stderr and "Received: backbone='vgg61'" in result.stderr


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """The current folder is one without a params.yaml."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def extract_args(*words):
    return build_parser().parse_args(["extract", "--out", "y.h5", *words])


def parse(*words):
    return extract_args("--images", "x", *words)


def settings(*words):
    """The extract config the flags give."""
    return extract_settings(parse(*words))[1]


def write_params(path, params):
    path.write_text(yaml.safe_dump(params))
    return str(path)


def params_fields(cls, prefix=""):
    """The dotted params key of every field of a config dataclass, nested configs' fields included."""
    for f in dataclasses.fields(cls):
        if not f.metadata.get("param", True):
            continue
        if dataclasses.is_dataclass(f.default_factory):
            yield from params_fields(f.default_factory, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


# A value that is not the default for every key of the extract section: the flag's words, and the params.yaml value.
SAMPLES = {
    "backbone": (["--backbone", "vgg16"], "vgg16"),
    "weights": (["--weights", "null"], None),
    "input_size": (["--input-size", "48", "40"], [48, 40]),
    "interpolation": (["--interpolation", "nearest"], "nearest"),
    "decode": (["--decode", "exact"], "exact"),
    "preprocessing": (["--preprocessing", "torch"], "torch"),
    "layers": (["--layers", "conv_pw_3_relu,conv_pw_5_relu"], ["conv_pw_3_relu", "conv_pw_5_relu"]),
    "pooling": (["--pooling", "max"], "max"),
    "dtype": (["--dtype", "float16"], "float16"),
    "batch_size": (["--batch-size", "64"], 64),
    "compression": (["--compression", "gzip"], "gzip"),
    "on_error": (["--on-error", "fail"], "fail"),
    "mixed_precision": (["--mixed-precision"], True),
    "xla": (["--xla"], True),
    "pixels": (["--pixels", "8"], 8),
    "split.val_fraction": (["--split-val-fraction", "0.2"], 0.2),
    "split.test_fraction": (["--split-test-fraction", "0.25"], 0.25),
    "split.seed": (["--split-seed", "7"], 7),
    "augment_views": (["--augment-views", "2"], 2),
    "augment.flip": (["--augment-flip", "horizontal"], "horizontal"),
    "augment.rotation": (["--augment-rotation", "30"], 30),
    "augment.crop": (["--augment-crop", "0.5"], 0.5),
    "augment.seed": (["--augment-seed", "3"], 3),
    "cluster": (["--cluster", "local:2"], "local:2"),
    "shard_size": (["--shard-size", "64"], 64),
    "reuse": (["--reuse", "0"], 0),
}


def test_every_extract_field_has_a_flag_with_its_help(capsys):
    keys = [*params_fields(ExtractConfig), *params_fields(LayerSpec)]  # the section-wide pooling and dtype
    assert "split.val_fraction" in keys and "augment.rotation" in keys
    assert set(SAMPLES) == set(keys), "every key of the extract section needs a sample value below"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["extract", "--help"])
    help_text = capsys.readouterr().out
    for key in keys:
        flag = "--" + key.replace(".", "-").replace("_", "-")
        assert re.search(rf"^  {re.escape(flag)}[ ,\n]", help_text, re.MULTILINE), f"no flag {flag} for extract.{key}"
    fields = {f.name: f for f in dataclasses.fields(ExtractConfig)}
    assert all(f.metadata.get("help") for f in fields.values()), "every field's help text lives beside it"
    words = " ".join(help_text.split())
    assert "--split-seed SEED keys the content hash that decides each image's split (default: 0)" in words
    assert ("(comma-separated), a mapping name -> {pooling, dtype}, or blocks (the output of every block, in depth "
            "order) (default: the backbone's last layer)") in words


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_a_flag_gives_what_the_same_value_in_params_yaml_gives(key, tmp_path):
    words, value = SAMPLES[key]
    base = {"layers": ["conv_pw_7_relu"]}
    section, _, name = key.rpartition(".")
    in_file = {**base, section: {name: value}} if section else {**base, key: value}
    by_flag = settings("--params", write_params(tmp_path / "base.yaml", {"extract": base}), *words)
    by_file = settings("--params", write_params(tmp_path / "params.yaml", {"extract": in_file}))
    assert by_flag == by_file
    assert by_flag != ExtractConfig.from_params(base)


def test_flags_override_params_yaml(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"extract": {
        "backbone": "mobilenet", "input_size": [128, 128], "batch_size": 64, "xla": True,
        "layers": {"conv_pw_7_relu": {"pooling": "none", "dtype": "float16"}},
    }})
    config = settings("--params", params, "--layers", "conv_pw_3_relu,conv_pw_5_relu", "--pooling", "max",
                      "--input-size", "64", "64", "--weights", "null", "--on-error", "fail", "--no-xla")
    assert config.layer_names == ["conv_pw_3_relu", "conv_pw_5_relu"]
    assert {spec.pooling for spec in config.layers} == {"max"}
    assert config.input_size == (64, 64) and config.weights is None and config.on_error == "fail"
    assert config.xla is False
    assert config.batch_size == 64  # untouched by the flags, from params.yaml
    kept = settings("--params", params)
    assert kept.layers[0].pooling == "none" and kept.layers[0].dtype == "float16" and kept.xla is True
    assert settings("--params", params, "--input-size", "null").input_size is None
    every_layer = settings("--params", params, "--pooling", "max")  # over the layer's own pooling, keeping its dtype
    assert (every_layer.layers[0].pooling, every_layer.layers[0].dtype) == ("max", "float16")


def test_cluster_flags_override_params_yaml(tmp_path):
    params = write_params(tmp_path / "params.yaml", {"extract": {
        "layers": ["conv_pw_7_relu"], "cluster": "local:4", "shard_size": 512,
    }})
    from_file = settings("--params", params)
    assert (from_file.cluster, from_file.shard_size) == ("local:4", 512)
    config = settings("--params", params, "--cluster", "tcp://127.0.0.1:8786", "--shard-size", "64")
    assert (config.cluster, config.shard_size) == ("tcp://127.0.0.1:8786", 64)
    assert settings("--params", params, "--cluster", "null").cluster is None
    with pytest.raises(ConfigError, match=re.escape("extract.shard_size must be an integer >= 1. Received: extract.shard_size=0")):
        settings("--params", params, "--shard-size", "0")


def test_in_a_project_the_keys_taken_from_params_yaml_are_logged(outside, caplog):
    write_params(outside / "params.yaml", {
        "data": {"images": "photos"},
        "extract": {"backbone": "mobilenet", "layers": ["conv_pw_7_relu"], "augment_views": 2, "augment": {"rotation": 5}},
        "train": {"layers": ["conv_pw_7_relu"]},
    })
    caplog.set_level(logging.INFO, logger="pipeline.cli")
    data, config = extract_settings(extract_args("--augment-views", "0", "--augment-seed", "4"))
    assert data.images == "photos" and data.image_root is None
    assert config.augment_views == 0  # not params.yaml's 2
    assert (config.augment.rotation, config.augment.seed) == (5.0, 4)
    assert caplog.messages == [(
        "took data.images, extract.augment.rotation, extract.backbone, extract.layers from params.yaml "
        "(flags override them)"
    )]


def test_image_root_flag_overrides_data_image_root(tmp_path, caplog):
    params = write_params(tmp_path / "p.yaml", {
        "data": {"images": "shoot/labels.csv", "image_root": "shoot/jpegs"}, "extract": {"layers": ["conv_pw_7_relu"]},
    })
    caplog.set_level(logging.INFO, logger="pipeline.cli")
    data, _ = extract_settings(extract_args("--params", params, "--image-root", "elsewhere"))
    assert (data.images, data.image_root) == ("shoot/labels.csv", "elsewhere")
    assert caplog.messages == [f"took data.images, extract.layers from {params} (flags override them)"]
    by_flag, _ = extract_settings(extract_args("--params", params, "--images", "my_photos"))
    assert (by_flag.images, by_flag.image_root) == ("my_photos", None)  # data.image_root belongs to data.images


def test_a_params_file_that_is_named_must_exist(tmp_path):
    absent = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"params file not found: {absent}")):
        settings("--params", str(absent), "--layers", "conv_pw_7_relu")


def test_without_images_or_a_data_section_is_an_error(outside):
    with pytest.raises(ConfigError, match=re.escape("extract needs --images (an image folder or a .csv manifest): "
                                                    "there is no params.yaml here to take data.images from")):
        extract_settings(extract_args("--layers", "conv_pw_7_relu"))
    params = write_params(outside / "p.yaml", {"extract": {"layers": ["conv_pw_7_relu"]}})
    with pytest.raises(ConfigError, match=re.escape(f"{params} has no data section to take data.images from")):
        extract_settings(extract_args("--params", params))


def test_unknown_and_invalid_values_are_the_configs_errors(outside, capsys):
    with pytest.raises(ConfigError, match=re.escape(
        "extract.on_error must be one of ['fail', 'skip']. Received: extract.on_error='ignore'"
    )):
        settings("--on-error", "ignore", "--layers", "conv_pw_7_relu")
    params = write_params(outside / "params.yaml", {"extract": {"augment_view": 2}})
    with pytest.raises(ConfigError, match=re.escape(
        "extract.augment_view must be a key of extract, one of ["
    ) + r".*\. Received: extract.augment_view=2 Did you mean 'augment_views'\?$"):
        settings("--params", params)
    with pytest.raises(SystemExit) as exit_:
        parse("--layers", "[conv_pw_7_relu")
    assert exit_.value.code == 2
    assert "argument --layers: '[conv_pw_7_relu' is not a YAML value" in capsys.readouterr().err


def test_an_invalid_flag_exits_2_with_one_line_and_no_traceback(digits_dir, tmp_path):
    result = cli("extract", "--images", str(digits_dir), "--out", "f.h5", "--augment-rotation", "200", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "extract.augment.rotation must be a number of degrees in [0, 180]. Received: extract.augment.rotation=200"
    )
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.parametrize("backbone, layer", [("vgg16", "block5_pool"), ("resnet50", "conv5_block3_out")])
def test_layers_default_to_the_backbones_last_block(backbone, layer, outside, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.cli")
    config = settings("--backbone", backbone, "--input-size", "32", "32")
    assert config.layer_names == [layer]
    assert (f"no --layers flag or extract.layers key: extracting {layer}, the output of {backbone} without its "
            "classifier (include_top=False), as Keras tutorials do") in caplog.messages


def test_layers_default_to_a_keras_files_last_layer(outside, caplog):
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="features")(inputs)
    path = outside / "mine.keras"
    keras.Model(inputs, keras.layers.Activation("relu", name="last_relu")(x)).save(path)
    caplog.set_level(logging.INFO, logger="pipeline.cli")
    config = settings("--backbone", str(path), "--weights", "null", "--preprocessing", "tf")
    assert config.layer_names == ["last_relu"]
    assert f"extracting last_relu, the last layer of {path}" in caplog.text


def test_the_default_layer_keeps_its_name_in_the_extraction_model(outside):
    from pipeline.extraction.backbone import architecture

    layer = settings("--backbone", "mobilenetv3small", "--input-size", "32", "32").layer_names[0]
    assert layer.startswith("activation")  # an automatic name, numbered per Keras session
    assert architecture("mobilenetv3small", (32, 32)).layers[-1].name == layer


@pytest.mark.slow
def test_outside_a_project_extract_works_with_the_defaults(digits_dir, tmp_path):
    result = cli("extract", "--images", str(digits_dir), "--out", "f.h5", "--input-size", "32", "32", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no params.yaml here: the flags and the defaults only" in result.stderr
    assert "extracting conv_pw_13_relu, the output of mobilenet without its classifier" in result.stderr
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert list(f["features"]) == ["conv_pw_13_relu"]  # no pixels, and no views (augment_views 0)
        assert f["features/conv_pw_13_relu"].shape == (100, 1024)
        assert "views" not in f and f.attrs["complete"]


@pytest.fixture(scope="module")
def lr_model(features_file, tmp_path_factory):
    from pipeline.classification.train import train_classifier
    from pipeline.config import ClassifierConfig

    out = tmp_path_factory.mktemp("cli_models") / "lr"
    config = ClassifierConfig(name="lr", estimator="logistic_regression", layer="conv_pw_5_relu")
    train_classifier(features_file, config, out)
    return out


@pytest.mark.slow
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


@pytest.mark.slow
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
