"""Provenance of a features file: what decides its values (the config hash and the facts hashed into it), which
images it holds (the manifest hash), the library versions, and the attributes that record them all."""

from __future__ import annotations

import dataclasses
import hashlib
import platform
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.config import PLACEMENT, ExtractConfig, config_hash
from pipeline.extraction import accelerate
from pipeline.extraction.backbone import Backbone
from pipeline.extraction.dataset import Manifest


def config_identity(config: ExtractConfig) -> dict[str, Any]:
    """The extract config's fields that change feature values, as plain JSON-able data.

    Left out: batch size (float rounding only), compression (lossless), on_error and the split (they decide
    which rows and which split labels the file has, not the values; the manifest hash covers those), and
    where extraction runs (``PLACEMENT``: a cluster gives the same file).
    """
    identity = dataclasses.asdict(config)
    for key in ("batch_size", "compression", "on_error", "split", *PLACEMENT):
        identity.pop(key)
    identity["augment"] = config.augment.to_params()
    if not config.augment_views:  # no views: the file is what it was before views existed, and so is its hash
        identity.pop("augment")
        identity.pop("augment_views")
    if config.decode == "exact":  # likewise: exact decoding is what every file had before the fast mode
        identity.pop("decode")
    return identity


def feature_identity(config: ExtractConfig, backbone: Backbone, compute: accelerate.Compute) -> dict:
    """What decides the feature values, as they are in effect: ``config_identity`` and what the config leaves to
    the machine and the backbone (precision, XLA, input size, weights). Hashed into ``config_hash``."""
    return {
        **config_identity(config),
        "mixed_precision": compute.mixed_precision,
        "xla": compute.xla,
        "input_size": list(backbone.input_size),
        "weights_sha256": backbone.weights_sha256,
    }


def library_versions() -> dict[str, str]:
    """The versions of the libraries that compute and store the features (values may differ in the last bits
    between versions, so reuse needs the same ones)."""
    import h5py
    import keras
    import tensorflow as tf
    from PIL import Image

    return {
        "pipeline": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
        "pillow": Image.__version__,
    }


def manifest_hash(manifest: Manifest) -> str:
    """sha256 over the ordered (path, label, split, content hash) rows and class names: which images, labelled how."""
    digest = hashlib.sha256("\0".join(manifest.class_names).encode())
    hashes = manifest.hashes if manifest.hashes is not None else [""] * len(manifest)
    for path, label, split, content in zip(manifest.paths, manifest.labels.tolist(), manifest.splits, hashes):
        digest.update(f"\n{path}\0{label}\0{split}\0{content}".encode())
    return digest.hexdigest()


def provenance(config: ExtractConfig, backbone: Backbone, manifest: Manifest, compute: accelerate.Compute) -> dict:
    """Every fact that decides the features, plus a hash of them that tells incompatible files apart: the root
    attributes of the features file."""
    return {
        "backbone": backbone.name,
        "weights": config.weights if config.weights is not None else "null",
        "weights_source": backbone.weights_source,
        "weights_sha256": backbone.weights_sha256,
        "input_size": list(backbone.input_size),
        "interpolation": config.interpolation,
        "decode": config.decode,
        "preprocessing": backbone.preprocessing,
        "layers": [spec.name for spec in config.stored_layers],
        "pooling": {spec.name: spec.pooling for spec in config.stored_layers},
        "dtype": {spec.name: spec.dtype for spec in config.stored_layers},
        "pixels": config.pixels if config.pixels is not None else "null",
        "augment_views": config.augment_views,
        "augment": config.augment.to_params() if config.augment_views else "null",
        "mixed_precision": compute.mixed_precision,
        "xla": compute.xla,
        "batch_size": compute.batch_size,
        "compression": config.compression or "none",
        "on_error": config.on_error,
        "extract_config": {key: value for key, value in config.to_params().items() if key not in PLACEMENT},
        "class_names": list(manifest.class_names),
        "image_root": str(manifest.root),
        "manifest_sha256": manifest_hash(manifest),
        "versions": library_versions(),
        "config_hash": config_hash(feature_identity(config, backbone, compute)),
    }


def resume_key(config_hash: str, manifest_sha256: str) -> str:
    """What a partial features file must have been started with to be continued: the same config and images."""
    return f"{config_hash}:{manifest_sha256}"
