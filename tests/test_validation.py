"""Tests for pipeline.validation: each check returns good values and names parameter, allowed values and input."""

from __future__ import annotations

import re

import pytest

from pipeline.validation import (
    ConfigError,
    check_bool,
    check_bytes,
    check_cluster,
    check_fraction,
    check_int,
    check_keys,
    check_mapping,
    check_number,
    check_one_of,
    check_text,
    did_you_mean,
    format_bytes,
    invalid,
)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_check_one_of_returns_an_allowed_value():
    assert check_one_of("pooling", "max", ("none", "avg", "max")) == "max"


def test_check_one_of_names_parameter_sorted_allowed_values_and_received_value():
    message = "pooling must be one of ['avg', 'max', 'none']. Received: pooling='mean'"
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_one_of("pooling", "mean", ("none", "avg", "max"))


def test_check_one_of_sorts_mixed_types_by_their_text():
    with pytest.raises(ConfigError, match=re.escape("x must be one of [1, None, 'a']. Received: x=2")):
        check_one_of("x", 2, ["a", None, 1])


def test_check_keys_returns_a_valid_mapping():
    mapping = {"a": 1}
    assert check_keys("section", mapping, ["a", "b"], required=["a"]) is mapping


def test_check_keys_unknown_key_lists_allowed_keys_and_suggests_the_closest():
    with pytest.raises(ConfigError) as error:
        check_keys("prepare", {"seed": 0, "image_sise": 8}, ["image_size", "seed"])
    message = str(error.value)
    assert message == (
        "prepare.image_sise must be a key of prepare, one of ['image_size', 'seed']. "
        "Received: prepare.image_sise=8 Did you mean 'image_size'?"
    )


def test_check_keys_without_a_close_match_makes_no_suggestion():
    with pytest.raises(ConfigError, match=re.escape("s.zzz must be a key of s, one of ['alpha']. Received: s.zzz=1")+"$"):
        check_keys("s", {"zzz": 1}, ["alpha"])


def test_check_keys_lists_every_missing_required_key():
    with pytest.raises(ConfigError, match=re.escape(
        "classifiers.x must be a mapping with the required key(s) ['estimator', 'layer']. Received: classifiers.x={}"
    )):
        check_keys("classifiers.x", {}, ["estimator", "layer", "params"], required=["estimator", "layer"])


@pytest.mark.parametrize("value", [None, ["a"], "a: 1"])
def test_check_keys_refuses_a_non_mapping(value):
    with pytest.raises(ConfigError, match=re.escape(f"extract must be a mapping. Received: extract={value!r}")):
        check_keys("extract", value, ["a"])


@pytest.mark.parametrize(("value", "minimum"), [(0, None), (-3, None), (8, 8), (9, 8)])
def test_check_int_accepts_integers_at_or_above_the_minimum(value, minimum):
    assert check_int("n", value, minimum) == value


@pytest.mark.parametrize("value", [7, 1.0, 8.0, "8", True, None])
def test_check_int_refuses_non_integers_bools_and_values_below_the_minimum(value):
    message = f"size must be an integer >= 8. Received: size={value!r}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_int("size", value, minimum=8)


def test_check_int_without_minimum_states_no_bound():
    with pytest.raises(ConfigError, match=re.escape("seed must be an integer. Received: seed=False")):
        check_int("seed", False)


def test_check_fraction_returns_a_float():
    value = check_fraction("f", 0.25)
    assert value == 0.25 and type(value) is float


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_check_fraction_refuses_values_outside_the_open_interval(value):
    message = f"prepare.val_fraction must be a number in (0, 1). Received: prepare.val_fraction={value!r}"
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_fraction("prepare.val_fraction", value)


def test_did_you_mean_suggests_the_closest_candidate_or_nothing():
    assert did_you_mean("conv_pw_13_rel", ["conv_pw_13_relu", "conv_pw_1_relu", "pool"]) == " Did you mean 'conv_pw_13_relu'?"
    assert did_you_mean("xyz", ["conv_pw_13_relu"]) == ""
    assert did_you_mean(3, [1, 3]) == " Did you mean '3'?"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4096, 4096), ("512MiB", 512 * 2**20), ("2 GiB", 2 * 2**30), ("1.5GB", 1_500_000_000), ("64kib", 64 * 1024), ("100", 100)],
)
def test_check_bytes_reads_integers_and_sizes_with_units(value, expected):
    assert check_bytes("train.memory_budget", value) == expected


@pytest.mark.parametrize("value", ["lots", "2 TiB", "MiB", [1], 0, -5, True])
def test_check_bytes_names_the_parameter_and_the_value(value):
    with pytest.raises(ConfigError, match=r"train\.memory_budget must be .*Received: train\.memory_budget="):
        check_bytes("train.memory_budget", value)


@pytest.mark.parametrize(("n", "text"), [(500, "500 B"), (1536, "1.5 KiB"), (1572864, "1.5 MiB"), (3 * 2**30, "3.0 GiB")])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize("cluster", [None, "local:1", "local:16", "tcp://127.0.0.1:8786", "tcp://scheduler.example:8786", "tcp://[::1]:8786"])
def test_check_cluster_accepts_none_local_n_and_scheduler_addresses(cluster):
    assert check_cluster("extract.cluster", cluster) == cluster


@pytest.mark.parametrize("cluster", ["local:0", "local", "dask://x:1", "tcp://host", 4])
def test_check_cluster_names_the_allowed_forms(cluster):
    with pytest.raises(ConfigError, match=r"extract\.cluster must be null, 'local:N' \(N >= 1 worker processes\) or a "
                                          r"scheduler address 'tcp://host:port'\. Received: extract\.cluster="):
        check_cluster("extract.cluster", cluster)


def test_invalid_is_the_one_form_of_a_parameter_error():
    error = invalid("classifiers.logreg.search.cv", 1, "an integer >= 2")
    assert isinstance(error, ConfigError)
    assert str(error) == "classifiers.logreg.search.cv must be an integer >= 2. Received: classifiers.logreg.search.cv=1"


@pytest.mark.parametrize(
    ("bounds", "value", "expected"),
    [({}, -3, -3.0), ({"minimum": 0, "maximum": 180}, 180, 180.0), ({"minimum": 0, "open_min": True}, 1e-9, 1e-9),
     ({"maximum": 1, "open_max": True}, 0.5, 0.5), ({"minimum": 0, "maximum": 1}, 0, 0.0)],
)
def test_check_number_returns_a_float_within_the_bounds(bounds, value, expected):
    result = check_number("x", value, **bounds)
    assert result == expected and type(result) is float


@pytest.mark.parametrize(
    ("bounds", "value", "message"),
    [
        ({"minimum": 0, "maximum": 180}, 181, "x must be a number in [0, 180]. Received: x=181"),
        ({"minimum": 0, "maximum": 1, "open_min": True}, 0, "x must be a number in (0, 1]. Received: x=0"),
        ({"minimum": 0, "maximum": 1, "open_max": True}, 1.0, "x must be a number in [0, 1). Received: x=1.0"),
        ({"minimum": 0}, -1, "x must be a number >= 0. Received: x=-1"),
        ({"minimum": 0, "open_min": True}, 0, "x must be a number > 0. Received: x=0"),
        ({"maximum": 5}, 6, "x must be a number <= 5. Received: x=6"),
        ({"maximum": 5, "open_max": True}, 5, "x must be a number < 5. Received: x=5"),
        ({}, "1e-5", "x must be a number. Received: x='1e-5'"),
        ({}, True, "x must be a number. Received: x=True"),
        ({}, None, "x must be a number. Received: x=None"),
        ({}, float("nan"), "x must be a number. Received: x=nan"),
        ({"minimum": 0, "maximum": 180, "what": "a number of degrees"}, -1,
         "x must be a number of degrees in [0, 180]. Received: x=-1"),
        ({"minimum": 0, "maximum": 1, "open_min": True, "open_max": True, "hint": " (write 1.0e-5)"}, "1e-5",
         "x must be a number in (0, 1) (write 1.0e-5). Received: x='1e-5'"),
    ],
)
def test_check_number_names_the_range_and_the_received_value(bounds, value, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        check_number("x", value, **bounds)


def test_check_bool_accepts_only_true_and_false():
    assert check_bool("extract.xla", True) is True and check_bool("extract.xla", False) is False
    for value in ["yes", 1, 0, None]:
        message = f"extract.xla must be true or false. Received: extract.xla={value!r}"
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            check_bool("extract.xla", value)


def test_check_mapping_returns_a_mapping_or_names_the_key():
    mapping = {"C": 1}
    assert check_mapping("classifiers.x.params", mapping) is mapping
    message = "classifiers.x.params must be a mapping. Received: classifiers.x.params=[1]"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        check_mapping("classifiers.x.params", [1])


def test_check_text_refuses_empty_and_non_strings():
    assert check_text("finetune.top.head", "dense_head") == "dense_head"
    for value in ["", None, 3]:
        message = f"finetune.top.head must be a non-empty string. Received: finetune.top.head={value!r}"
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            check_text("finetune.top.head", value)
    with pytest.raises(ConfigError, match=re.escape("x must be a layer name. Received: x=''")):
        check_text("x", "", "a layer name")
