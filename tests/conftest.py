"""Shared fixtures: tiny real data (digits as PNG files), the real ImageNet MobileNet, real features files."""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from synthetic import N_ROWS, write_features

from pipeline.config import AugmentConfig, ExtractConfig, PrepareConfig
from pipeline.extraction.dataset import read_split_folders
from pipeline.extraction.extract import extract_features
from pipeline.prepare import prepare_digits

# Small inputs keep the suite fast on 2 CPU cores; the weights are the genuine ImageNet ones.
INPUT_SIZE = (64, 64)
LAYERS = {"conv_pw_5_relu": {"pooling": "avg"}, "conv_pw_13_relu": {"pooling": "none", "dtype": "float16"}}
PIXELS = 8  # the raw-pixel baseline: 8x8 RGB


# The real `dvc repro` files take minutes each, most of the suite's time: collected first, they start at once on
# the parallel workers, and the short files fill in around them (pyproject.toml: --no-loadscope-reorder).
LONGEST_FIRST = ("test_dvc_pipeline.py", "test_dvc_own_images.py", "test_dvc_team.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else 3)


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
        {
            "backbone": "mobilenet", "weights": "imagenet", "input_size": list(INPUT_SIZE), "batch_size": 16,
            "layers": LAYERS, "pixels": PIXELS,
        }
    )


@pytest.fixture(scope="session")
def mobilenet(extract_config):
    """The ImageNet MobileNet V1 backbone at the tests' input size (weights fetched and converted once per machine)."""
    from pipeline.extraction.backbone import load_backbone

    return load_backbone("mobilenet", "imagenet", INPUT_SIZE)


@pytest.fixture(scope="session")
def features_file(tmp_path_factory, manifest, extract_config):
    """A complete features file extracted from the digits by the real pipeline."""
    return extract_features(manifest, extract_config, tmp_path_factory.mktemp("features") / "features.h5").path


@pytest.fixture(scope="module", params=["interleaved", "grouped"])
def synthetic(request, tmp_path_factory):
    """1200 rows with splits in random order (rows of a split are a fancy index) or grouped (each one a slice)."""
    splits = np.random.default_rng(1).choice(["train", "val", "test"], N_ROWS, p=[0.7, 0.15, 0.15])
    if request.param == "grouped":
        splits = np.sort(splits)  # test, train, val
    return write_features(tmp_path_factory.mktemp(request.param) / "features.h5", splits)


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory):
    """1200 synthetic rows with the splits in random order."""
    splits = np.random.default_rng(2).choice(["train", "val", "test"], N_ROWS, p=[0.7, 0.15, 0.15])
    return write_features(tmp_path_factory.mktemp("interleaved") / "features.h5", splits)


@pytest.fixture(scope="session")
def views_file(tmp_path_factory, manifest, extract_config):
    """The digits' features with 2 seeded augmented views of each train image."""
    config = dataclasses.replace(extract_config, augment_views=2, augment=AugmentConfig(rotation=15, crop=0.8, seed=5))
    return extract_features(manifest, config, tmp_path_factory.mktemp("views") / "features.h5").path
