"""Incremental extraction: earlier features files kept per config hash, their rows found again by image content hash.

After each extraction the output is hard-linked (copied across file systems) into a hidden folder beside it, as
``<config_hash>.h5``. DVC removes a stage's outputs before it runs; the link keeps the old file's data alive, so the
next run with the same config copies the rows of every image whose content it has already seen and runs the model
only on the others. Files of other configs are never read for reuse. The folder keeps the ``keep`` most recently
used configs; ``python -m pipeline reuse --prune N`` trims it by hand.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file, write_json
from pipeline.extraction.dataset import Manifest
from pipeline.store import FeatureReader

log = logging.getLogger(__name__)

INDEX = "index.json"  # config hash -> {last_used, backbone, layers}, newest first when listed


def reuse_folder(out: str | Path) -> Path:
    """The hidden folder beside ``out`` that keeps earlier outputs for reuse (not a DVC output, so it survives)."""
    out = Path(out)
    return out.with_name(f".{out.name}.reuse")


@dataclass
class Source:
    """One earlier features file of the same config, open for reading."""

    path: Path
    reader: FeatureReader
    train: np.ndarray  # per row: whether it is in the train split (only those rows have augmented views)


class Reuse:
    """Features files with the same config hash and library versions as ``attrs``, open for reading, and where
    each image (by content hash) has a row in them: the first file added that has it, its first such row.

    ``plan`` finds each manifest row's image; ``read`` gets rows of a file. Use as a context manager.
    """

    def __init__(self, paths: Sequence[str | Path], attrs: dict):
        self.sources: list[Source] = []
        self.index: dict[str, tuple[int, int]] = {}
        for path in paths:
            self.add(path, attrs)

    def add(self, path: str | Path, attrs: dict) -> bool:
        """Open ``path`` as a source when it holds features of this config (else log why not); return whether."""
        path = Path(path)
        if not path.is_file():
            return False
        try:
            reader = FeatureReader(path)
        except OSError as error:
            log.warning("not reusing %s: unreadable (%s)", path, error)
            return False
        why = None
        if not reader.copyable():
            why = "incomplete, or written before content hashes were stored"
        elif (recorded := reader.attrs()).get("config_hash") != attrs["config_hash"]:
            why = "another extraction config"
        elif recorded.get("versions", {}) != attrs["versions"]:
            why = "other library versions (values could differ in the last bits)"
        if why is not None:
            log.info("not reusing %s: %s", path, why)
            reader.close()
            return False
        number = len(self.sources)
        hashes = reader.hashes()
        for row in range(len(hashes) - 1, -1, -1):  # the first row of an image seen twice wins
            key = hashes[row]
            if key and self.index.get(key, (number,))[0] == number:
                self.index[key] = (number, row)
        self.sources.append(Source(path, reader, reader.in_split("train")))
        return True

    def plan(self, manifest: Manifest, views: bool) -> list[tuple[int, int] | None]:
        """For each manifest row, ``(source, row)`` holding its features, or None to compute it. With ``views`` a
        train row is reused only from a train row (the only ones with views) and vice versa."""
        found = []
        for key, split in zip(manifest.hashes, manifest.splits):
            hit = self.index.get(key)
            if hit is not None and views and self.sources[hit[0]].train[hit[1]] != (split == "train"):
                hit = None
            found.append(hit)
        return found

    def read(self, source: int, rows: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Datasets ``names`` (e.g. ``features/x``) at ``rows`` (any order, repeats allowed) of one source."""
        return self.sources[source].reader.read(rows, names)

    def __enter__(self) -> Reuse:
        return self

    def __exit__(self, *exc) -> None:
        for source in self.sources:
            source.reader.close()


def _read_index(folder: Path) -> dict[str, dict]:
    path = folder / INDEX
    return json.loads(path.read_text()) if path.is_file() else {}


def candidates(out: str | Path, config_hash: str) -> list[Path]:
    """Where rows of ``config_hash`` may be found: the kept file of that config, and ``out`` itself when present."""
    return [reuse_folder(out) / f"{config_hash}.h5", Path(out)]


def remember(out: str | Path, attrs: dict, keep: int) -> None:
    """Keep ``out`` for reuse as its config's file (a hard link, else a copy), then keep only the ``keep`` most
    recently used configs (0: keep none)."""
    out, folder = Path(out), reuse_folder(out)
    if keep == 0:
        prune(out, 0)
        return
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / f"{attrs['config_hash']}.h5") as tmp:
        try:
            os.link(out, tmp)
        except OSError:  # another file system, or links not supported: a copy
            shutil.copyfile(out, tmp)
    index = _read_index(folder)
    index[attrs["config_hash"]] = {"last_used": time.time(), "backbone": attrs["backbone"], "layers": attrs["layers"]}
    write_json(folder / INDEX, index)
    prune(out, keep)


def entries(out: str | Path) -> list[dict]:
    """The kept configs, most recently used first: config hash, backbone, layers, last use, file and bytes on disk
    (a file that is a hard link of the current output costs no extra space while that output exists)."""
    folder = reuse_folder(out)
    index = _read_index(folder)
    rows = []
    for config_hash, record in sorted(index.items(), key=lambda item: -item[1]["last_used"]):
        path = folder / f"{config_hash}.h5"
        if path.is_file():
            stat = path.stat()
            rows.append({"config_hash": config_hash, **record, "path": str(path), "bytes": stat.st_size,
                         "shared_with_output": stat.st_nlink > 1})
    return rows


def prune(out: str | Path, keep: int) -> list[str]:
    """Remove all but the ``keep`` most recently used configs' files; returns the config hashes removed."""
    folder = reuse_folder(out)
    if not folder.is_dir():
        return []
    index = _read_index(folder)
    ranked = sorted(index, key=lambda config_hash: -index[config_hash]["last_used"])
    removed = ranked[keep:]
    for config_hash in removed:
        (folder / f"{config_hash}.h5").unlink(missing_ok=True)
        del index[config_hash]
    known = {f"{config_hash}.h5" for config_hash in index}
    for path in folder.glob("*.h5"):  # files the index does not know (an interrupted run): never reused, removed
        if path.name not in known:
            path.unlink()
    for path in folder.glob(".*.partial"):  # a link or copy being made when a run was killed
        path.unlink()
    if index:
        write_json(folder / INDEX, index)
    else:
        shutil.rmtree(folder)
    if removed:
        log.info("removed %d kept features file(s) from %s: %s", len(removed), folder, removed)
    return removed
