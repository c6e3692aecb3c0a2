"""Provenance: the config's identity, the identity in effect (hashed into config_hash), the manifest hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pipeline.config import ExtractConfig, config_hash
from pipeline.extraction.accelerate import Compute
from pipeline.extraction.dataset import Manifest
from pipeline.extraction.provenance import config_identity, feature_identity, manifest_hash, resume_key

CONFIG = ExtractConfig.from_params({"backbone": "mobilenet", "layers": ["conv_pw_1_relu"]})
BACKBONE = SimpleNamespace(input_size=(128, 128), weights_sha256="ab" * 32)


def test_the_identity_in_effect_adds_what_the_machine_and_the_backbone_decide():
    compute = Compute(gpus=0, batch_size=8, mixed_precision=False, xla=False)
    identity = feature_identity(CONFIG, BACKBONE, compute)
    assert identity == {**config_identity(CONFIG), "mixed_precision": False, "xla": False, "input_size": [128, 128],
                        "weights_sha256": "ab" * 32}
    batch = dataclasses.replace(compute, batch_size=64)
    assert feature_identity(dataclasses.replace(CONFIG, batch_size=64), BACKBONE, batch) == identity


def test_the_decode_mode_is_hashed_and_exact_keeps_the_hash_files_had_before_it_existed():
    exact = dataclasses.replace(CONFIG, decode="exact")
    assert CONFIG.decode == "fast" and config_identity(CONFIG)["decode"] == "fast"
    assert "decode" not in config_identity(exact)  # as every features file was decoded before the fast mode
    assert config_hash(config_identity(CONFIG)) != config_hash(config_identity(exact))


def test_a_recorded_config_without_a_decode_mode_decoded_exactly():
    recorded = {key: value for key, value in CONFIG.to_params().items() if key != "decode"}
    assert ExtractConfig.from_recorded(recorded).decode == "exact"
    assert ExtractConfig.from_recorded(CONFIG.to_params()) == CONFIG


def test_the_manifest_hash_covers_paths_labels_splits_content_and_class_names():
    manifest = Manifest(Path("."), ("a.png", "b.png"), np.array([0, 1]), ("train", "test"), ("cat", "dog"), ("1", "2"))
    changed = [
        dataclasses.replace(manifest, paths=("a.png", "c.png")),
        dataclasses.replace(manifest, labels=np.array([1, 1])),
        dataclasses.replace(manifest, splits=("train", "val")),
        dataclasses.replace(manifest, hashes=("1", "3")),
        dataclasses.replace(manifest, class_names=("cat", "cow")),
    ]
    assert len({manifest_hash(m) for m in [manifest, *changed]}) == 6
    assert manifest_hash(dataclasses.replace(manifest, root=Path("/elsewhere"))) == manifest_hash(manifest)
    assert resume_key("config", manifest_hash(manifest)) == f"config:{manifest_hash(manifest)}"
