"""One voice for user errors (issue 13): a bad value anywhere in params.yaml fails with
``<key> must be <what>. Received: <key>=<value!r>``, the key written out in full, as the user wrote it.

Each row changes one key of the repository's own params.yaml and parses the result as the stages do.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.classification.classifiers import configured_estimator
from pipeline.config import (
    ClassifierConfig,
    DataConfig,
    ExtractConfig,
    FinetuneConfig,
    PrepareConfig,
    ProbeConfig,
    TrainConfig,
    load_params,
    section,
)
from pipeline.validation import ConfigError

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
PARAMS = load_params(REPO_PARAMS)
FLIPS = "['both', 'horizontal', 'none', 'vertical']"
TRAINED = "['conv_pw_13_relu', 'conv_pw_3_relu', 'conv_pw_7_relu']"


def parse(params: dict[str, Any]) -> None:
    """Every section, read as the stages read it (prepare, extract, probe, train, finetune, leaderboard)."""
    PrepareConfig.from_params(section(params, "prepare"))
    DataConfig.from_params(section(params, "data"))
    extract = ExtractConfig.from_params(section(params, "extract"))
    ProbeConfig.from_params(section(params, "probe"))
    train = TrainConfig.from_params(section(params, "train"))
    classifiers = section(params, "classifiers")
    for name in classifiers:
        for layer in train.layers:
            configured_estimator(ClassifierConfig.from_params(classifiers, name, layer))
    for config in FinetuneConfig.all_from_params(params.get("finetune")).values():
        config.check_params(classifiers, train, extract)


def changed(key: str, value: Any) -> dict[str, Any]:
    """The repository's params with the dotted ``key`` set to ``value``."""
    params = copy.deepcopy(PARAMS)
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = value
    return params


def test_the_repository_params_parse():
    parse(copy.deepcopy(PARAMS))


ROWS = [
    # data
    ("data.images", "", "data.images must be the path of an image folder or a .csv manifest. Received: data.images=''"),
    ("data.image_root", 7, "data.image_root must be null or the folder a CSV manifest's filenames are relative to. "
                           "Received: data.image_root=7"),
    # prepare
    ("prepare.image_size", 4, "prepare.image_size must be an integer >= 8. Received: prepare.image_size=4"),
    ("prepare.val_fraction", 1.5, "prepare.val_fraction must be a number in (0, 1). Received: prepare.val_fraction=1.5"),
    ("prepare.test_fraction", 0.9, "prepare.val_fraction + prepare.test_fraction must be below 1 (the rest is the train "
                                   "split). Received: prepare.val_fraction=0.15, prepare.test_fraction=0.9"),
    ("prepare.per_class_limit", 2, "prepare.per_class_limit must be an integer >= 3. Received: prepare.per_class_limit=2"),
    # extract
    ("extract.backbone", "", "extract.backbone must be a model name or a .keras path. Received: extract.backbone=''"),
    ("extract.weights", 3, "extract.weights must be 'imagenet', null or a weights file path. Received: extract.weights=3"),
    ("extract.input_size", [16, 16], "extract.input_size must be [height, width] (integers >= 32) or null. "
                                     "Received: extract.input_size=[16, 16]"),
    ("extract.interpolation", "cubic", "extract.interpolation must be one of ['bicubic', 'bilinear', 'box', 'hamming', "
                                       "'lanczos', 'nearest']. Received: extract.interpolation='cubic'"),
    ("extract.decode", "quick", "extract.decode must be one of ['exact', 'fast']. Received: extract.decode='quick'"),
    ("extract.batch_size", 0, "extract.batch_size must be an integer >= 1. Received: extract.batch_size=0"),
    ("extract.xla", "yes", "extract.xla must be true or false. Received: extract.xla='yes'"),
    ("extract.mixed_precision", 1, "extract.mixed_precision must be true or false. Received: extract.mixed_precision=1"),
    ("extract.compression", "zip", "extract.compression must be one of ['gzip', 'lzf']. Received: extract.compression='zip'"),
    ("extract.cluster", "local:0", "extract.cluster must be null, 'local:N' (N >= 1 worker processes) or a scheduler "
                                   "address 'tcp://host:port'. Received: extract.cluster='local:0'"),
    ("extract.pixels", 0, "extract.pixels must be an integer >= 1. Received: extract.pixels=0"),
    ("extract.reuse", -1, "extract.reuse must be an integer >= 0. Received: extract.reuse=-1"),
    # extract: the layers, section-wide and per layer
    ("extract.pooling", "mean", "extract.pooling must be one of ['avg', 'max', 'none', 'pyramid']. Received: extract.pooling='mean'"),
    ("extract.dtype", "float64", "extract.dtype must be one of ['float16', 'float32']. Received: extract.dtype='float64'"),
    ("extract.layers", {"conv_pw_3_relu": {"pooling": "mean"}},
     "extract.layers.conv_pw_3_relu.pooling must be one of ['avg', 'max', 'none', 'pyramid']. "
     "Received: extract.layers.conv_pw_3_relu.pooling='mean'"),
    ("extract.layers", {"conv_pw_3_relu": {"dtype": "int8"}},
     "extract.layers.conv_pw_3_relu.dtype must be one of ['float16', 'float32']. "
     "Received: extract.layers.conv_pw_3_relu.dtype='int8'"),
    ("extract.layers", {"conv_pw_3_relu": "max"},
     "extract.layers.conv_pw_3_relu must be a mapping. Received: extract.layers.conv_pw_3_relu='max'"),
    ("extract.layers", [], "extract.layers must be a non-empty list of layer names. Received: extract.layers=[]"),
    ("extract.layers", 7, "extract.layers must be a list of layer names, a mapping name -> {pooling, dtype}, or "
                          "'blocks'. Received: extract.layers=7"),
    ("extract.layers", ["blocks", "conv_pw_3_relu"],
     "extract.layers must be 'blocks' alone (the output of every block) or layer names without it. "
     "Received: extract.layers=['blocks', 'conv_pw_3_relu']"),
    # extract.split and extract.augment
    ("extract.split.val_fraction", 0, "extract.split.val_fraction must be a number in (0, 1). "
                                      "Received: extract.split.val_fraction=0"),
    ("extract.split.seed", "x", "extract.split.seed must be an integer. Received: extract.split.seed='x'"),
    ("extract.split", 0.2, "extract.split must be a mapping. Received: extract.split=0.2"),
    ("extract.augment.rotation", 500, "extract.augment.rotation must be a number of degrees in [0, 180]. "
                                      "Received: extract.augment.rotation=500"),
    ("extract.augment.crop", 0, "extract.augment.crop must be the smallest kept fraction of a side, in (0, 1]. "
                                "Received: extract.augment.crop=0"),
    ("extract.augment.flip", "sideways", f"extract.augment.flip must be one of {FLIPS}. "
                                         "Received: extract.augment.flip='sideways'"),
    ("extract.augment_views", -1, "extract.augment_views must be an integer >= 0. Received: extract.augment_views=-1"),
    # probe
    ("probe.C", [], "probe.C must be a non-empty list of positive numbers (the regularization grid). Received: probe.C=[]"),
    ("probe.C", [0.1, 0.1], "probe.C must be a list of positive numbers without repeats. Received: probe.C=[0.1, 0.1]"),
    ("probe.max_iter", 0, "probe.max_iter must be an integer >= 1. Received: probe.max_iter=0"),
    ("probe.tol", "1e-4", "probe.tol must be a number > 0 (YAML reads a number like 1e-4 without a decimal point as a "
                          "string: write 1.0e-4). Received: probe.tol='1e-4'"),
    ("probe.estimator", "linear_svm", "probe.estimator must be one of ['logistic_regression']. "
                                      "Received: probe.estimator='linear_svm'"),
    ("probe.pixels", "no", "probe.pixels must be true or false. Received: probe.pixels='no'"),
    # train
    ("train.layers", [], "train.layers must be a non-empty list of layer names (a+b concatenates). Received: train.layers=[]"),
    ("train.memory_budget", "lots", "train.memory_budget must be a number of bytes or a size like '512MiB' (units ['B', "
                                    "'KB', 'MB', 'GB', 'KIB', 'MIB', 'GIB']). Received: train.memory_budget='lots'"),
    ("train.chunk_size", "1GiB", "train.chunk_size must be at most train.memory_budget / 4 (streaming holds about 4 "
                                 "blocks' worth at its peak). Received: train.chunk_size='1GiB', train.memory_budget='2GiB'"),
    # classifiers, and their searches
    ("classifiers.logreg.search.cv", 1, "classifiers.logreg.search.cv must be an integer >= 2. "
                                        "Received: classifiers.logreg.search.cv=1"),
    ("classifiers.logreg.search.method", "bayes", "classifiers.logreg.search.method must be one of ['grid', 'random']. "
                                                  "Received: classifiers.logreg.search.method='bayes'"),
    ("classifiers.logreg.search.n_jobs", 0, "classifiers.logreg.search.n_jobs must be -1 (all cores) or an integer >= 1. "
                                            "Received: classifiers.logreg.search.n_jobs=0"),
    ("classifiers.logreg.search.space.C", 1, "classifiers.logreg.search.space.C must be a non-empty list of values. "
                                             "Received: classifiers.logreg.search.space.C=1"),
    ("classifiers.logreg.search.space", [], "classifiers.logreg.search.space must be a mapping. "
                                            "Received: classifiers.logreg.search.space=[]"),
    ("classifiers.linear_svm.estimator", "svm", "classifiers.linear_svm.estimator must be one of ['hist_gradient_boosting', "
                                                "'keras_head', 'knn', 'linear_svm', 'logistic_regression', 'mlp', "
                                                "'random_forest', 'sgd']. Received: classifiers.linear_svm.estimator='svm'"),
    ("classifiers.linear_svm.params", [1], "classifiers.linear_svm.params must be a mapping. "
                                           "Received: classifiers.linear_svm.params=[1]"),
    ("classifiers.linear_svm.pca", 1.5, "classifiers.linear_svm.pca must be null, a number of components >= 1, or a "
                                        "fraction of variance in (0, 1). Received: classifiers.linear_svm.pca=1.5"),
    ("classifiers.linear_svm.scale", "no", "classifiers.linear_svm.scale must be true or false. "
                                           "Received: classifiers.linear_svm.scale='no'"),
    ("classifiers.linear_svm_aug.augmented", "yes", "classifiers.linear_svm_aug.augmented must be true or false. "
                                                    "Received: classifiers.linear_svm_aug.augmented='yes'"),
    ("classifiers.linear_svm.pool", "sum", "classifiers.linear_svm.pool must be one of ['avg', 'max']. "
                                           "Received: classifiers.linear_svm.pool='sum'"),
    ("classifiers.sgd_stream.out_of_core", "sometimes", "classifiers.sgd_stream.out_of_core must be one of [False, True, "
                                                        "'auto']. Received: classifiers.sgd_stream.out_of_core='sometimes'"),
    ("classifiers.sgd_stream.passes", 0, "classifiers.sgd_stream.passes must be an integer >= 1. "
                                         "Received: classifiers.sgd_stream.passes=0"),
    ("classifiers.dense_head", None, "classifiers.dense_head must be a mapping. Received: classifiers.dense_head=None"),
    # finetune
    ("finetune.mobilenet_top.learning_rate", "1e-5",
     "finetune.mobilenet_top.learning_rate must be a number in (0, 1) (YAML reads a number like 1e-5 without a decimal "
     "point as a string: write 1.0e-5). Received: finetune.mobilenet_top.learning_rate='1e-5'"),
    ("finetune.mobilenet_top.epochs", 0, "finetune.mobilenet_top.epochs must be an integer >= 1. "
                                         "Received: finetune.mobilenet_top.epochs=0"),
    ("finetune.mobilenet_top.patience", -1, "finetune.mobilenet_top.patience must be an integer >= 0. "
                                            "Received: finetune.mobilenet_top.patience=-1"),
    ("finetune.mobilenet_top.trainable_from", "", "finetune.mobilenet_top.trainable_from must be a layer name. "
                                                  "Received: finetune.mobilenet_top.trainable_from=''"),
    ("finetune.mobilenet_top.head", "", "finetune.mobilenet_top.head must be a non-empty string. "
                                        "Received: finetune.mobilenet_top.head=''"),
    ("finetune.mobilenet_top.augment.rotation", 500, "finetune.mobilenet_top.augment.rotation must be a number of "
                                                     "degrees in [0, 180]. Received: finetune.mobilenet_top.augment.rotation=500"),
    ("finetune.mobilenet_top.augment", True, "finetune.mobilenet_top.augment must be a mapping. "
                                             "Received: finetune.mobilenet_top.augment=True"),
    ("finetune.mobilenet_top.layer", "pixels", "finetune.mobilenet_top.layer must be one backbone layer (the one the "
                                               "backbone is cut at), not 'pixels' or a concatenation. "
                                               "Received: finetune.mobilenet_top.layer='pixels'"),
    ("finetune.mobilenet_top.layer", "conv_pw_5_relu", f"finetune.mobilenet_top.layer must be one of {TRAINED}. "
                                                       "Received: finetune.mobilenet_top.layer='conv_pw_5_relu'"),
    ("finetune.mobilenet_top.head", "logreg", "finetune.mobilenet_top.head must name a classifiers entry with estimator "
                                              "keras_head (its Keras layers are what fine-tuning continues training). "
                                              "Received: finetune.mobilenet_top.head='logreg', whose "
                                              "classifiers.logreg.estimator='logistic_regression'"),
    ("finetune.mobilenet_top.head", "nope", "finetune.mobilenet_top.head must be one of ['dense_head', 'linear_svm', "
                                            "'linear_svm_aug', 'logreg', 'sgd_stream']. "
                                            "Received: finetune.mobilenet_top.head='nope'"),
    ("finetune", ["mobilenet_top"], "finetune must be a mapping. Received: finetune=['mobilenet_top']"),
]


@pytest.mark.parametrize(("key", "value", "message"), ROWS, ids=[f"{key}={value!r}" for key, value, _ in ROWS])
def test_a_bad_value_is_reported_under_its_key_in_one_form(key, value, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        parse(changed(key, value))


def test_the_table_covers_every_section_and_the_one_form():
    assert len(ROWS) >= 20
    assert {key.split(".")[0] for key, _, _ in ROWS} == set(PARAMS)
    for key, _, message in ROWS:
        assert re.match(r"^[\w.]+( \+ [\w.]+)? must (be|name) .*\. Received: ", message), message
        received = message.split(". Received: ", 1)[1]  # the key written out in full (or a key below it): its value
        assert re.match(rf"{re.escape(key)}[\w.]*=|.*, {re.escape(key)}=", received), message
