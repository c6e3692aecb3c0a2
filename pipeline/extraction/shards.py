"""Extraction on a Dask cluster: contiguous shards of the manifest, one file each, merged into one features file."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dask.base import tokenize
from distributed import Client, as_completed
from tqdm import tqdm

from pipeline.cluster import dask_client
from pipeline.config import ExtractConfig
from pipeline.extraction import accelerate
from pipeline.extraction.dataset import Manifest
from pipeline.extraction.model import FeatureModel, load_feature_model
from pipeline.extraction.provenance import manifest_hash, provenance, resume_key
from pipeline.extraction.reuse import Reuse
from pipeline.extraction.write import Extracted, write_features
from pipeline.store import stored_resume_key
from pipeline.validation import ConfigError, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of the manifest, extracted into their own features file ``path``."""

    index: int
    start: int
    stop: int
    manifest: Manifest  # the shard's rows, its root made absolute so that a worker elsewhere finds the same files
    path: Path
    config_hash: str
    key: str  # the resume key: the config hash and the hash of this shard's rows

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ShardRun:
    """What a Dask task did with one shard."""

    index: int
    extracted: bool  # False: a complete shard file of an earlier run was reused, or the shard failed
    loaded: bool  # this task loaded the feature model (its worker process had not yet)
    worker: int  # the worker's process id
    computed: int = 0  # images that went through the model
    error: UserError | None = None  # e.g. an undecodable image under on_error: fail


def shard_folder(out: str | Path) -> Path:
    """The hidden folder beside ``out`` holding its shard files until they are merged (not a DVC output, so it
    survives DVC removing the outputs before a run)."""
    out = Path(out)
    return out.with_name(f".{out.name}.shards")


def plan_shards(manifest: Manifest, shard_size: int, batch_size: int, folder: Path, config_hash: str) -> list[Shard]:
    """``manifest`` cut into contiguous shards (the last one shorter), their files in ``folder``.

    ``shard_size`` is rounded up to a multiple of ``batch_size``, so that every batch holds the images it holds in
    a single process: the same batches give bit-identical features (another grouping may change the last bits).
    """
    if shard_size % batch_size:
        rounded = -(-shard_size // batch_size) * batch_size
        log.info("shard size %d rounded up to %d, a multiple of the batch size %d", shard_size, rounded, batch_size)
        shard_size = rounded
    root, folder = Path(manifest.root).absolute(), Path(folder).absolute()
    shards = []
    for index, start in enumerate(range(0, len(manifest), shard_size)):
        stop = min(start + shard_size, len(manifest))
        rows = dataclasses.replace(manifest.take(range(start, stop)), root=root)
        key = resume_key(config_hash, manifest_hash(rows))
        shards.append(Shard(index, start, stop, rows, folder / f"shard-{index:05d}.h5", config_hash, key))
    log.info("%d images in %d shards of up to %d, their files in %s", len(manifest), len(shards), shard_size, folder)
    return shards


# In each worker process: the feature model of the config hash in use, loaded by the first shard that needs it.
_MODELS: dict[str, FeatureModel] = {}
_LOADING = threading.Lock()


def _feature_model(config: ExtractConfig, compute: accelerate.Compute, config_hash: str) -> tuple[FeatureModel, bool]:
    """This process's feature model for ``config_hash`` (one at a time), and whether this call loaded it."""
    with _LOADING:
        if config_hash in _MODELS:
            return _MODELS[config_hash], False
        _MODELS.clear()
        _MODELS[config_hash] = load_feature_model(config, compute)
        return _MODELS[config_hash], True


def is_extracted(shard: Shard) -> bool:
    """Whether ``shard.path`` holds this shard already (files appear there only complete, by atomic rename)."""
    return shard.path.is_file() and stored_resume_key(shard.path) == shard.key


def extract_shard(shard: Shard, config: ExtractConfig, compute: accelerate.Compute) -> ShardRun:
    """The Dask task: extract ``shard`` into its file with single-process extraction's own loop, unless it is
    there already. A partial file of a killed attempt is continued (same key) by the FeatureWriter."""
    if is_extracted(shard):
        return ShardRun(shard.index, extracted=False, loaded=False, worker=os.getpid())
    loaded = False
    try:
        features, loaded = _feature_model(config, compute, shard.config_hash)
        written = write_features(features, config, compute, shard.manifest, shard.path, show_progress=False)
    except UserError as error:  # returned, not raised: the client reports it in one line, without a Dask traceback
        return ShardRun(shard.index, extracted=False, loaded=loaded, worker=os.getpid(), error=error)
    return ShardRun(shard.index, extracted=True, loaded=loaded, worker=os.getpid(), computed=written.computed)


def run_shards(
    client: Client, shards: list[Shard], config: ExtractConfig, compute: accelerate.Compute
) -> list[ShardRun]:
    """Run ``extract_shard`` for every shard on the cluster, a progress bar over images advancing per shard.

    A worker that dies mid-shard has its shard run again by Dask. A user error in a shard (an undecodable image
    under ``on_error: fail``) cancels the shards after it, and the error of the first failing shard in manifest
    order is raised: the one a single process would have stopped at.
    """
    futures = {}
    for shard in shards:
        key = f"extract-shard-{shard.index:05d}-{tokenize(shard, config, compute)}"
        futures[client.submit(extract_shard, shard, config, compute, key=key)] = shard
    runs, errors = [], {}
    total = sum(len(shard) for shard in shards)
    with tqdm(total=total, unit="img", desc=f"extract ({len(shards)} shards)") as progress:
        for future in as_completed(futures):
            if future.cancelled():
                continue
            run = future.result()  # raises what is not a user error (a bug; a shard that killed its workers)
            if run.error is None:
                runs.append(run)
                progress.update(len(futures[future]))
                continue
            errors[run.index] = run.error
            client.cancel([later for later, shard in futures.items() if shard.index > min(errors)])
    if errors:
        raise errors[min(errors)]
    return runs


def extract_on_cluster(
    features: FeatureModel, config: ExtractConfig, compute: accelerate.Compute, manifest: Manifest, out: str | Path,
    reuse: Reuse,
) -> Extracted:
    """Extract the images of ``manifest`` that ``reuse`` lacks on ``config.cluster``, in shards of
    ``config.shard_size`` images, then write ``out`` in manifest order from the shards and the reused rows.

    The shards join ``reuse`` as sources, so the file is written exactly as single-process extraction writes it
    (same provenance, same rows). Shard files stay in ``shard_folder(out)`` until ``out`` is complete: after a
    failure, or a cluster that died, the same command extracts only the shards that are missing. Workers run
    ``compute`` as resolved here and must see the same paths.
    """
    attrs = provenance(config, features.backbone, manifest, compute)
    missing = [i for i, hit in enumerate(reuse.plan(manifest, config.augment_views > 0)) if hit is None]
    folder, computed = shard_folder(out), 0
    if missing:
        shards = plan_shards(manifest.take(missing), config.shard_size, compute.batch_size, folder, attrs["config_hash"])
        with dask_client(config.cluster) as client:
            runs = run_shards(client, shards, config, compute)
        extracted = [run for run in runs if run.extracted]
        computed = sum(run.computed for run in runs)
        log.info(
            "%d of %d shards extracted, %d reused from an earlier run; the model was loaded %d times in %d worker "
            "processes",
            len(extracted), len(shards), len(runs) - len(extracted), sum(run.loaded for run in runs),
            len({run.worker for run in extracted}),
        )
        for shard in shards:
            if not reuse.add(shard.path, attrs):
                raise ConfigError(
                    f"shard {shard.path} was not extracted with config hash {shard.config_hash} as here: do the "
                    "workers load the same backbone and weights, with the same library versions?"
                )
    started = time.perf_counter()
    result = write_features(features, config, compute, manifest, out, reuse)
    log.info("wrote %s from the shards and reused rows in %.2f s", out, time.perf_counter() - started)
    shutil.rmtree(folder, ignore_errors=True)
    return Extracted(result.path, result.skipped, computed + result.computed, len(manifest) - len(missing))
