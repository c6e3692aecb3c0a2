"""Shared fixtures: tiny real data (digits as PNG files), the real ImageNet MobileNet, and a real features file."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from pipeline.config import ExtractConfig, PrepareConfig
from pipeline.dataset import read_split_folders
from pipeline.extract import extract_features
from pipeline.prepare import prepare_digits

# Small inputs keep the suite fast on 2 CPU cores; the weights are the genuine ImageNet ones.
INPUT_SIZE = (64, 64)
LAYERS = {"conv_pw_5_relu": {"pooling": "avg"}, "conv_pw_13_relu": {"pooling": "none", "dtype": "float16"}}


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """100 real digits (10 per class) as 16x16 RGB PNGs in train/val/test class folders."""
    root = tmp_path_factory.mktemp("digits") / "images"
    prepare_digits(root, PrepareConfig(image_size=16, per_class_limit=10))
    return root


@pytest.fixture(scope="session")
def manifest(digits_dir):
    return read_split_folders(digits_dir)


@pytest.fixture(scope="session")
def extract_config():
    return ExtractConfig.from_params(
        {"backbone": "mobilenet", "weights": "imagenet", "input_size": list(INPUT_SIZE), "batch_size": 16, "layers": LAYERS}
    )


@pytest.fixture(scope="session")
def mobilenet(extract_config):
    """The ImageNet MobileNet V1 backbone at the tests' input size (weights fetched and converted once per machine)."""
    from pipeline.backbone import load_backbone

    return load_backbone("mobilenet", "imagenet", INPUT_SIZE)


@pytest.fixture(scope="session")
def features_file(tmp_path_factory, manifest, extract_config):
    """A complete features file extracted from the digits by the real pipeline."""
    return extract_features(manifest, extract_config, tmp_path_factory.mktemp("features") / "features.h5")
