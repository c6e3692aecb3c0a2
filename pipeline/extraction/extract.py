"""Stage one: manifest -> decoded batches -> frozen backbone (all layers in one pass) -> resumable HDF5 file, in this
process (``pipeline.extraction.write``) or in shards on a cluster (``pipeline.extraction.shards``)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from pipeline.atomic import atomic_file, check_writable, disk_full_reported
from pipeline.config import ExtractConfig
from pipeline.extraction import accelerate
from pipeline.extraction.blocks import expand_blocks
from pipeline.extraction.dataset import Manifest, read_images
from pipeline.extraction.model import load_feature_model
from pipeline.extraction.provenance import provenance
from pipeline.extraction.reuse import Reuse, candidates, remember, reuse_folder
from pipeline.extraction.write import Extracted, write_features
from pipeline.store import check_replaceable

log = logging.getLogger(__name__)


def skipped_report_path(out: str | Path) -> Path:
    """The CSV beside the features file that lists every skipped image and why."""
    return Path(out).with_suffix(".skipped.csv")


def extract_features(manifest: Manifest, config: ExtractConfig, out: str | Path) -> Extracted:
    """Run the frozen backbone over every image of ``manifest`` and write ``out`` (HDF5), resumably: in this
    process, or in shards on ``config.cluster`` merged into the same file. Rows of images already extracted with
    this config (same content hash, in the kept earlier outputs or in ``out``) are copied, not computed.

    An output folder that cannot be written is refused before the model loads; a disk without room for the file,
    before the first batch; a disk that fills up later stops the run with a one-line error, the work kept. A file at
    ``out`` that is not a features file is never replaced."""
    check_writable(out)
    check_replaceable(out)
    config = expand_blocks(config)  # extract.layers: blocks -> the backbone's block outputs, before anything records it
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
