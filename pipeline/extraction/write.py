"""The single-process writer loop: a manifest's images, in batches, through the feature model into one resumable
features file, rows already extracted copied instead (``pipeline.extraction.reuse``). Extraction in one process
runs it on the whole manifest; on a cluster (``pipeline.extraction.shards``) each shard runs it, then the merge."""

from __future__ import annotations

import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config import ExtractConfig
from pipeline.extraction import accelerate
from pipeline.extraction.dataset import Manifest
from pipeline.extraction.images import iter_batches
from pipeline.extraction.model import FeatureModel, stored_values, view_values
from pipeline.extraction.provenance import provenance, resume_key
from pipeline.extraction.reuse import Reuse
from pipeline.store import COPY_PIECE_BYTES, FeatureWriter, longest, row_nbytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extracted:
    """What an extraction did: the file, the (path, reason) of each image that could not be decoded, how many
    images went through the model, and how many rows were copied from earlier files (``pipeline.extraction.reuse``)."""

    path: Path
    skipped: list[tuple[str, str]]
    computed: int
    reused: int


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
            values = writer.empty_rows(names, len(part))
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
            config.decode, compute.batch_size, on_error=config.on_error, start=int(np.searchsorted(to_compute, writer.position)),
        )

        def write_batch(first: int, stop: int, rows: np.ndarray, values: dict, errors: list[tuple[int, str]]) -> None:
            """Write manifest rows ``first:stop``: runs of reused rows (copied) and of computed ``rows`` (``values``),
            in order, then mark ``stop`` done with the batch's undecodable files."""
            place = {int(row): k for k, row in enumerate(rows)}
            span = [i for i in range(first, stop) if found[i] is not None or i in place]
            for reused, run in itertools.groupby(span, key=lambda i: found[i] is not None):
                run = np.array(list(run), dtype=np.int64)
                if reused:
                    copy(run, None)
                else:
                    at = [place[i] for i in run]
                    write(None, run, {name: value[at] for name, value in values.items()})
            write(stop, np.zeros(0, dtype=np.int64), {}, [(manifest.paths[to_compute[i]], m) for i, m in errors])
            progress.update(stop - progress.n)

        # The writer thread writes batch k while the model computes batch k + 1 (TensorFlow releases the GIL), and
        # the reader's threads decode ahead of both; one batch waits for the writer at most, so memory stays bounded.
        with ThreadPoolExecutor(1, thread_name_prefix="features-writer") as writer_thread:
            pending, first = None, writer.position
            for batch in batches:
                rows = to_compute[batch.indices]
                values = {}
                if len(rows):
                    stored = stored_values(
                        features.model, features.device, config.stored_layers, batch.images, config.pixels
                    )
                    values = {f"features/{name}": value for name, value in stored.items()}
                    if views:
                        train = np.array([manifest.splits[i] == "train" for i in rows])
                        hashes = [manifest.hashes[i] for i in rows]
                        extra = view_values(features, config, batch.images, hashes, train)
                        values.update({f"views/{name}": value for name, value in extra.items()})
                    computed += len(rows)
                for _, message in batch.errors:
                    log.warning("skipped %s", message)
                if pending is not None:
                    pending.result()  # the previous batch is on disk (or its error is raised here)
                stop = int(to_compute[batch.stop - 1]) + 1
                pending = writer_thread.submit(write_batch, first, stop, rows, values, batch.errors)
                first = stop
            if pending is not None:
                pending.result()
        copy(np.array([i for i in range(writer.position, n) if found[i] is not None], dtype=np.int64), n)
        progress.update(n - progress.n)
        elapsed = time.perf_counter() - started
        log.info(
            "%d images through the model in %.1f s (%.1f img/s, device batch %d), %d rows written",
            computed, elapsed, computed / max(elapsed, 1e-9), features.device.size, n - resumed_at,
        )
        writer.final_attrs["device_batch_size"] = features.device.size
        skipped = writer.skipped()
    reused = sum(hit is not None for hit in found)
    return Extracted(Path(out), skipped, computed, reused)
