"""Features in HDF5: a writer (temporary file, row chunks, ``complete`` flag, atomic rename) and readers."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.atomic import temporary_sibling
from pipeline.validation import ConfigError, check_one_of

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
STRING = h5py.string_dtype()


def rows_per_chunk(row_shape: Sequence[int], dtype: str, target_bytes: int = CHUNK_BYTES) -> int:
    """Rows in one chunk so that a chunk holds about ``target_bytes`` (at least one row)."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, target_bytes // max(row_bytes, 1))


class FeatureWriter:
    """Write a features file at a temporary path beside ``path``; rename it into place only once complete.

    Use as a context manager: on a clean exit ``complete`` is set and the file is renamed to ``path``; on an
    error the final path is untouched.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        paths: Sequence[str],
        labels: np.ndarray,
        splits: Sequence[str],
        layers: Mapping[str, tuple[tuple[int, ...], str]],
        attrs: Mapping[str, Any],
    ):
        self.path = Path(path)
        self.tmp = temporary_sibling(self.path)
        self.n_rows = len(paths)
        if self.n_rows == 0:
            raise ConfigError(f"no images to extract into {self.path}")
        if not len(labels) == len(splits) == self.n_rows:
            raise ValueError(f"paths, labels and splits must be row-aligned: {self.n_rows}, {len(labels)}, {len(splits)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.tmp, "w")
        try:
            self._create(paths, labels, splits, layers, attrs)
        except BaseException:
            self.file.close()
            self.tmp.unlink(missing_ok=True)
            raise

    def _create(self, paths, labels, splits, layers, attrs) -> None:
        f = self.file
        structured = [key for key, value in attrs.items() if isinstance(value, (dict, list, tuple))]
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if key in structured else value
        f.attrs["json_attrs"] = json.dumps(structured)
        f.attrs["complete"] = False
        f.attrs["n_rows"] = self.n_rows
        f.create_dataset("paths", data=np.asarray(paths, dtype=object), dtype=STRING, track_times=False)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64), track_times=False)
        f.create_dataset("split", data=np.asarray(splits, dtype=object), dtype=STRING, track_times=False)
        group = f.create_group("features")
        for name, (row_shape, dtype) in layers.items():
            chunk = (min(rows_per_chunk(row_shape, dtype), max(self.n_rows, 1)), *row_shape)
            group.create_dataset(
                name, shape=(self.n_rows, *row_shape), dtype=dtype, chunks=chunk, track_times=False
            )

    def write(self, start: int, features: Mapping[str, np.ndarray]) -> None:
        """Write one batch of rows starting at ``start`` for every layer."""
        for name, values in features.items():
            dataset = self.file["features"][name]
            dataset[start : start + len(values)] = values.astype(dataset.dtype, copy=False)

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.file.attrs["complete"] = True
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
            log.info("wrote %s (%d rows)", self.path, self.n_rows)
        else:
            self.tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Split:
    """Features and integer labels of one layer for one split."""

    X: np.ndarray
    y: np.ndarray


def open_features(path: str | Path) -> h5py.File:
    """Open a features file for reading; refuse a missing or incomplete one with a message naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"features file not found: {path}")
    f = h5py.File(path, "r")
    if not f.attrs.get("complete", False):
        f.close()
        raise ConfigError(f"features file {path} is incomplete (attribute complete is not True)")
    return f


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes (provenance) of a features file, JSON values decoded."""
    with open_features(path) as f:
        structured = set(json.loads(f.attrs.get("json_attrs", "[]")))
        return {key: _decode(value, key in structured) for key, value in f.attrs.items() if key != "json_attrs"}


def _decode(value: Any, is_json: bool) -> Any:
    if is_json:
        return json.loads(value)
    return value.item() if isinstance(value, np.generic) else value


def load_split(path: str | Path, layer: str, split: str, flatten: bool = False) -> Split:
    """Read one layer's rows of one split (``train``, ``val`` or ``test``) into memory; ``flatten`` gives 2-D X."""
    with open_features(path) as f:
        check_one_of("layer", layer, list(f["features"]))
        splits = f["split"].asstr()[()]
        check_one_of("split", split, sorted(set(splits)))
        rows = np.flatnonzero(splits == split)
        contiguous = rows[-1] - rows[0] + 1 == rows.size
        selection = slice(rows[0], rows[-1] + 1) if contiguous else rows
        X = f["features"][layer][selection]
        return Split(X=X.reshape(len(X), -1) if flatten else X, y=f["labels"][selection])
