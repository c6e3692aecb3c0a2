"""Stage one: manifest -> decoded batches -> frozen backbone (all layers in one pass) -> resumable HDF5 file."""

from __future__ import annotations

import csv
import hashlib
import itertools
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import __version__
from pipeline.atomic import atomic_file, check_writable, disk_full_reported
from pipeline.config import PIXELS, PLACEMENT, ExtractConfig, LayerSpec, config_hash
from pipeline.extraction import accelerate
from pipeline.extraction.augment import augment_views
from pipeline.extraction.backbone import Backbone, load_backbone
from pipeline.extraction.dataset import Manifest, read_images
from pipeline.extraction.images import iter_batches
from pipeline.extraction.reuse import Reuse, candidates, remember, reuse_folder
from pipeline.store import COPY_PIECE_BYTES, FeatureWriter, check_replaceable, longest, row_nbytes

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
    """sha256 over the ordered (path, label, split, content hash) rows and class names: which images, labelled how."""
    digest = hashlib.sha256("\0".join(manifest.class_names).encode())
    hashes = manifest.hashes if manifest.hashes is not None else [""] * len(manifest)
    for path, label, split, content in zip(manifest.paths, manifest.labels.tolist(), manifest.splits, hashes):
        digest.update(f"\n{path}\0{label}\0{split}\0{content}".encode())
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


@dataclass(frozen=True)
class Extracted:
    """What an extraction did: the file, the (path, reason) of each image that could not be decoded, how many
    images went through the model, and how many rows were copied from earlier files (``pipeline.extraction.reuse``)."""

    path: Path
    skipped: list[tuple[str, str]]
    computed: int
    reused: int


def view_values(
    features: FeatureModel, config: ExtractConfig, batch_size: int, images: np.ndarray, hashes: Sequence[str],
    train: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per stored layer, ``(len(images), K, ...)``: K augmented views of the ``train`` images (seeded by their
    content ``hashes``) through the same model; NaN rows for the others."""
    views = {
        name: np.full((len(images), config.augment_views, *shape), np.nan, dtype=np.float32)
        for name, (shape, _) in features.layers.items()
    }
    if train.any():
        chosen = np.flatnonzero(train)
        augmented = augment_views(images[chosen], [hashes[i] for i in chosen], config.augment_views, config.augment)
        for view, batch in enumerate(augmented):
            values = stored_values(
                features.model, features.backbone, config.stored_layers, batch, batch_size, config.pixels
            )
            for name, value in values.items():
                views[name][chosen, view] = value
    return views


def write_features(
    features: FeatureModel, config: ExtractConfig, compute: accelerate.Compute, manifest: Manifest, out: str | Path,
    reuse: Reuse | None = None, show_progress: bool = True,
) -> Extracted:
    """Write the features of every image of ``manifest`` (hashed) into ``out`` (HDF5), in manifest order,
    resumably: rows ``reuse`` finds (by content hash) are copied, the others go through ``features`` in batches."""
    attrs = provenance(config, features.backbone, manifest, compute)
    n, views = len(manifest), config.augment_views
    found = reuse.plan(manifest, views > 0) if reuse is not None else [None] * n
    to_compute = np.array([i for i, hit in enumerate(found) if hit is None], dtype=np.int64)
    names = [f"features/{name}" for name in features.layers] + [f"views/{name}" for name in features.layers if views]
    piece = max(1, COPY_PIECE_BYTES // max(1, row_nbytes(features.layers) * (1 + views)))
    computed = 0

    def write(position, rows, values, skipped=()):
        """Rows ``rows`` (manifest indices, ascending) with their ``values`` (per dataset name)."""
        writer.write(
            position, {name.split("/", 1)[1]: v for name, v in values.items() if name.startswith("features/")},
            [manifest.paths[i] for i in rows], manifest.labels[rows], [manifest.splits[i] for i in rows],
            skipped=skipped, hashes=[manifest.hashes[i] for i in rows],
            views={name.split("/", 1)[1]: v for name, v in values.items() if name.startswith("views/")},
        )

    def copy(rows: np.ndarray, position: int | None) -> None:
        """Copy reused manifest ``rows`` (ascending) from their sources, ``piece`` rows at a time."""
        for first in range(0, len(rows), piece):
            part = rows[first : first + piece]
            values = {name: np.empty((len(part), *writer.file[name].shape[1:]), writer.file[name].dtype) for name in names}
            for source in {found[i][0] for i in part}:
                mine = np.array([found[i][0] == source for i in part])
                for name, value in reuse.read(source, np.array([found[i][1] for i in part[mine]]), names).items():
                    values[name][mine] = value
            last = first + piece >= len(rows)
            write(position if last else None, part, values)

    with FeatureWriter(
        out, capacity=n, layers=features.layers, attrs=attrs, compression=config.compression,
        resume_key=resume_key(attrs["config_hash"], attrs["manifest_sha256"]), views=views,
        path_bytes=longest(manifest.paths), split_bytes=longest(manifest.splits),
    ) as writer, tqdm(total=n, initial=writer.position, unit="img", desc="extract", disable=not show_progress) as progress:
        started, resumed_at = time.perf_counter(), writer.position
        batches = iter_batches(
            [manifest.absolute(i) for i in to_compute], features.backbone.input_size, config.interpolation,
            compute.batch_size, on_error=config.on_error, start=int(np.searchsorted(to_compute, writer.position)),
        )
        for batch in batches:
            rows = to_compute[batch.indices]
            values = {}
            if len(rows):
                stored = stored_values(
                    features.model, features.backbone, config.stored_layers, batch.images, compute.batch_size,
                    config.pixels,
                )
                values = {f"features/{name}": value for name, value in stored.items()}
                if views:
                    train = np.array([manifest.splits[i] == "train" for i in rows])
                    hashes = [manifest.hashes[i] for i in rows]
                    extra = view_values(features, config, compute.batch_size, batch.images, hashes, train)
                    values.update({f"views/{name}": value for name, value in extra.items()})
                computed += len(rows)
            for _, message in batch.errors:
                log.warning("skipped %s", message)
            # The batch's span of manifest rows, in order: runs of reused rows (copied) and of computed ones.
            stop = int(to_compute[batch.stop - 1]) + 1
            place = {int(row): k for k, row in enumerate(rows)}
            span = [i for i in range(writer.position, stop) if found[i] is not None or i in place]
            for reused, run in itertools.groupby(span, key=lambda i: found[i] is not None):
                run = np.array(list(run), dtype=np.int64)
                if reused:
                    copy(run, None)
                else:
                    at = [place[i] for i in run]
                    write(None, run, {name: value[at] for name, value in values.items()})
            write(stop, np.zeros(0, dtype=np.int64), {}, [(manifest.paths[to_compute[i]], m) for i, m in batch.errors])
            progress.update(stop - progress.n)
        copy(np.array([i for i in range(writer.position, n) if found[i] is not None], dtype=np.int64), n)
        progress.update(n - progress.n)
        elapsed = time.perf_counter() - started
        log.info(
            "%d images through the model in %.1f s (%.1f img/s), %d rows written",
            computed, elapsed, computed / max(elapsed, 1e-9), n - resumed_at,
        )
        skipped = writer.skipped()
    reused = sum(hit is not None for hit in found)
    return Extracted(Path(out), skipped, computed, reused)


def extract_features(manifest: Manifest, config: ExtractConfig, out: str | Path) -> Extracted:
    """Run the frozen backbone over every image of ``manifest`` and write ``out`` (HDF5), resumably: in this
    process, or in shards on ``config.cluster`` merged into the same file. Rows of images already extracted with
    this config (same content hash, in the kept earlier outputs or in ``out``) are copied, not computed.

    An output folder that cannot be written is refused before the model loads; a disk without room for the file,
    before the first batch; a disk that fills up later stops the run with a one-line error, the work kept. A file at
    ``out`` that is not a features file is never replaced."""
    check_writable(out)
    check_replaceable(out)
    compute = accelerate.resolve(config.batch_size, config.mixed_precision, config.xla)
    features = load_feature_model(config, compute)
    log.info(
        "extracting %s from %s at %s for %d images: %s",
        config.layer_names, features.backbone.name, features.backbone.input_size, len(manifest),
        {name: shape for name, (shape, _) in features.layers.items()},
    )
    manifest = manifest.hashed()
    attrs = provenance(config, features.backbone, manifest, compute)
    with Reuse(candidates(out, attrs["config_hash"]) if config.reuse else [], attrs) as reuse:
        if config.cluster is None:
            result = write_features(features, config, compute, manifest, out, reuse)
        else:
            from pipeline.extraction.shards import extract_on_cluster  # imports dask only when a cluster is configured

            result = extract_on_cluster(features, config, compute, manifest, out, reuse)
    log.info("%d rows reused from earlier extractions, %d images computed", result.reused, result.computed)
    with disk_full_reported(reuse_folder(out)):
        remember(out, attrs, config.reuse)
    with disk_full_reported(skipped_report_path(out)):
        write_skipped_report(skipped_report_path(out), result.skipped)
    if result.skipped:
        log.warning(
            "%d of %d images could not be decoded; see %s", len(result.skipped), len(manifest), skipped_report_path(out)
        )
    return result


def write_skipped_report(path: Path, skipped: list[tuple[str, str]]) -> None:
    """Write ``path`` atomically: a ``path,reason`` CSV with one row per skipped image (header only if none)."""
    with atomic_file(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(skipped)


def run_extraction(
    images: str | Path, out: str | Path, config: ExtractConfig, image_root: str | Path | None = None
) -> Extracted:
    """Read any image source (folders or CSV), then extract: what the DVC stage and the CLI both run."""
    return extract_features(read_images(images, image_root, config.split), config, out)
