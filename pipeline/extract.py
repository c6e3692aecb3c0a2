"""Stage one: manifest -> decoded batches -> frozen backbone (all layers in one pass) -> resumable HDF5 file."""

from __future__ import annotations

import csv
import hashlib
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import __version__, accelerate
from pipeline.atomic import atomic_file
from pipeline.backbone import Backbone, load_backbone
from pipeline.config import PIXELS, PLACEMENT, ExtractConfig, LayerSpec, config_hash
from pipeline.dataset import Manifest, read_images
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


def downscale(images: np.ndarray, side: int) -> np.ndarray:
    """The raw-pixel baseline: decoded ``(batch, h, w, 3)`` uint8 images box-filtered to ``side`` x ``side``, as
    float32 in [0, 255] (the same decoded images the backbone sees, before its preprocessing)."""
    from PIL import Image

    out = np.empty((len(images), side, side, images.shape[-1]), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((side, side), Image.BOX), dtype=np.float32)
    return out


def run_batch(model, batch: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """One forward pass in float32 outputs; a short batch is padded to ``batch_size`` so every call has one shape."""
    n = len(batch)
    if n < batch_size:
        batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), dtype=batch.dtype)])
    outputs = model.predict_on_batch(batch)
    return [np.asarray(o[:n], dtype=np.float32) for o in (outputs if isinstance(outputs, list) else [outputs])]


def batch_features(model, backbone: Backbone, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The backbone's preprocess_input on decoded uint8 images, then one forward pass (outputs per layer)."""
    return run_batch(model, backbone.preprocess(images.astype(np.float32)), batch_size)


def stored_values(
    model, backbone: Backbone, specs: Sequence[LayerSpec], images: np.ndarray, batch_size: int, pixels: int | None
) -> dict[str, np.ndarray]:
    """What a features file stores for decoded uint8 ``images``, per spec name: the layer's pooled output, or the
    raw-pixel downscale. ``model`` has one output per spec other than ``pixels``, in order (None if there is none)."""
    outputs = iter(batch_features(model, backbone, images, batch_size) if model is not None else ())
    return {
        spec.name: downscale(images, pixels) if spec.name == PIXELS else pool(next(outputs), spec.pooling)
        for spec in specs
    }


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


def manifest_hash(manifest: Manifest) -> str:
    """sha256 over the ordered (path, label, split) rows and class names: which images, labelled how."""
    digest = hashlib.sha256("\0".join(manifest.class_names).encode())
    for path, label, split in zip(manifest.paths, manifest.labels.tolist(), manifest.splits):
        digest.update(f"\n{path}\0{label}\0{split}".encode())
    return digest.hexdigest()


def feature_identity(config: ExtractConfig, backbone: Backbone, compute: accelerate.Compute) -> dict:
    """What decides the feature values, as they are in effect: hashed into ``config_hash``."""
    return {
        **config.feature_identity(),
        "mixed_precision": compute.mixed_precision,
        "xla": compute.xla,
        "input_size": list(backbone.input_size),
        "weights_sha256": backbone.weights_sha256,
    }


def provenance(config: ExtractConfig, backbone: Backbone, manifest: Manifest, compute: accelerate.Compute) -> dict:
    """Every fact that decides the features, plus a hash of them that tells incompatible files apart."""
    return {
        "backbone": backbone.name,
        "weights": config.weights if config.weights is not None else "null",
        "weights_source": backbone.weights_source,
        "weights_sha256": backbone.weights_sha256,
        "input_size": list(backbone.input_size),
        "interpolation": config.interpolation,
        "preprocessing": backbone.preprocessing,
        "layers": [spec.name for spec in config.stored_layers],
        "pooling": {spec.name: spec.pooling for spec in config.stored_layers},
        "dtype": {spec.name: spec.dtype for spec in config.stored_layers},
        "pixels": config.pixels if config.pixels is not None else "null",
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


def skipped_report_path(out: str | Path) -> Path:
    """The CSV beside the features file that lists every skipped image and why."""
    return Path(out).with_suffix(".skipped.csv")


@dataclass(frozen=True)
class FeatureModel:
    """A loaded backbone, its one-pass multi-layer model, and the datasets it fills: name -> (row shape, dtype)."""

    backbone: Backbone
    model: object
    layers: dict[str, tuple[tuple[int, ...], str]]


def load_feature_model(config: ExtractConfig, compute: accelerate.Compute) -> FeatureModel:
    """Load the backbone and build the model with an output per ``config`` layer, under ``compute``'s precision."""
    with accelerate.precision(compute.mixed_precision):
        backbone = load_backbone(config.backbone, config.weights, config.input_size, preprocessing=config.preprocessing)
        model = backbone.feature_model(config.layer_names)
    if compute.xla:
        model.compile(jit_compile=True)
    layers = {
        spec.name: (pooled_shape(tuple(output.shape[1:]), spec.pooling), spec.dtype)
        for spec, output in zip(config.layers, model.outputs)
    }
    if config.pixels is not None:
        layers[PIXELS] = ((config.pixels, config.pixels, 3), "float32")
    return FeatureModel(backbone, model, layers)


def resume_key(config_hash: str, manifest_sha256: str) -> str:
    """What a partial features file must have been started with to be continued: the same config and images."""
    return f"{config_hash}:{manifest_sha256}"


def write_features(
    features: FeatureModel, config: ExtractConfig, compute: accelerate.Compute, manifest: Manifest, out: str | Path,
    show_progress: bool = True,
) -> list[tuple[str, str]]:
    """Run ``features`` over every image of ``manifest`` in batches into ``out`` (HDF5), resumably; return the
    (path, reason) of every image that could not be decoded."""
    attrs = provenance(config, features.backbone, manifest, compute)
    paths = [manifest.absolute(i) for i in range(len(manifest))]
    with FeatureWriter(
        out, capacity=len(manifest), layers=features.layers, attrs=attrs, compression=config.compression,
        resume_key=resume_key(attrs["config_hash"], attrs["manifest_sha256"]),
    ) as writer, tqdm(
        total=len(manifest), initial=writer.position, unit="img", desc="extract", disable=not show_progress
    ) as progress:
        started, resumed_at = time.perf_counter(), writer.position
        batches = iter_batches(
            paths, features.backbone.input_size, config.interpolation, compute.batch_size,
            on_error=config.on_error, start=writer.position,
        )
        for batch in batches:
            rows = batch.indices
            values = {}
            if len(rows):
                values = stored_values(
                    features.model, features.backbone, config.stored_layers, batch.images, compute.batch_size,
                    config.pixels,
                )
            for position, message in batch.errors:
                log.warning("skipped %s", message)
            writer.write(
                batch.stop,
                values,
                [manifest.paths[i] for i in rows],
                manifest.labels[rows],
                [manifest.splits[i] for i in rows],
                skipped=[(manifest.paths[i], message) for i, message in batch.errors],
            )
            progress.update(batch.stop - batch.start)
        elapsed = time.perf_counter() - started
        done = len(manifest) - resumed_at
        log.info("extracted %d images in %.1f s (%.1f img/s)", done, elapsed, done / max(elapsed, 1e-9))
        skipped = writer.skipped()
    return skipped


def extract_features(manifest: Manifest, config: ExtractConfig, out: str | Path) -> Path:
    """Run the frozen backbone over every image of ``manifest`` and write ``out`` (HDF5), resumably: in this
    process, or in shards on ``config.cluster`` merged into the same file."""
    compute = accelerate.resolve(config.batch_size, config.mixed_precision, config.xla)
    features = load_feature_model(config, compute)
    log.info(
        "extracting %s from %s at %s for %d images: %s",
        config.layer_names, features.backbone.name, features.backbone.input_size, len(manifest),
        {name: shape for name, (shape, _) in features.layers.items()},
    )
    if config.cluster is None:
        skipped = write_features(features, config, compute, manifest, out)
    else:
        from pipeline.shards import extract_on_cluster  # imports dask only when a cluster is configured

        skipped = extract_on_cluster(features, config, compute, manifest, out)
    write_skipped_report(skipped_report_path(out), skipped)
    if skipped:
        log.warning("%d of %d images could not be decoded; see %s", len(skipped), len(manifest), skipped_report_path(out))
    return Path(out)


def write_skipped_report(path: Path, skipped: list[tuple[str, str]]) -> None:
    """Write ``path`` atomically: a ``path,reason`` CSV with one row per skipped image (header only if none)."""
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(skipped)


def run_extraction(images: str | Path, out: str | Path, config: ExtractConfig, image_root: str | Path | None = None) -> Path:
    """Read any image source (folders or CSV), then extract: what the DVC stage and the CLI both run."""
    return extract_features(read_images(images, image_root, config.split), config, out)
