"""Stage one: manifest -> decoded batches -> frozen backbone (all layers in one pass) -> HDF5 features file."""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import __version__
from pipeline.backbone import Backbone, load_backbone
from pipeline.config import ExtractConfig, config_hash
from pipeline.dataset import Manifest
from pipeline.images import iter_batches
from pipeline.store import FeatureWriter

log = logging.getLogger(__name__)


def pool(values: np.ndarray, pooling: str) -> np.ndarray:
    """Global spatial pooling of ``(batch, h, w, c)`` maps: ``none`` keeps them, ``avg``/``max`` reduce h and w."""
    if pooling == "none" or values.ndim < 3:
        return values
    axes = tuple(range(1, values.ndim - 1))
    return values.mean(axis=axes) if pooling == "avg" else values.max(axis=axes)


def pooled_shape(shape: tuple[int, ...], pooling: str) -> tuple[int, ...]:
    """The per-image shape ``pool`` leaves of a ``(h, w, c)`` map (or of an already flat vector)."""
    return shape if pooling == "none" or len(shape) < 2 else shape[-1:]


def run_batch(model, batch: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """One forward pass; a short last batch is padded to ``batch_size`` so every call has the same shape."""
    n = len(batch)
    if n < batch_size:
        batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), dtype=batch.dtype)])
    outputs = model.predict_on_batch(batch)
    return [output[:n] for output in (outputs if isinstance(outputs, list) else [outputs])]


def library_versions() -> dict[str, str]:
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


def provenance(config: ExtractConfig, backbone: Backbone, manifest: Manifest) -> dict:
    """Every fact that decides the features, plus a hash of them that tells incompatible files apart."""
    identity = {**config.feature_identity(), "input_size": list(backbone.input_size), "weights_sha256": backbone.weights_sha256}
    return {
        "backbone": backbone.name,
        "weights": config.weights if config.weights is not None else "null",
        "weights_source": backbone.weights_source,
        "weights_sha256": backbone.weights_sha256,
        "input_size": list(backbone.input_size),
        "interpolation": config.interpolation,
        "preprocessing": backbone.preprocessing,
        "layers": [spec.name for spec in config.layers],
        "pooling": {spec.name: spec.pooling for spec in config.layers},
        "dtype": {spec.name: spec.dtype for spec in config.layers},
        "class_names": list(manifest.class_names),
        "image_root": str(manifest.root),
        "versions": library_versions(),
        "config_hash": config_hash(identity),
    }


def extract_features(manifest: Manifest, config: ExtractConfig, out: str | Path) -> Path:
    """Run the frozen backbone over every image of ``manifest`` in batches and write ``out`` (HDF5)."""
    backbone = load_backbone(config.backbone, config.weights, config.input_size)
    model = backbone.feature_model(config.layer_names)
    layers = {
        spec.name: (pooled_shape(tuple(output.shape[1:]), spec.pooling), spec.dtype)
        for spec, output in zip(config.layers, model.outputs)
    }
    log.info(
        "extracting %s from %s at %s for %d images: %s",
        config.layer_names, backbone.name, backbone.input_size, len(manifest),
        {name: shape for name, (shape, _) in layers.items()},
    )
    paths = [manifest.absolute(i) for i in range(len(manifest))]
    attrs = provenance(config, backbone, manifest)
    started = time.perf_counter()
    with FeatureWriter(
        out, paths=manifest.paths, labels=manifest.labels, splits=manifest.splits, layers=layers, attrs=attrs
    ) as writer, tqdm(total=len(manifest), unit="img", desc="extract") as progress:
        batches = iter_batches(paths, backbone.input_size, config.interpolation, config.batch_size)
        for start, batch in batches:
            outputs = run_batch(model, backbone.preprocess(batch.astype(np.float32)), config.batch_size)
            writer.write(start, {spec.name: pool(o, spec.pooling) for spec, o in zip(config.layers, outputs)})
            progress.update(len(batch))
    elapsed = time.perf_counter() - started
    log.info("extracted %d images in %.1f s (%.1f img/s)", len(manifest), elapsed, len(manifest) / max(elapsed, 1e-9))
    return Path(out)
