"""Incremental training: each classifier x layer run kept under a key of everything it read, copied back when unchanged.

DVC runs one stage per classifier and removes its outputs before it runs. This store, a hidden folder that is not a
DVC output, keeps a copy of every finished run (its model folder and its evaluation files) as
``<root>/<run>/<key>/``, where ``run`` is the ``train.layers`` entry and the key (``run_key``) hashes the classifier
entry, the layers, the memory settings, the exact data the run reads (``pipeline.store.content_digest``), the
pipeline's source code and the library versions. A run whose key is kept is copied back instead of trained: adding
a layer to the matrix trains every classifier on the new layer only. Each run keeps its ``keep`` most recently used
keys.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from pipeline.atomic import atomic_directory, atomic_file
from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.models import FEATURE_KEYS, library_versions
from pipeline.config import ClassifierConfig, TrainConfig
from pipeline.store import content_digest, read_attrs

log = logging.getLogger(__name__)

MODEL, EVALUATION = "model", "eval"  # a kept run's two folders


@functools.cache
def source_digest() -> str:
    """sha256 of the pipeline package's source: any code change makes every kept run stale (DVC re-runs the stage
    on a code change; a kept run must not outlive it)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def run_key(features: str | Path, config: ClassifierConfig, train: TrainConfig) -> str:
    """The key of one classifier x layer run: equal keys mean the run would train on the same inputs, with the same
    settings and code, and write the same files (``fit_seconds`` aside): the features file's path and the provenance
    that ``model.json`` records are part of it."""
    attrs = read_attrs(features)
    record = {
        "classifier": dataclasses.asdict(config),
        "provenance": {key: attrs[key] for key in (*FEATURE_KEYS, "class_names")},  # what model.json records
        "memory_budget": train.memory_budget,
        "chunk_size": train.chunk_size,
        "features_file": str(features),
        "data": content_digest(features, config.layers, views=config.augmented),
        "source": source_digest(),
        "versions": library_versions(keras_model=config.estimator == "keras_head"),  # as model.json records
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=repr).encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class RunStore:
    """The kept runs of one classifier, under ``root`` (``data/.train.reuse/<classifier>``), ``keep`` per run."""

    root: Path
    keep: int

    def restore(self, run: str, key: str, model_dir: Path, files: EvalFiles) -> bool:
        """Copy the kept run ``key`` back to ``model_dir`` and ``files``; False when it is not kept."""
        kept = Path(self.root) / run / key
        if self.keep == 0 or not kept.is_dir():
            return False
        with atomic_directory(model_dir) as tmp:
            shutil.copytree(kept / MODEL, tmp, dirs_exist_ok=True)
        for name, path in files.named().items():
            with atomic_file(path) as tmp:
                shutil.copyfile(kept / EVALUATION / name, tmp)
        os.utime(kept)  # most recently used
        self.prune(run)  # also after a lower keep
        return True

    def save(self, run: str, key: str, model_dir: Path, files: EvalFiles) -> None:
        """Keep a copy of the finished run, then only the ``keep`` most recently used keys of ``run``."""
        if self.keep > 0:
            with atomic_directory(Path(self.root) / run / key) as tmp:
                shutil.copytree(model_dir, tmp / MODEL)
                (tmp / EVALUATION).mkdir()
                for name, path in files.named().items():
                    shutil.copyfile(path, tmp / EVALUATION / name)
        self.prune(run)

    def prune(self, run: str) -> list[str]:
        """Remove all but the ``keep`` most recently used keys of ``run`` (and a copy a killed run left half made);
        returns the keys removed. With ``keep`` 0 the whole store goes."""
        if self.keep == 0:
            shutil.rmtree(self.root, ignore_errors=True)
            return []
        folder = Path(self.root) / run
        if not folder.is_dir():
            return []
        for partial in folder.glob(".*.partial"):
            shutil.rmtree(partial)
        kept = sorted(folder.iterdir(), key=lambda path: -path.stat().st_mtime)
        for path in kept[self.keep :]:
            shutil.rmtree(path)
        removed = [path.name for path in kept[self.keep :]]
        if removed:
            log.debug("removed %d kept run(s) of %s from %s", len(removed), run, self.root)
        return removed
