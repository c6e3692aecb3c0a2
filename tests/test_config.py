"""Tests for pipeline.config: params sections load into validated frozen dataclasses; bad input names key and allowed values."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from pipeline.config import (
    ClassifierConfig,
    ExtractConfig,
    LayerSpec,
    PrepareConfig,
    TrainConfig,
    config_hash,
    load_params,
    section,
)
from pipeline.validation import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
CLASSIFIER_KEYS = "['estimator', 'out_of_core', 'params', 'passes', 'pca', 'pool', 'scale', 'search']"


def extract(**overrides):
    """A valid extract section with ``overrides`` applied."""
    return {"backbone": "mobilenet", "layers": ["conv_pw_7_relu"], **overrides}


# --- the repository's own params.yaml -------------------------------------------------------------------------


def test_repo_params_yaml_loads_into_every_config():
    params = load_params(REPO_PARAMS)
    prepare = PrepareConfig.from_params(section(params, "prepare"))
    extract_config = ExtractConfig.from_params(section(params, "extract"))
    train = TrainConfig.from_params(section(params, "train"))
    classifiers = section(params, "classifiers")
    configs = [ClassifierConfig.from_params(classifiers, name, layer) for name in classifiers for layer in train.layers]

    assert isinstance(prepare, PrepareConfig)
    assert extract_config.layer_names
    assert "pixels" in train.layers, "the leaderboard's raw-pixel baseline"
    assert len(configs) == len(classifiers) * len(train.layers)
    stored = [spec.name for spec in extract_config.stored_layers]
    for config in configs:
        assert set(config.layers) <= set(stored), f"{config.run} reads a layer that is not extracted"


# --- load_params and section -----------------------------------------------------------------------------------


def test_load_params_reads_a_yaml_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prepare:\n  seed: 3\n")
    assert load_params(path) == {"prepare": {"seed": 3}}


def test_load_params_reads_an_empty_file_as_no_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path) == {}


def test_load_params_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"params file not found: {path}")):
        load_params(path)


def test_load_params_refuses_a_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- prepare\n- extract\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path} must hold a mapping of sections. Received: list")):
        load_params(path)


def test_section_returns_it_or_names_the_missing_one_and_those_present():
    params = {"prepare": {"seed": 1}, "extract": {}}
    assert section(params, "prepare") == {"seed": 1}
    with pytest.raises(ConfigError, match=re.escape("no 'classifiers' section; sections present: ['extract', 'prepare']")):
        section(params, "classifiers")


# --- PrepareConfig --------------------------------------------------------------------------------------------


def test_prepare_config_from_params_fills_defaults_and_is_frozen():
    config = PrepareConfig.from_params({"image_size": 16, "per_class_limit": 10})
    assert config == PrepareConfig(image_size=16, val_fraction=0.15, test_fraction=0.15, per_class_limit=10, seed=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1


def test_prepare_config_unknown_key_lists_the_allowed_keys():
    allowed = "['image_size', 'per_class_limit', 'seed', 'test_fraction', 'val_fraction']"
    with pytest.raises(ConfigError) as error:
        PrepareConfig.from_params({"val_fractoin": 0.2})
    assert "unknown key prepare.val_fractoin; did you mean 'val_fraction'?" in str(error.value)
    assert f"Keys of prepare must be one of {allowed}" in str(error.value)


@pytest.mark.parametrize("field", ["val_fraction", "test_fraction"])
@pytest.mark.parametrize("value", [0, 1, -0.2, 1.2, "0.1", None])
def test_prepare_config_fractions_must_lie_in_the_open_unit_interval(field, value):
    message = f"prepare.{field} must be a number in (0, 1). Received: prepare.{field}={value!r}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        PrepareConfig(**{field: value})


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.6, 0.5)])
def test_prepare_config_fractions_must_leave_a_training_share(val, test):
    message = f"prepare.val_fraction + prepare.test_fraction must be below 1. Received: {val} + {test}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        PrepareConfig(val_fraction=val, test_fraction=test)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 7}, "prepare.image_size must be an integer >= 8. Received: prepare.image_size=7"),
        ({"image_size": 16.0}, "prepare.image_size must be an integer >= 8. Received: prepare.image_size=16.0"),
        ({"per_class_limit": 2}, "prepare.per_class_limit must be an integer >= 3. Received: prepare.per_class_limit=2"),
        ({"seed": "0"}, "prepare.seed must be an integer. Received: prepare.seed='0'"),
    ],
)
def test_prepare_config_integer_fields_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        PrepareConfig(**kwargs)


# --- ExtractConfig and LayerSpec ------------------------------------------------------------------------------


def test_extract_layer_list_uses_the_section_pooling_and_dtype():
    config = ExtractConfig.from_params(extract(layers=["a", "b"], pooling="max", dtype="float16"))
    assert config.layers == (LayerSpec("a", "max", "float16"), LayerSpec("b", "max", "float16"))
    assert config.layer_names == ["a", "b"]


def test_extract_layer_list_defaults_to_avg_float32():
    assert ExtractConfig.from_params(extract(layers=["a"])).layers == (LayerSpec("a", "avg", "float32"),)


def test_extract_layer_mapping_overrides_section_defaults_per_layer():
    layers = {"a": {"pooling": "none"}, "b": {"dtype": "float16"}, "c": None}
    config = ExtractConfig.from_params(extract(layers=layers, pooling="max"))
    assert config.layers == (
        LayerSpec("a", "none", "float32"),
        LayerSpec("b", "max", "float16"),
        LayerSpec("c", "max", "float32"),
    )


def test_extract_layers_as_comma_separated_text():
    assert ExtractConfig.from_params(extract(layers="a, b,")).layer_names == ["a", "b"]


def test_extract_layer_mapping_unknown_option_lists_the_allowed_options():
    with pytest.raises(ConfigError, match=re.escape("Keys of extract.layers.a must be one of ['dtype', 'pooling']")):
        ExtractConfig.from_params(extract(layers={"a": {"pool": "avg"}}))


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ({"a": {"pooling": "mean"}}, "extract.layers.a.pooling must be one of ['avg', 'max', 'none']. Received: extract.layers.a.pooling='mean'"),
        ({"a": {"dtype": "float64"}}, "extract.layers.a.dtype must be one of ['float16', 'float32']. Received: extract.layers.a.dtype='float64'"),
        ([], "extract.layers must name at least one layer."),
        (["a", "a"], "extract.layers must not repeat a layer. Received: ['a', 'a']"),
        ([""], "layer names must be non-empty strings. Received: ''"),
        (7, "extract.layers must be a list of layer names or a mapping. Received: 7"),
    ],
)
def test_extract_bad_layers_are_refused(layers, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExtractConfig.from_params(extract(layers=layers))


def test_extract_section_pooling_default_is_checked_for_each_layer():
    message = "extract.layers.a.pooling must be one of ['avg', 'max', 'none']. Received: extract.layers.a.pooling='sum'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExtractConfig.from_params(extract(layers=["a"], pooling="sum"))


def test_extract_unknown_key_lists_the_allowed_keys():
    allowed = (
        "['backbone', 'batch_size', 'cluster', 'compression', 'dtype', 'input_size', 'interpolation', 'layers', "
        "'mixed_precision', 'on_error', 'pixels', 'pooling', 'preprocessing', 'shard_size', 'split', 'weights', 'xla']"
    )
    with pytest.raises(ConfigError) as error:
        ExtractConfig.from_params(extract(batchsize=8))
    assert "unknown key extract.batchsize; did you mean 'batch_size'?" in str(error.value)
    assert f"Keys of extract must be one of {allowed}" in str(error.value)


def test_extract_layers_key_is_required():
    with pytest.raises(ConfigError, match=re.escape("extract is missing required key(s) ['layers']")):
        ExtractConfig.from_params({"backbone": "mobilenet"})


def test_extract_input_size_list_becomes_a_tuple_and_null_is_allowed():
    assert ExtractConfig.from_params(extract(input_size=[64, 96])).input_size == (64, 96)
    assert ExtractConfig.from_params(extract(input_size=None)).input_size is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"input_size": [16, 64]}, "extract.input_size must be an integer >= 32. Received: extract.input_size=16"),
        ({"input_size": 64}, "extract.input_size must be [height, width] or null. Received: 64"),
        ({"input_size": [64, 64, 3]}, "extract.input_size must be [height, width] or null. Received: [64, 64, 3]"),
        ({"interpolation": "cubic"}, "extract.interpolation must be one of ['bicubic', 'bilinear', 'box', 'hamming', 'lanczos', 'nearest']. Received: extract.interpolation='cubic'"),
        ({"batch_size": 0}, "extract.batch_size must be an integer >= 1. Received: extract.batch_size=0"),
        ({"backbone": ""}, "extract.backbone must be a model name or a .keras path. Received: ''"),
        ({"weights": ""}, "extract.weights must be 'imagenet', null or a weights file path. Received: ''"),
        ({"shard_size": 0}, "extract.shard_size must be an integer >= 1. Received: extract.shard_size=0"),
        ({"cluster": "local:0"}, "extract.cluster must be null, 'local:N' (N >= 1 worker processes) or a scheduler address 'tcp://host:port'. Received: extract.cluster='local:0'"),
        ({"cluster": "tcp://scheduler"}, "extract.cluster must be null, 'local:N' (N >= 1 worker processes) or a scheduler address 'tcp://host:port'. Received: extract.cluster='tcp://scheduler'"),
        ({"cluster": 2}, "Received: extract.cluster=2"),
    ],
)
def test_extract_bad_values_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExtractConfig.from_params(extract(**overrides))


def test_extract_weights_may_be_null():
    assert ExtractConfig.from_params(extract(weights=None)).weights is None


def test_feature_identity_excludes_what_does_not_change_values_and_is_json_data():
    config = ExtractConfig.from_params(extract(input_size=[64, 64], batch_size=8, layers={"a": {"pooling": "max"}}))
    identity = config.feature_identity()
    assert not {"batch_size", "compression", "on_error", "split"} & set(identity)
    assert set(identity) == {
        "backbone", "weights", "input_size", "interpolation", "preprocessing", "layers", "mixed_precision", "xla", "pixels"
    }
    assert identity["layers"] == ({"name": "a", "pooling": "max", "dtype": "float32"},)
    json.dumps(identity)


def test_config_hash_ignores_batch_size_but_not_what_changes_features():
    base = ExtractConfig.from_params(extract(batch_size=8))
    same = ExtractConfig.from_params(extract(batch_size=256))
    assert config_hash(base.feature_identity()) == config_hash(same.feature_identity())
    for changed in [extract(pooling="max"), extract(dtype="float16"), extract(interpolation="nearest"), extract(weights=None), extract(input_size=[64, 64])]:
        assert config_hash(ExtractConfig.from_params(changed).feature_identity()) != config_hash(base.feature_identity())


def test_where_extraction_runs_is_read_but_not_hashed():
    config = ExtractConfig.from_params(extract(cluster="local:2", shard_size=64))
    assert (config.cluster, config.shard_size) == ("local:2", 64)
    assert ExtractConfig.from_params(extract(cluster="tcp://10.0.0.5:8786")).cluster == "tcp://10.0.0.5:8786"
    assert ExtractConfig.from_params(extract(cluster="tcp://[::1]:8786")).cluster == "tcp://[::1]:8786"
    default = ExtractConfig.from_params(extract())
    assert (default.cluster, default.shard_size) == (None, 1024)
    assert not {"cluster", "shard_size"} & set(config.feature_identity())
    assert config_hash(config.feature_identity()) == config_hash(default.feature_identity())
    assert ExtractConfig.from_params(config.to_params()) == config


def test_config_hash_is_stable_and_independent_of_key_order():
    # Pinned to sha256(b'{"a": 1, "b": [1, 2]}'): a change silently invalidates every recorded hash.
    assert config_hash({"a": 1, "b": [1, 2]}) == "e6f20bdc3757e5e7be4e316deff4196f19cf5954ffc76b1896228680fcdef66c"
    assert config_hash({"b": [1, 2], "a": 1}) == config_hash({"a": 1, "b": [1, 2]})
    assert config_hash({"a": 1, "b": [2, 1]}) != config_hash({"a": 1, "b": [1, 2]})


# --- ClassifierConfig -----------------------------------------------------------------------------------------

CLASSIFIERS = {
    "logreg": {"estimator": "logistic_regression", "params": {"C": 1.0}},
    "svm": {"estimator": "linear_svm", "scale": False},
}


def test_classifier_config_reads_one_entry_with_defaults():
    assert ClassifierConfig.from_params(CLASSIFIERS, "logreg", "a") == ClassifierConfig(
        name="logreg", estimator="logistic_regression", layer="a", scale=True, params={"C": 1.0}
    )
    svm = ClassifierConfig.from_params(CLASSIFIERS, "svm", "b")
    assert svm.scale is False and svm.params == {} and svm.out_of_core == "auto" and svm.passes == 5
    assert svm.run == "svm/b"


def test_classifier_layer_joined_by_plus_is_a_concatenation():
    config = ClassifierConfig.from_params(CLASSIFIERS, "svm", "a+b")
    assert config.layers == ("a", "b") and config.layer == ("a", "b") and config.run == "svm/a+b"
    with pytest.raises(ConfigError, match=re.escape("classifiers.svm.layer must be a layer name, or names joined by '+'")):
        ClassifierConfig.from_params(CLASSIFIERS, "svm", "a++b")


def test_a_layer_in_a_classifier_entry_points_to_train_layers():
    with pytest.raises(ConfigError, match=r"classifiers\.svm\.layer is not a classifier setting: .* train\.layers"):
        ClassifierConfig.from_params({"svm": {"estimator": "linear_svm", "layer": "a"}}, "svm", "a")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"out_of_core": "sometimes"}, "classifiers.x.out_of_core must be one of [False, True, 'auto']. Received: classifiers.x.out_of_core='sometimes'"),
        ({"passes": 0}, "classifiers.x.passes must be an integer >= 1. Received: classifiers.x.passes=0"),
    ],
)
def test_out_of_core_settings_are_checked(entry, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ClassifierConfig.from_params({"x": {"estimator": "sgd", **entry}}, "x", "l")


def test_classifier_config_unknown_name_lists_the_classifiers():
    message = "classifier must be one of ['logreg', 'svm']. Received: classifier='rf'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        ClassifierConfig.from_params(CLASSIFIERS, "rf", "a")


def test_classifier_config_unknown_key_lists_the_allowed_keys():
    classifiers = {"logreg": {**CLASSIFIERS["logreg"], "parms": {}}}
    with pytest.raises(ConfigError) as error:
        ClassifierConfig.from_params(classifiers, "logreg", "a")
    assert "unknown key classifiers.logreg.parms; did you mean 'params'?" in str(error.value)
    assert f"Keys of classifiers.logreg must be one of {CLASSIFIER_KEYS}" in str(error.value)


def test_classifier_config_requires_an_estimator():
    with pytest.raises(ConfigError, match=re.escape("classifiers.x is missing required key(s) ['estimator']")):
        ClassifierConfig.from_params({"x": {"params": {}}}, "x", "l")


@pytest.mark.parametrize(
    ("classifiers", "message"),
    [
        (None, "classifiers must be a mapping. Received: classifiers=None"),
        ({"x": None}, "classifiers.x must be a mapping. Received: classifiers.x=None"),
        ({"x": {"estimator": "e", "params": [1]}}, "classifiers.x.params must be a mapping. Received: classifiers.x.params=[1]"),
        ({"x": {"estimator": "e", "scale": "yes"}}, "classifiers.x.scale must be true or false. Received: 'yes'"),
    ],
)
def test_classifier_config_bad_shapes_are_refused(classifiers, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ClassifierConfig.from_params(classifiers, "x", "l")


def test_classifier_config_params_are_copied():
    params = {"C": 1.0}
    config = ClassifierConfig.from_params({"x": {"estimator": "e", "params": params}}, "x", "l")
    params["C"] = 2.0
    assert config.params == {"C": 1.0}


def test_extract_options_for_writing_and_errors_are_checked():
    config = ExtractConfig.from_params(extract(compression="gzip", on_error="fail", split={"val_fraction": 0.2}))
    assert (config.compression, config.on_error, config.split.val_fraction, config.split.seed) == ("gzip", "fail", 0.2, 0)
    assert ExtractConfig.from_params(extract()).batch_size == "auto"
    with pytest.raises(ConfigError, match=re.escape("extract.on_error must be one of ['fail', 'skip']. Received: extract.on_error='ignore'")):
        ExtractConfig.from_params(extract(on_error="ignore"))
    with pytest.raises(ConfigError, match=re.escape("extract.compression must be one of ['gzip', 'lzf']")):
        ExtractConfig.from_params(extract(compression="zip"))
    with pytest.raises(ConfigError, match=re.escape("unknown key extract.split.seeds; did you mean 'seed'?")):
        ExtractConfig.from_params(extract(split={"seeds": 1}))
    with pytest.raises(ConfigError, match=re.escape("extract.xla must be true or false. Received: 'yes'")):
        ExtractConfig.from_params(extract(xla="yes"))


def test_to_params_round_trips():
    config = ExtractConfig.from_params(extract(
        input_size=[64, 64], layers={"a": {"pooling": "none", "dtype": "float16"}, "b": {}}, split={"seed": 3}, xla=True
    ))
    assert ExtractConfig.from_params(config.to_params()) == config
    json.dumps(config.to_params())


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"method": "bayes", "space": {"C": [1]}}, "search.method must be one of ['grid', 'random']"),
        ({"space": {}}, "search.space must name at least one hyper-parameter"),
        ({"space": {"C": 1}}, "search.space.C must be a non-empty list of values"),
        ({"space": {"C": {"loguniform": [0.1, 1]}}}, "search.space.C must be a list of values. Received"),
        ({"method": "random", "space": {"C": {"normal": [0, 1]}}}, "search.space.C distribution must be one of"),
        ({"space": {"C": [1]}, "cv": 1}, "search.cv must be an integer >= 2"),
        ({"space": {"C": [1]}, "n_jobs": 0}, "search.n_jobs must be -1 (all cores) or an integer >= 1"),
        ({"grid": {"C": [1]}}, "unknown key search.grid"),
    ],
)
def test_search_section_is_validated(search, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ClassifierConfig(name="c", estimator="knn", layer="l", search=search)


# --- TrainConfig ------------------------------------------------------------------------------------------------


def test_train_config_reads_layers_and_sizes():
    config = TrainConfig.from_params({"layers": ["pixels", "a+b"], "memory_budget": "1GiB", "chunk_size": "16MiB"})
    assert config == TrainConfig(layers=("pixels", "a+b"), memory_budget=2**30, chunk_size=16 * 2**20)
    assert TrainConfig.from_params({"layers": ["a"]}).memory_budget == 2 << 30


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "train is missing required key(s) ['layers']"),
        ({"layers": []}, "train.layers must be a non-empty list of layer names (a+b concatenates). Received: layers=[]"),
        ({"layers": "a"}, "train.layers must be a non-empty list"),
        ({"layers": ["a+"]}, "train.layers must be a non-empty list"),
        ({"layers": ["a", "a"]}, "train.layers must not repeat an entry. Received: layers=['a', 'a']"),
        ({"layers": ["a"], "memory_budget": "lots"}, "train.memory_budget must be a number of bytes or a size like '512MiB'"),
        ({"layers": ["a"], "memory_budget": "1MiB", "chunk_size": "512KiB"}, "train.chunk_size must be at most train.memory_budget / 4"),
        ({"layers": ["a"], "cluster": "local:2"}, "unknown key train.cluster"),
        ({"layers": ["a"], "budget": 1}, "unknown key train.budget"),
    ],
)
def test_train_config_is_validated(section, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig.from_params(section)


def test_pixels_is_reserved_for_the_raw_pixel_baseline():
    config = ExtractConfig.from_params(extract(pixels=16))
    assert [spec.name for spec in config.stored_layers] == [*config.layer_names, "pixels"]
    assert config.stored_layers[-1] == LayerSpec("pixels", pooling="none", dtype="float32")
    assert ExtractConfig.from_params(config.to_params()) == config
    assert config_hash(config.feature_identity()) != config_hash(ExtractConfig.from_params(extract()).feature_identity())
    assert ExtractConfig.from_params(extract()).stored_layers == ExtractConfig.from_params(extract()).layers
    with pytest.raises(ConfigError, match=re.escape("extract.layers must not name 'pixels': it is the raw-pixel baseline")):
        ExtractConfig.from_params(extract(layers=["pixels"]))
    with pytest.raises(ConfigError, match=re.escape("extract.pixels must be an integer >= 1. Received: extract.pixels=0")):
        ExtractConfig.from_params(extract(pixels=0))
