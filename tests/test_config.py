"""Tests for pipeline.config: params sections load into validated frozen dataclasses; bad input names key and allowed values."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from pipeline.config import (
    AugmentConfig,
    ClassifierConfig,
    DataConfig,
    ExtractConfig,
    LayerSpec,
    PrepareConfig,
    TrainConfig,
    config_hash,
    load_params,
    param_fields,
    param_keys,
    section,
)
from pipeline.extraction.provenance import config_identity
from pipeline.validation import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
CLASSIFIER_KEYS = "['augmented', 'estimator', 'out_of_core', 'params', 'passes', 'pca', 'pool', 'scale', 'search']"


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
    assert DataConfig.from_params(section(params, "data")) == DataConfig()  # the demo digits by default
    assert extract_config.layer_names
    assert "pixels" in train.layers, "the leaderboard's raw-pixel baseline"
    assert len(configs) == len(classifiers) * len(train.layers)
    stored = [spec.name for spec in extract_config.stored_layers]
    for config in configs:
        assert set(config.layers) <= set(stored), f"{config.run} reads a layer that is not extracted"


# --- data: where the images are -------------------------------------------------------------------------------


def test_data_root_is_the_folder_or_for_a_csv_its_image_root(tmp_path):
    assert DataConfig(images="photos").root == Path("photos")
    assert DataConfig(images="shoot/labels.CSV").root == Path("shoot")
    assert DataConfig(images="/a/labels.csv", image_root="/b/jpegs").root == Path("/b/jpegs")
    (tmp_path / "odd.csv").mkdir()  # a folder named like a CSV is a folder source
    assert DataConfig(images=str(tmp_path / "odd.csv")).root == tmp_path / "odd.csv"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"images": ""}, "data.images must be the path of an image folder or a .csv manifest. Received: data.images=''"),
        ({"images": 3}, "data.images must be the path of an image folder or a .csv manifest. Received: data.images=3"),
        ({"images": "photos", "image_root": "elsewhere"},
         "data.image_root applies to a .csv manifest only (a folder is its own image root): set it to null, or point "
         "data.images at a .csv file. Received: data.images='photos', data.image_root='elsewhere'"),
        ({"images": "a.csv", "image_root": ""}, "data.image_root must be null or the folder a CSV manifest's filenames "
         "are relative to. Received: data.image_root=''"),
        ({"image_root": None}, "data must be a mapping with the required key(s) ['images']"),
        ({"images": "a", "imagse": "b"}, "data.imagse must be a key of data, one of ['image_root', 'images']. Received: data.imagse='b' Did you mean 'images'?"),
    ],
)
def test_bad_data_section_names_the_key(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        DataConfig.from_params(data)


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
    message = f"prepare.val_fractoin must be a key of prepare, one of {allowed}. Received: prepare.val_fractoin=0.2"
    assert str(error.value) == f"{message} Did you mean 'val_fraction'?"


@pytest.mark.parametrize("field", ["val_fraction", "test_fraction"])
@pytest.mark.parametrize("value", [0, 1, -0.2, 1.2, "0.1", None])
def test_prepare_config_fractions_must_lie_in_the_open_unit_interval(field, value):
    message = f"prepare.{field} must be a number in (0, 1). Received: prepare.{field}={value!r}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        PrepareConfig(**{field: value})


@pytest.mark.parametrize(("val", "test"), [(0.5, 0.5), (0.6, 0.5)])
def test_prepare_config_fractions_must_leave_a_training_share(val, test):
    message = (
        "prepare.val_fraction + prepare.test_fraction must be below 1 (the rest is the train split). "
        f"Received: prepare.val_fraction={val}, prepare.test_fraction={test}"
    )
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
    with pytest.raises(ConfigError, match=re.escape("extract.layers.a.pool must be a key of extract.layers.a, one of ['dtype', 'pooling']")):
        ExtractConfig.from_params(extract(layers={"a": {"pool": "avg"}}))


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ({"a": {"pooling": "mean"}}, "extract.layers.a.pooling must be one of ['avg', 'max', 'none', 'pyramid']. Received: extract.layers.a.pooling='mean'"),
        ({"a": {"dtype": "float64"}}, "extract.layers.a.dtype must be one of ['float16', 'float32']. Received: extract.layers.a.dtype='float64'"),
        ([], "extract.layers must be a non-empty list of layer names. Received: extract.layers=[]"),
        (["a", "a"], "extract.layers must not repeat a layer. Received: extract.layers=['a', 'a']"),
        ([""], "extract.layers must be a list of layer names, a mapping name -> {pooling, dtype}, or 'blocks'. "
               "Received: extract.layers=['']"),
        ({"": {}}, "Received: extract.layers={'': {}}"),
        (7, "extract.layers must be a list of layer names, a mapping name -> {pooling, dtype}, or 'blocks'. "
            "Received: extract.layers=7"),
        ("blocks, conv_pw_1_relu", "extract.layers must be 'blocks' alone (the output of every block) or layer names "
                                   "without it. Received: extract.layers=['blocks', 'conv_pw_1_relu']"),
    ],
)
def test_extract_bad_layers_are_refused(layers, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExtractConfig.from_params(extract(layers=layers))


@pytest.mark.parametrize("layers", ["blocks", ["blocks"], {"blocks": None}])
def test_extract_layers_blocks_is_one_entry_with_the_default_pooling_for_stage_one_to_expand(layers):
    config = ExtractConfig.from_params(extract(layers=layers))
    assert config.blocks and config.layers == (LayerSpec("blocks", "avg", "float32"),)
    assert ExtractConfig.from_params(config.to_params()) == config
    assert not ExtractConfig.from_params(extract()).blocks


def test_extract_layers_blocks_as_a_mapping_takes_its_own_pooling_and_dtype():
    config = ExtractConfig.from_params(extract(layers={"blocks": {"pooling": "pyramid"}}, dtype="float16"))
    assert config.layers == (LayerSpec("blocks", "pyramid", "float16"),)


@pytest.mark.parametrize("layers", [["a"], {"a": {"dtype": "float16"}}])
def test_extract_section_pooling_default_is_reported_under_the_key_written(layers):
    message = "extract.pooling must be one of ['avg', 'max', 'none', 'pyramid']. Received: extract.pooling='sum'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExtractConfig.from_params(extract(layers=layers, pooling="sum"))
    message = "extract.dtype must be one of ['float16', 'float32']. Received: extract.dtype='int8'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExtractConfig.from_params(extract(layers=layers, dtype="int8"))


def test_extract_unknown_key_lists_the_allowed_keys():
    allowed = (
        "['augment', 'augment_views', 'backbone', 'batch_size', 'cluster', 'compression', 'decode', 'dtype', 'input_size', "
        "'interpolation', 'layers', 'mixed_precision', 'on_error', 'pixels', 'pooling', 'preprocessing', 'reuse', "
        "'shard_size', 'split', 'weights', 'xla']"
    )
    with pytest.raises(ConfigError) as error:
        ExtractConfig.from_params(extract(batchsize=8))
    message = f"extract.batchsize must be a key of extract, one of {allowed}. Received: extract.batchsize=8"
    assert str(error.value) == f"{message} Did you mean 'batch_size'?"


def test_extract_layers_key_is_required():
    with pytest.raises(ConfigError, match=re.escape("extract must be a mapping with the required key(s) ['layers']")):
        ExtractConfig.from_params({"backbone": "mobilenet"})


def test_extract_input_size_list_becomes_a_tuple_and_null_is_allowed():
    assert ExtractConfig.from_params(extract(input_size=[64, 96])).input_size == (64, 96)
    assert ExtractConfig.from_params(extract(input_size=None)).input_size is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"input_size": [16, 64]}, "extract.input_size must be [height, width] (integers >= 32) or null. "
                                   "Received: extract.input_size=[16, 64]"),
        ({"input_size": 64}, "extract.input_size must be [height, width] (integers >= 32) or null. "
                             "Received: extract.input_size=64"),
        ({"input_size": [64, 64, 3]}, "Received: extract.input_size=[64, 64, 3]"),
        ({"interpolation": "cubic"}, "extract.interpolation must be one of ['bicubic', 'bilinear', 'box', 'hamming', 'lanczos', 'nearest']. Received: extract.interpolation='cubic'"),
        ({"batch_size": 0}, "extract.batch_size must be an integer >= 1. Received: extract.batch_size=0"),
        ({"backbone": ""}, "extract.backbone must be a model name or a .keras path. Received: extract.backbone=''"),
        ({"weights": ""}, "extract.weights must be 'imagenet', null or a weights file path. Received: extract.weights=''"),
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
    identity = config_identity(config)
    assert not {"batch_size", "compression", "on_error", "split"} & set(identity)
    assert set(identity) == {
        "backbone", "weights", "input_size", "interpolation", "decode", "preprocessing", "layers", "mixed_precision", "xla",
        "pixels",
    }
    assert identity["layers"] == ({"name": "a", "pooling": "max", "dtype": "float32"},)
    json.dumps(identity)


def test_config_hash_ignores_batch_size_but_not_what_changes_features():
    base = ExtractConfig.from_params(extract(batch_size=8))
    same = ExtractConfig.from_params(extract(batch_size=256))
    assert config_hash(config_identity(base)) == config_hash(config_identity(same))
    for changed in [extract(pooling="max"), extract(dtype="float16"), extract(interpolation="nearest"), extract(weights=None), extract(input_size=[64, 64])]:
        assert config_hash(config_identity(ExtractConfig.from_params(changed))) != config_hash(config_identity(base))


def test_where_extraction_runs_is_read_but_not_hashed():
    config = ExtractConfig.from_params(extract(cluster="local:2", shard_size=64))
    assert (config.cluster, config.shard_size) == ("local:2", 64)
    assert ExtractConfig.from_params(extract(cluster="tcp://10.0.0.5:8786")).cluster == "tcp://10.0.0.5:8786"
    assert ExtractConfig.from_params(extract(cluster="tcp://[::1]:8786")).cluster == "tcp://[::1]:8786"
    default = ExtractConfig.from_params(extract())
    assert (default.cluster, default.shard_size) == (None, 1024)
    assert not {"cluster", "shard_size"} & set(config_identity(config))
    assert config_hash(config_identity(config)) == config_hash(config_identity(default))
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
    assert config.layers == ("a", "b") and config.layer == ("a", "b") and config.entry == "a+b" and config.run == "svm/a+b"
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
    message = f"classifiers.logreg.parms must be a key of classifiers.logreg, one of {CLASSIFIER_KEYS}. "
    assert str(error.value) == f"{message}Received: classifiers.logreg.parms={{}} Did you mean 'params'?"


def test_classifier_config_requires_an_estimator():
    with pytest.raises(ConfigError, match=re.escape("classifiers.x must be a mapping with the required key(s) ['estimator']")):
        ClassifierConfig.from_params({"x": {"params": {}}}, "x", "l")


@pytest.mark.parametrize(
    ("classifiers", "message"),
    [
        (None, "classifiers must be a mapping. Received: classifiers=None"),
        ({"x": None}, "classifiers.x must be a mapping. Received: classifiers.x=None"),
        ({"x": {"estimator": "e", "params": [1]}}, "classifiers.x.params must be a mapping. Received: classifiers.x.params=[1]"),
        ({"x": {"estimator": "e", "scale": "yes"}}, "classifiers.x.scale must be true or false. Received: classifiers.x.scale='yes'"),
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
    with pytest.raises(ConfigError, match=re.escape("Received: extract.split.seeds=1 Did you mean 'seed'?")):
        ExtractConfig.from_params(extract(split={"seeds": 1}))
    with pytest.raises(ConfigError, match=re.escape("extract.xla must be true or false. Received: extract.xla='yes'")):
        ExtractConfig.from_params(extract(xla="yes"))


def test_extract_split_must_be_a_mapping():
    with pytest.raises(ConfigError, match=re.escape("extract.split must be a mapping. Received: extract.split=0.2")):
        ExtractConfig.from_params(extract(split=0.2))


def test_param_keys_are_every_key_of_the_extract_section_with_its_help():
    keys = dict(param_keys(ExtractConfig))
    names = list(keys)
    assert names[names.index("layers") + 1 : names.index("layers") + 3] == ["pooling", "dtype"]  # every layer's
    assert {"split.val_fraction", "split.test_fraction", "split.seed"} <= set(keys)
    assert [name for name in names if name.startswith("augment.")] == [
        "augment.flip", "augment.rotation", "augment.crop", "augment.seed"  # not augment.section: no params key
    ]
    assert not {"split", "augment", "name"} & set(keys)
    assert all(isinstance(f.metadata["help"], str) and f.metadata["help"] for f in keys.values())
    params = {}
    for name, f in keys.items():  # every key, at its default, is one that from_params takes
        section_name, _, key = name.rpartition(".")
        (params.setdefault(section_name, {}) if section_name else params)[key] = f.default
    params["layers"] = ["a"]
    assert ExtractConfig.from_params(params) == ExtractConfig.from_params({"layers": ["a"]})
    assert [f.name for f in param_fields(AugmentConfig)] == list(AugmentConfig().to_params())


def test_to_params_round_trips():
    config = ExtractConfig.from_params(extract(
        input_size=[64, 64], layers={"a": {"pooling": "none", "dtype": "float16"}, "b": {}}, split={"seed": 3}, xla=True
    ))
    assert ExtractConfig.from_params(config.to_params()) == config
    json.dumps(config.to_params())


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"method": "bayes", "space": {"C": [1]}},
         "classifiers.c.search.method must be one of ['grid', 'random']. Received: classifiers.c.search.method='bayes'"),
        ({"space": {}}, "classifiers.c.search.space must be a mapping of at least one hyper-parameter to its values. "
                        "Received: classifiers.c.search.space={}"),
        ({"space": {"C": 1}},
         "classifiers.c.search.space.C must be a non-empty list of values. Received: classifiers.c.search.space.C=1"),
        ({"space": {"C": {"loguniform": [0.1, 1]}}},
         "classifiers.c.search.space.C must be a list of values. Received: classifiers.c.search.space.C={'loguniform'"),
        ({"method": "random", "space": {"C": {"normal": [0, 1]}}},
         "classifiers.c.search.space.C distribution must be one of ['loguniform', 'randint', 'uniform']. "
         "Received: classifiers.c.search.space.C distribution='normal'"),
        ({"method": "random", "space": {"C": {"uniform": 1}}},
         "classifiers.c.search.space.C.uniform must be [low, high]. Received: classifiers.c.search.space.C.uniform=1"),
        ({"space": {"C": [1]}, "cv": 1}, "classifiers.c.search.cv must be an integer >= 2. Received: classifiers.c.search.cv=1"),
        ({"space": {"C": [1]}, "n_jobs": 0},
         "classifiers.c.search.n_jobs must be -1 (all cores) or an integer >= 1. Received: classifiers.c.search.n_jobs=0"),
        ({"grid": {"C": [1]}}, "classifiers.c.search.grid must be a key of classifiers.c.search, one of ["),
        ("grid", "classifiers.c.search must be a mapping. Received: classifiers.c.search='grid'"),
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
    assert TrainConfig.from_params({"layers": ["a"]}).reuse == 3 and TrainConfig(layers=("a",), reuse=0).reuse == 0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({}, "train must be a mapping with the required key(s) ['layers']"),
        ({"layers": []}, "train.layers must be a non-empty list of layer names (a+b concatenates). Received: train.layers=[]"),
        ({"layers": "a"}, "train.layers must be a non-empty list"),
        ({"layers": ["a+"]}, "train.layers must be a non-empty list"),
        ({"layers": ["a", "a"]}, "train.layers must not repeat an entry. Received: train.layers=['a', 'a']"),
        ({"layers": ["a"], "memory_budget": "lots"}, "train.memory_budget must be a number of bytes or a size like '512MiB'"),
        ({"layers": ["a"], "memory_budget": "1MiB", "chunk_size": "512KiB"}, "train.chunk_size must be at most train.memory_budget / 4 (streaming holds about 4 blocks' worth at its peak). "
                                                                  "Received: train.chunk_size='512KiB', train.memory_budget='1MiB'"),
        ({"layers": ["a"], "cluster": "local:2"}, "train.cluster must be a key of train, one of ["),
        ({"layers": ["a"], "budget": 1}, "train.budget must be a key of train, one of ["),
        ({"layers": ["a"], "reuse": -1}, "train.reuse must be an integer >= 0. Received: train.reuse=-1"),
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
    assert config_hash(config_identity(config)) != config_hash(config_identity(ExtractConfig.from_params(extract())))
    assert ExtractConfig.from_params(extract()).stored_layers == ExtractConfig.from_params(extract()).layers
    with pytest.raises(ConfigError, match=re.escape("extract.layers must not name 'pixels': it is the raw-pixel baseline")):
        ExtractConfig.from_params(extract(layers=["pixels"]))
    with pytest.raises(ConfigError, match=re.escape("extract.pixels must be an integer >= 1. Received: extract.pixels=0")):
        ExtractConfig.from_params(extract(pixels=0))


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"flip": "sideways"}, "extract.augment.flip must be one of ['both', 'horizontal', 'none', 'vertical']"),
        ({"rotation": 200}, "extract.augment.rotation must be a number of degrees in [0, 180]. Received: extract.augment.rotation=200"),
        ({"crop": 0}, "extract.augment.crop must be the smallest kept fraction of a side, in (0, 1]. Received: extract.augment.crop=0"),
        ({"seed": "x"}, "extract.augment.seed must be an integer"),
        ({"zoom": 2}, "extract.augment.zoom must be a key of extract.augment, one of ["),
    ],
)
def test_augment_settings_are_validated_naming_the_key(augment, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ExtractConfig.from_params(extract(augment_views=1, augment=augment))


def test_views_change_the_config_hash_and_augment_settings_only_with_views():
    plain = ExtractConfig.from_params(extract())
    views = ExtractConfig.from_params(extract(augment_views=2))
    rotated = ExtractConfig.from_params(extract(augment_views=2, augment={"rotation": 20}))
    idle = ExtractConfig.from_params(extract(augment={"rotation": 20}))  # settings without views decide nothing
    hashes = [config_hash(config_identity(c)) for c in (plain, views, rotated, idle)]
    assert hashes[0] == hashes[3] and len({*hashes[:3]}) == 3
    assert ExtractConfig.from_params(rotated.to_params()) == rotated
    with pytest.raises(ConfigError, match=re.escape("extract.augment_views must be an integer >= 0")):
        ExtractConfig.from_params(extract(augment_views=-1))
    assert "reuse" not in config_identity(plain)
    with pytest.raises(ConfigError, match=re.escape("extract.reuse must be an integer >= 0")):
        ExtractConfig.from_params(extract(reuse=-1))


def test_augmented_must_be_a_boolean():
    with pytest.raises(ConfigError, match=re.escape("classifiers.c.augmented must be true or false. Received: classifiers.c.augmented='yes'")):
        ClassifierConfig.from_params({"c": {"estimator": "sgd", "augmented": "yes"}}, "c", "x")


# --- finetune --------------------------------------------------------------------------------------------------------

FINETUNE = {"head": "dense_head", "layer": "conv_pw_13_relu", "trainable_from": "conv_dw_13"}


def test_repo_params_finetune_entries_fit_the_other_sections():
    from pipeline.config import FinetuneConfig

    params = load_params(REPO_PARAMS)
    entries = FinetuneConfig.all_from_params(params["finetune"])
    assert entries, "the default params fine-tune one entry"
    train, extract_config = TrainConfig.from_params(params["train"]), ExtractConfig.from_params(params["extract"])
    for config in entries.values():
        config.check_params(params["classifiers"], train, extract_config)
        assert config.learning_rate <= 1e-4 and config.augment is not None
    assert FinetuneConfig.all_from_params({}) == {} and FinetuneConfig.all_from_params(None) == {}


def test_finetune_entry_defaults_and_augment():
    from pipeline.config import AugmentConfig, FinetuneConfig

    config = FinetuneConfig.from_params({"top": {**FINETUNE, "augment": {"flip": "horizontal"}}}, "top")
    assert (config.learning_rate, config.epochs, config.batch_size, config.patience) == (1e-5, 3, 32, 2)
    assert config.augment == AugmentConfig(flip="horizontal")
    assert FinetuneConfig.from_params({"top": {**FINETUNE, "augment": None}}, "top").augment is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**FINETUNE, "trainable_layers": 6},
         "finetune.top must set exactly one of trainable_from (the first trainable layer's name) and trainable_layers"),
        ({"head": "dense_head", "layer": "conv_pw_13_relu"}, "finetune.top must set exactly one of trainable_from"),
        ({**FINETUNE, "trainable_from": None, "trainable_layers": 0},
         "finetune.top.trainable_layers must be an integer >= 1. Received: finetune.top.trainable_layers=0"),
        ({**FINETUNE, "learning_rate": "1e-5"},
         "finetune.top.learning_rate must be a number in (0, 1) (YAML reads a number like 1e-5 without a decimal "
         "point as a string: write 1.0e-5). Received: finetune.top.learning_rate='1e-5'"),
        ({**FINETUNE, "learning_rate": 0}, "finetune.top.learning_rate must be a number in (0, 1). Received: finetune.top.learning_rate=0"),
        ({**FINETUNE, "epochs": 0}, "finetune.top.epochs must be an integer >= 1. Received: finetune.top.epochs=0"),
        ({**FINETUNE, "batch_size": 2.5}, "finetune.top.batch_size must be an integer >= 1"),
        ({**FINETUNE, "patience": -1}, "finetune.top.patience must be an integer >= 0"),
        ({**FINETUNE, "augment": {"flip": "sideways"}},
         "finetune.top.augment.flip must be one of ['both', 'horizontal', 'none', 'vertical']. "
         "Received: finetune.top.augment.flip='sideways'"),
        ({**FINETUNE, "augment": {"zoom": 2}}, "finetune.top.augment.zoom must be a key of finetune.top.augment, one of ["),
        ({**FINETUNE, "layer": "pixels"}, "finetune.top.layer must be one backbone layer"),
        ({**FINETUNE, "layer": "a+b"}, "finetune.top.layer must be one backbone layer"),
        ({**FINETUNE, "lr": 0.1}, "finetune.top.lr must be a key of finetune.top, one of ["),
        ({"layer": "conv_pw_13_relu", "trainable_layers": 2}, "finetune.top must be a mapping with the required key(s) ['head']"),
    ],
)
def test_finetune_entry_errors_name_the_key(entry, message):
    from pipeline.config import FinetuneConfig

    with pytest.raises(ConfigError, match=re.escape(message)):
        FinetuneConfig.from_params({"top": entry}, "top")


def test_finetune_section_must_be_a_mapping_of_named_entries():
    from pipeline.config import FinetuneConfig

    with pytest.raises(ConfigError, match=re.escape("finetune must be a mapping. Received: finetune=['top']")):
        FinetuneConfig.all_from_params(["top"])
    with pytest.raises(ConfigError, match=re.escape("finetune entry must be one of ['top']. Received: finetune entry='x'")):
        FinetuneConfig.from_params({"top": FINETUNE}, "x")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"head": "svm"}, "finetune.top.head must be one of ['dense_head', 'logreg', 'pca_head']. "
                          "Received: finetune.top.head='svm'"),
        ({"head": "logreg"}, "finetune.top.head must name a classifiers entry with estimator keras_head (its Keras "
                             "layers are what fine-tuning continues training). Received: finetune.top.head='logreg', "
                             "whose classifiers.logreg.estimator='logistic_regression'"),
        ({"head": "pca_head"}, "finetune.top.head must name a classifiers entry without pool or pca: fine-tuning needs "
                               "a head trained on the layer's features as extracted. Received: "
                               "finetune.top.head='pca_head', whose classifiers.pca_head.pca=16"),
        ({"layer": "conv_pw_7_relu"}, "finetune.top.layer must be one of ['conv_pw_13_relu']. "
                                      "Received: finetune.top.layer='conv_pw_7_relu'"),
    ],
)
def test_finetune_entry_is_checked_against_the_other_sections(change, message):
    from pipeline.config import FinetuneConfig

    classifiers = {
        "dense_head": {"estimator": "keras_head"}, "logreg": {"estimator": "logistic_regression"},
        "pca_head": {"estimator": "keras_head", "pca": 16},
    }
    train = TrainConfig.from_params({"layers": ["pixels", "conv_pw_13_relu"]})  # conv_pw_7_relu: extracted, untrained
    extract_config = ExtractConfig.from_params(extract(layers=["conv_pw_7_relu", "conv_pw_13_relu"], pixels=8))
    config = FinetuneConfig.from_params({"top": {**FINETUNE, **change}}, "top")
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.check_params(classifiers, train, extract_config)
    with pytest.raises(ConfigError, match=re.escape("classifiers.finetune would share data/models/finetune")):
        FinetuneConfig.from_params({"top": FINETUNE}, "top").check_params(
            {**classifiers, "finetune": {"estimator": "sgd"}}, train, extract_config
        )


def test_finetune_layer_with_extract_layers_blocks_is_checked_against_train_layers_only():
    """The block names are known once stage one expands them; fine-tuning checks the features file's."""
    from pipeline.config import FinetuneConfig

    classifiers = {"dense_head": {"estimator": "keras_head"}}
    train = TrainConfig.from_params({"layers": ["conv_pw_13_relu"]})
    blocks = ExtractConfig.from_params(extract(layers="blocks"))
    FinetuneConfig.from_params({"top": FINETUNE}, "top").check_params(classifiers, train, blocks)
    untrained = FinetuneConfig.from_params({"top": {**FINETUNE, "layer": "conv_pw_7_relu"}}, "top")
    with pytest.raises(ConfigError, match=re.escape("finetune.top.layer must be one of ['conv_pw_13_relu']")):
        untrained.check_params(classifiers, train, blocks)
