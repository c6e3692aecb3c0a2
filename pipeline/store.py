"""Features in HDF5: a resumable writer (temporary file, row chunks, atomic rename) and readers (splits, blocks, dask)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.atomic import temporary_sibling
from pipeline.validation import ConfigError, check_int, check_one_of

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
SPLIT_PIECE = 1 << 16  # rows of the split column read at a time
STRING = h5py.string_dtype()
SHA256 = "S64"  # a row's image content hash, hex
COPY_PIECE_BYTES = 64 << 20  # rows copied between features files (merge, reuse) this many bytes at a time


def row_nbytes(layers: Mapping[str, tuple[tuple[int, ...], str]]) -> int:
    """Bytes of one row across ``layers`` (name -> (row shape, dtype))."""
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in layers.values())


def rows_per_chunk(row_shape: Sequence[int], dtype: str, target_bytes: int = CHUNK_BYTES) -> int:
    """Rows in one chunk so that a chunk holds about ``target_bytes`` (at least one row)."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, target_bytes // max(row_bytes, 1))


class FeatureWriter:
    """Write a features file at a temporary path beside ``path``, resumably; rename it into place when complete.

    Rows are written in manifest order, skipping images that could not be decoded; ``/sha256`` holds each row's
    image content hash. With ``views`` K, ``/views/<layer>`` holds K augmented views per row, row-aligned to
    ``/features/<layer>`` (rows written without views, those outside the train split, stay NaN). After every batch the data,
    then the ``/progress`` dataset ``[manifest position, rows written]`` are written and the file is flushed, so
    a process killed at any point leaves a temporary file that a new writer with the same ``resume_key`` (the
    config hash and the manifest hash) continues from. A different key discards the old work, with a log line.
    Uncompressed datasets are allocated in full up front, so later writes change no HDF5 metadata.

    Use as a context manager: on a clean exit the datasets are trimmed to the rows written, ``complete`` is set
    and the file is renamed to ``path``; after an error the temporary file stays for the next run to resume.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        capacity: int,
        layers: Mapping[str, tuple[tuple[int, ...], str]],
        attrs: Mapping[str, Any],
        resume_key: str,
        compression: str | None = None,
        views: int = 0,
    ):
        self.path = Path(path)
        self.tmp = temporary_sibling(self.path)
        if capacity == 0:
            raise ConfigError(f"no images to extract into {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self._resume(resume_key)
        if self.file is None:
            self.file = h5py.File(self.tmp, "w")
            try:
                self._create(capacity, layers, attrs, resume_key, compression, views)
            except BaseException:
                self.file.close()
                self.tmp.unlink(missing_ok=True)
                raise
        self.position, self.rows = (int(v) for v in self.file["progress"][()])

    def _resume(self, resume_key: str) -> h5py.File | None:
        """Open the temporary file of an interrupted run with the same key, or remove it and return None."""
        if not self.tmp.exists():
            return None
        try:
            f = h5py.File(self.tmp, "r+")
        except OSError as error:
            log.warning("discarding unreadable partial file %s (%s); starting again", self.tmp, error)
            self.tmp.unlink()
            return None
        if f.attrs.get("resume_key") == resume_key and "progress" in f:
            position, rows = f["progress"][()]
            log.info("resuming %s: %d images done, %d rows written", self.path, position, rows)
            return f
        f.close()
        log.warning("discarding partial work in %s: the config or the image list changed", self.tmp)
        self.tmp.unlink()
        return None

    def _create(self, capacity, layers, attrs, resume_key, compression, views) -> None:
        f = self.file
        structured = [key for key, value in attrs.items() if isinstance(value, (dict, list, tuple))]
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if key in structured else value
        f.attrs["json_attrs"] = json.dumps(structured)
        f.attrs["resume_key"] = resume_key
        f.attrs["complete"] = False

        def create(name, row_shape, dtype, chunk_rows, fillvalue=None):
            dcpl = None
            if compression is None:
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            f.create_dataset(
                name, shape=(capacity, *row_shape), maxshape=(None, *row_shape), dtype=dtype,
                chunks=(min(chunk_rows, capacity), *row_shape), compression=compression, dcpl=dcpl, track_times=False,
                fillvalue=fillvalue,
            )

        create("paths", (), STRING, 4096)
        create("labels", (), np.int64, 4096)
        create("split", (), STRING, 4096)
        create("sha256", (), SHA256, 4096)
        for name, (row_shape, dtype) in layers.items():
            create(f"features/{name}", row_shape, dtype, rows_per_chunk(row_shape, dtype))
            if views:
                shape = (views, *row_shape)
                create(f"views/{name}", shape, dtype, rows_per_chunk(shape, dtype), fillvalue=np.nan)
        for name in ("skipped/path", "skipped/reason"):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=STRING, chunks=(256,), track_times=False)
        f.create_dataset("progress", data=np.zeros(2, dtype=np.int64), track_times=False)
        f.flush()

    def write(
        self,
        position: int | None,
        features: Mapping[str, np.ndarray],
        paths: Sequence[str],
        labels: np.ndarray,
        splits: Sequence[str],
        skipped: Sequence[tuple[str, str]] = (),
        hashes: Sequence[str] | None = None,
        views: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Append one batch of rows, record skipped files, then mark ``position`` images as done, durably.

        ``hashes``: the rows' image content hashes (None: unknown, empty). ``views``: per layer, the rows' views
        ``(rows, K, ...)`` (NaN rows where none were made); required when the file was created with views.

        ``position`` None appends without marking: the rows count once a later write marks a position (a resumed
        writer overwrites them), so a batch can be written in pieces; pass its ``skipped`` with the marking write.
        """
        f, start, stop = self.file, self.rows, self.rows + len(paths)
        if len(paths):
            for name, values in features.items():
                dataset = f["features"][name]
                dataset[start:stop] = values.astype(dataset.dtype, copy=False)
            f["paths"][start:stop] = np.asarray(paths, dtype=object)
            f["labels"][start:stop] = labels
            f["split"][start:stop] = np.asarray(splits, dtype=object)
            if hashes is not None:
                f["sha256"][start:stop] = np.asarray(hashes, dtype=SHA256)
            if "views" in f:
                for name in f["views"]:
                    dataset = f["views"][name]
                    dataset[start:stop] = views[name].astype(dataset.dtype, copy=False)
        if skipped:
            done = f["skipped/path"].shape[0]
            for name, column in zip(("path", "reason"), zip(*skipped)):
                dataset = f["skipped"][name]
                dataset.resize((done + len(skipped),))
                dataset[done:] = np.asarray(column, dtype=object)
        self.rows = stop
        if position is not None:
            f["progress"][:] = (position, stop)
            f.flush()
            self.position = position

    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every file skipped so far, including before a resume."""
        return list(zip(self.file["skipped/path"].asstr()[()], self.file["skipped/reason"].asstr()[()]))

    def __enter__(self) -> FeatureWriter:
        return self

    def _write_split_codes(self) -> None:
        """``/split_code``: the split column as uint8 indices into its ``names`` attribute (JSON), so readers select
        a split's rows without decoding a string per row. Written at the end, in pieces; replaced after a resume."""
        f = self.file
        names = sorted({name for _, piece in _pieces(f["split"]) for name in set(piece.tolist())})
        if "split_code" in f:
            del f["split_code"]
        codes = f.create_dataset(
            "split_code", shape=(self.rows,), dtype=np.uint8, chunks=(min(SPLIT_PIECE, self.rows),) if self.rows else None,
            track_times=False,
        )
        codes.attrs["names"] = json.dumps([name.decode() for name in names])
        for start, piece in _pieces(f["split"]):
            code = np.zeros(len(piece), dtype=np.uint8)
            for index, name in enumerate(names):
                code[piece == name] = index
            codes[start : start + len(piece)] = code

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.file.close()
            log.info("partial work kept in %s; the same command resumes it", self.tmp)
            return
        f = self.file
        views = [f"views/{layer}" for layer in f.get("views", ())]
        for name in ("paths", "labels", "split", "sha256", *(f"features/{layer}" for layer in f["features"]), *views):
            f[name].resize(self.rows, axis=0)
        self._write_split_codes()
        f.attrs["n_rows"] = self.rows
        f.attrs["complete"] = True
        f.close()
        os.replace(self.tmp, self.path)
        log.info("wrote %s (%d rows)", self.path, self.rows)


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
    data = load_layers(path, [layer], split)
    if flatten:
        return data
    with open_features(path) as f:
        shape = f["features"][layer].shape[1:]
    return Split(X=data.X.reshape(len(data.X), *shape), y=data.y)


def load_layers(path: str | Path, layers: Sequence[str], split: str | None) -> Split:
    """One split's rows (None: all) of several layers, each flattened, side by side in ``layers`` order.

    Read one HDF5 chunk at a time straight into the result, so a split whose rows are spread over the file
    (CSV or per-class sources) reads as fast as a contiguous one.
    """
    with open_features(path) as f:
        datasets, _, dtype = _layout(f, layers)
        return _read_block(datasets, f["labels"], dtype, _indices(selected_rows(f, split)), None)


def load_views(path: str | Path, layers: Sequence[str], split: str = "train") -> Split:
    """The augmented views of one split's rows, laid out as ``load_layers`` lays out clean rows: ``(K * rows,
    width)``, view 0 of every row first, then view 1, ..., with the labels repeated K times."""
    with open_features(path) as f:
        if "views" not in f:
            raise ConfigError(f"{path} has no augmented views: extract it with extract.augment_views above 0")
        for layer in layers:
            check_one_of("layer", layer, list(f["views"]))
        datasets = [f["views"][layer] for layer in layers]
        block = _read_block(datasets, f["labels"], np.result_type(*(dataset.dtype for dataset in datasets)), _indices(selected_rows(f, split)), None)
    views, rows = datasets[0].shape[1], len(block.y)
    edges = np.cumsum([_width(dataset) for dataset in datasets])[:-1]
    parts = [part.reshape(rows, views, -1) for part in np.split(block.X, edges, axis=1)]
    X = np.concatenate(parts, axis=2).transpose(1, 0, 2).reshape(views * rows, -1)
    if np.isnan(X).any():
        raise ConfigError(f"{path}: rows of the {split} split have no views (views are made for the train split only)")
    return Split(X=X, y=np.tile(block.y, views))


def feature_shape(path: str | Path, layer: str) -> tuple[int, ...]:
    """The stored per-image shape of ``layer``: ``(channels,)`` when pooled, ``(h, w, channels)`` when not."""
    with open_features(path) as f:
        check_one_of("layer", layer, list(f["features"]))
        return tuple(f["features"][layer].shape[1:])


def _pieces(column: h5py.Dataset, piece_rows: int = SPLIT_PIECE) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, values)`` of a string column, ``piece_rows`` at a time, as bytes (about 60 bytes a row in memory)."""
    for start in range(0, column.shape[0], piece_rows):
        yield start, column[start : start + piece_rows]


def split_rows(f: h5py.File, split: str | None) -> np.ndarray | slice:
    """Row selection for ``split`` (None: every row), as a slice when the rows are contiguous.

    Uses ``/split_code`` (one byte a row); a file without it (written by hand) has its ``/split`` strings read
    in pieces instead.
    """
    if split is None:
        return slice(None)
    if "split_code" in f:
        names = json.loads(f["split_code"].attrs["names"])
        check_one_of("split", split, names)
        rows = np.flatnonzero(f["split_code"][()] == names.index(split))
    else:
        present, pieces, wanted = set(), [], split.encode() if isinstance(split, str) else split
        for start, piece in _pieces(f["split"]):
            present.update(piece.tolist())
            pieces.append(np.flatnonzero(piece == wanted) + start)
        check_one_of("split", split, sorted(value.decode() for value in present))
        rows = np.concatenate(pieces)
    return slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == rows.size else rows


def _layout(f: h5py.File, layers: Sequence[str]) -> tuple[list[h5py.Dataset], list[int], np.dtype]:
    """The layers' datasets, their flat widths and the dtype ``load_layers`` gives when concatenating them."""
    for layer in layers:
        check_one_of("layer", layer, list(f["features"]))
    datasets = [f["features"][layer] for layer in layers]
    widths = [_width(dataset) for dataset in datasets]
    return datasets, widths, np.result_type(*(dataset.dtype for dataset in datasets))


def _width(dataset: h5py.Dataset) -> int:
    """Values in one flattened row of ``dataset``."""
    return int(np.prod(dataset.shape[1:], dtype=np.int64))


def selected_rows(f: h5py.File, split: str | None) -> range | np.ndarray:
    """The split's file rows: a range when contiguous (never materialised), else the sorted row indices."""
    selection = split_rows(f, split)
    return range(f["labels"].shape[0])[selection] if isinstance(selection, slice) else selection


def _indices(rows: range | np.ndarray) -> np.ndarray:
    return np.arange(rows.start, rows.stop) if isinstance(rows, range) else rows


def _chunk_rows(dataset: h5py.Dataset) -> int:
    return dataset.chunks[0] if dataset.chunks else rows_per_chunk(dataset.shape[1:], dataset.dtype)


def _units(rows: range | np.ndarray, unit_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` positions in ``rows`` of the pieces blocks are made of: each HDF5 chunk's rows when
    ``unit_rows`` is ``chunk_rows``, else consecutive runs of ``unit_rows`` (blocks smaller than a chunk)."""
    n = len(rows)
    if n == 0:
        return []
    if unit_rows < chunk_rows:
        return [(start, min(start + unit_rows, n)) for start in range(0, n, unit_rows)]
    if isinstance(rows, range):
        edges = np.arange(-rows.start % chunk_rows or chunk_rows, n, chunk_rows)
    else:
        edges = np.flatnonzero(np.diff(rows // chunk_rows)) + 1
    bounds = [0, *edges.tolist(), n]
    return list(zip(bounds[:-1], bounds[1:]))


def _pack(units: list[tuple[int, int]], block_rows: int) -> Iterator[list[tuple[int, int]]]:
    """Consecutive ``units`` grouped into blocks of at most ``block_rows`` rows (no unit is larger)."""
    block, size = [], 0
    for start, stop in units:
        if size + stop - start > block_rows:
            yield block
            block, size = [], 0
        block.append((start, stop))
        size += stop - start
    if block:
        yield block


def _read_into(target: np.ndarray, dataset: h5py.Dataset, rows: np.ndarray, placement: np.ndarray | None) -> None:
    """Copy ``dataset``'s sorted ``rows`` into ``target`` (one flattened row each), one HDF5 chunk at a time; with
    ``placement`` row ``i`` lands at ``target[placement[i]]``, which shuffles without a second copy. One run of
    consecutive rows into a contiguous ``target`` is a single read straight into it (as fast as ``np.load``)."""
    if len(rows) == 0:
        return
    if placement is None and rows[-1] - rows[0] + 1 == len(rows) and target.flags.c_contiguous:
        dataset.read_direct(target.reshape(len(rows), *dataset.shape[1:]), np.s_[rows[0] : rows[-1] + 1])
        return
    chunk = _chunk_rows(dataset)
    buffer = np.empty((chunk, *dataset.shape[1:]), dataset.dtype)  # one chunk's span of rows, reused
    gather = placement is None and target.flags.c_contiguous and target.dtype == dataset.dtype
    starts = np.flatnonzero(np.diff(rows // chunk, prepend=-1))
    for start, stop in zip(starts, [*starts[1:], len(rows)]):
        first, last = rows[start], rows[stop - 1]
        span = buffer[: last - first + 1]
        dataset.read_direct(span, np.s_[first : last + 1])
        if gather:  # the chosen rows straight from the buffer into their place, no temporary
            np.take(span, rows[start:stop] - first, axis=0, out=target[start:stop].reshape(stop - start, *span.shape[1:]))
            continue
        piece = span if len(span) == stop - start else span[rows[start:stop] - first]
        destination = slice(start, stop) if placement is None else placement[start:stop]
        target[destination] = piece.reshape(stop - start, *target.shape[1:])


def _read_block(
    datasets: list[h5py.Dataset], labels: h5py.Dataset, dtype: np.dtype, rows: np.ndarray, placement: np.ndarray | None
) -> Split:
    """One block: ``rows`` of the layers side by side in ``dtype``, and their labels, shuffled by ``placement``."""
    widths = [_width(dataset) for dataset in datasets]
    X = np.empty((len(rows), sum(widths)), dtype)
    for dataset, start, width in zip(datasets, np.cumsum([0, *widths]), widths):
        _read_into(X[:, start : start + width], dataset, rows, placement)
    y = np.empty(len(rows), labels.dtype)
    _read_into(y, labels, rows, placement)
    return Split(X=X, y=y)


def split_nbytes(path: str | Path, layers: Sequence[str], split: str) -> int:
    """Bytes that ``load_layers(path, layers, split).X`` would take in memory (reads metadata and the split column)."""
    with open_features(path) as f:
        _, widths, dtype = _layout(f, layers)
        return len(selected_rows(f, split)) * sum(widths) * dtype.itemsize


def iter_chunks(
    path: str | Path, layers: Sequence[str], split: str | None, chunk_bytes: int, seed: int | None = None
) -> Iterator[Split]:
    """The split's rows (None: all rows) of ``layers``, flattened and concatenated as ``load_layers`` gives them, in
    blocks of at most ``chunk_bytes`` (at least one row) made of whole HDF5 chunks of the widest layer when a block
    can hold one, so that each chunk is read once.

    ``seed`` None: file order, so the blocks concatenate to ``load_layers``. With a seed (deterministic per seed)
    the chunks come in a random order, packed into blocks that each mix chunks from across the split, and the rows
    of each block are shuffled: a file written class by class still gives blocks of many classes. One block is read
    at a time.
    """
    check_int("chunk_bytes", chunk_bytes, minimum=1)
    with open_features(path) as f:
        datasets, widths, dtype = _layout(f, layers)
        rows = selected_rows(f, split)
        widest = max(range(len(datasets)), key=lambda i: widths[i] * datasets[i].dtype.itemsize)
        chunk_rows = _chunk_rows(datasets[widest])
        block_rows = max(1, chunk_bytes // max(1, sum(widths) * dtype.itemsize))
        units = _units(rows, min(block_rows, chunk_rows), chunk_rows)
        rng = None if seed is None else np.random.default_rng(seed)
        if rng is not None:
            units = [units[i] for i in rng.permutation(len(units))]
        for group in _pack(units, block_rows):
            block = np.sort(np.concatenate([_indices(rows[start:stop]) for start, stop in group]))
            yield _read_block(datasets, f["labels"], dtype, block, None if rng is None else rng.permutation(len(block)))


def load_dask(path: str | Path, layer: str, split: str | None = None, chunk_bytes: int = 64 << 20):
    """One layer (and optionally one split) as a lazy dask array, plus its labels as numpy.

    Dask chunks span whole rows and a whole number of HDF5 chunks (about ``chunk_bytes`` each), so every
    dask task reads complete HDF5 chunks. The file stays open as long as the array is referenced.
    """
    import dask.array as da

    f = open_features(path)
    check_one_of("layer", layer, list(f["features"]))
    dataset = f["features"][layer]
    row_bytes = max(1, dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64)))
    per_chunk = dataset.chunks[0]
    rows = max(per_chunk, (chunk_bytes // row_bytes) // per_chunk * per_chunk)
    array = da.from_array(dataset, chunks=(rows, *dataset.shape[1:]), lock=True)
    selection = split_rows(f, split)
    return array[selection], f["labels"][selection]
