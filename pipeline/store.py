"""Features in HDF5: a resumable writer (temporary file, row chunks, atomic rename) and readers (splits, blocks, dask)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.atomic import atomic_file, is_disk_full, temporary_sibling
from pipeline.validation import (
    ConfigError,
    UserError,
    check_int,
    check_one_of,
    format_bytes,
)

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # an HDF5 chunk of a row dataset holds about this many bytes (see rows_per_chunk)
SPLIT_PIECE = 1 << 16  # rows of the split column read at a time
SHA256 = "S64"  # a row's image content hash, hex
COPY_PIECE_BYTES = 64 << 20  # rows copied between features files (merge, reuse) this many bytes at a time
PATH_BYTES = 255  # the longest path (UTF-8 bytes) a writer takes unless told the longest it will get
SPLIT_BYTES = 16  # the same for split names
OVERHEAD_BYTES = 64 << 10  # HDF5's own structures and the finishing steps' undo record (measured: under 32 KiB each)


def row_nbytes(layers: Mapping[str, tuple[tuple[int, ...], str]]) -> int:
    """Bytes of one row across ``layers`` (name -> (row shape, dtype))."""
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in layers.values())


def rows_per_chunk(row_shape: Sequence[int], dtype: str, target_bytes: int = CHUNK_BYTES) -> int:
    """Rows in one chunk so that a chunk holds about ``target_bytes`` (at least one row)."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, target_bytes // max(row_bytes, 1))


def text_dtype(length: int) -> np.dtype:
    """Fixed-length UTF-8 strings of up to ``length`` bytes: written in place, they change no HDF5 metadata (variable-
    length strings live in the file's global heap); ``.asstr()`` reads them as str."""
    return h5py.string_dtype("utf-8", length=max(1, length))


def longest(values: Iterable[str]) -> int:
    """UTF-8 bytes of the longest of ``values`` (0 if none): the ``path_bytes`` or ``split_bytes`` a writer needs."""
    return max((len(value.encode()) for value in values), default=0)


def _encode(values: Sequence[str], dtype: np.dtype, name: str) -> np.ndarray:
    """``values`` as UTF-8 in the fixed-length ``dtype``; a longer value is refused, never cut."""
    raw = [value.encode() for value in values]
    for value in raw:
        if len(value) > dtype.itemsize:
            raise ValueError(
                f"/{name} holds strings of at most {dtype.itemsize} bytes (UTF-8). Received: {value.decode()!r} "
                f"({len(value)} bytes)"
            )
    return np.array(raw, dtype=dtype)


def _row_datasets(
    capacity: int, layers: Mapping[str, tuple[tuple[int, ...], str]], views: int, path_bytes: int, split_bytes: int
) -> dict[str, tuple[tuple[int, ...], np.dtype, int, float | None]]:
    """The row-aligned datasets of a features file, in the order they are made: name -> (shape, dtype, rows per
    chunk, fill value)."""
    columns = {"paths": text_dtype(path_bytes), "labels": np.dtype(np.int64), "split": text_dtype(split_bytes),
               "sha256": np.dtype(SHA256)}
    layout = {name: ((capacity,), dtype, 4096, None) for name, dtype in columns.items()}
    for name, (row_shape, dtype) in layers.items():
        layout[f"features/{name}"] = ((capacity, *row_shape), np.dtype(dtype), rows_per_chunk(row_shape, dtype), None)
        if views:
            shape = (views, *row_shape)
            layout[f"views/{name}"] = ((capacity, *shape), np.dtype(dtype), rows_per_chunk(shape, dtype), np.nan)
    return layout


class FeatureWriter:
    """Write a features file at a temporary path beside ``path``, resumably; rename it into place when complete.

    Rows are written in manifest order, skipping images that could not be decoded; ``/sha256`` holds each row's
    image content hash. With ``views`` K, ``/views/<layer>`` holds K augmented views per row, row-aligned to
    ``/features/<layer>`` (rows written without views, those outside the train split, stay NaN). ``path_bytes`` and
    ``split_bytes``: the longest path and split name that will be written (UTF-8 bytes; see ``longest``).

    Crash safety, against a process killed at any point (SIGKILL included):

    - The temporary file is created whole under another name and renamed. Every dataset is allocated (and zero-filled)
      in full, and strings have a fixed length, so an uncompressed file's HDF5 metadata never changes while rows are
      written. (A compressed file allocates chunks as they are written: a kill during a flush can damage it; a file
      that cannot be continued is discarded, see below.)
    - After every batch the rows are written and flushed, then the ``/progress`` dataset ``[manifest position, rows
      written]``, flushed: progress never counts rows that are not in the file. Skipped images go to an append-only
      log beside the file (``.<name>.skipped.partial``), tagged with the progress they were written at.
    - The finishing steps (trim to the rows written, ``/split_code``, ``/skipped``, attributes) change metadata in
      place, so first every byte outside the row data is saved beside the file (``.<name>.undo.partial``); a run
      killed during them is rolled back by the next writer and finished again. Then the file is renamed to ``path``.
    - A new writer with the same ``resume_key`` (the config hash and the manifest hash) continues from the last
      marked batch; a different key, or a file that cannot be continued, discards the old work with a log line.

    Before anything is written, an uncompressed file's size is checked against the free disk space; a disk that fills
    up later is a one-line error that keeps the work for the next run. Use as a context manager: on a clean exit the
    file is finished and renamed to ``path``; after an error the temporary file stays for the next run to resume.
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
        path_bytes: int = PATH_BYTES,
        split_bytes: int = SPLIT_BYTES,
    ):
        self.path = Path(path)
        self.tmp = temporary_sibling(self.path)
        self.skipped_log = temporary_sibling(self.path, ".skipped.partial")
        self.undo = temporary_sibling(self.path, ".undo.partial")
        if capacity == 0:
            raise ConfigError(f"no images to extract into {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.layout = _row_datasets(capacity, layers, views, path_bytes, split_bytes)
        self.compression = compression
        self._skipped: list[tuple[str, str]] = []
        self.final_attrs: dict[str, int | float | str] = {}  # set at the end of a run, e.g. the device batch size used
        self.file = self._resume(resume_key)
        try:
            with self._guard():
                self._check_space()
                if self.file is None:
                    self.file = self._create(attrs, resume_key)
        except BaseException:
            self._close()
            raise
        self.position, self.rows = (int(v) for v in self.file["progress"][()])

    def _resume(self, resume_key: str) -> h5py.File | None:
        """The temporary file of an interrupted run with the same key (its finishing steps rolled back, if it was
        killed during them), or None once whatever cannot be continued is removed, with a log line saying why."""
        temporary_sibling(self.tmp).unlink(missing_ok=True)  # a temporary file killed while being created
        if not self.tmp.exists():
            self._remove_partial()  # logs of a run that finished, or was killed before its file appeared
            return None
        try:
            if self.undo.exists():
                self._roll_back()
            f = h5py.File(self.tmp, "r+")
        except (OSError, ValueError, KeyError) as error:
            return self._discard(f"it is unreadable ({error})")
        try:
            why = self._unusable(f, resume_key)
        except (OSError, ValueError, KeyError) as error:
            why = f"it is damaged ({error})"
        if why is not None:
            f.close()
            return self._discard(why)
        position, rows = f["progress"][()]
        self._read_skipped_log(position)
        log.info("resuming %s: %d images done, %d rows written", self.path, position, rows)
        return f

    def _unusable(self, f: h5py.File, resume_key: str) -> str | None:
        """Why the temporary file ``f`` cannot be continued with ``resume_key`` (None: it can)."""
        if f.attrs.get("resume_key") != resume_key:
            return "the config or the image list changed"
        for name, (shape, dtype, chunk_rows, _) in self.layout.items():
            if name not in f or f[name].shape != shape or f[name].dtype != dtype:
                return f"/{name} is missing or has another shape or type than this run writes"
            chunks = -(-shape[0] // min(chunk_rows, shape[0]))
            if self.compression is None and f[name].id.get_num_chunks() != chunks:  # reads the chunk index
                return f"/{name} has {f[name].id.get_num_chunks()} of its {chunks} chunks"
        if not self.skipped_log.is_file():
            return f"its log of skipped images {self.skipped_log} is missing"
        position, rows = (int(v) for v in f["progress"][()])
        if not 0 <= rows <= position <= self.layout["labels"][0][0]:
            return f"its progress record is impossible ({position} images done, {rows} rows written)"
        return None

    def _discard(self, why: str) -> None:
        log.warning("discarding partial work in %s: %s; starting again", self.tmp, why)
        self._remove_partial()

    def _remove_partial(self) -> None:
        """Remove the temporary file and the logs beside it."""
        for path in (self.tmp, self.skipped_log, self.undo, temporary_sibling(self.undo)):
            path.unlink(missing_ok=True)

    def _check_space(self) -> None:
        """Refuse, before the first batch, a disk without room for the whole file: its datasets in whole chunks (an
        uncompressed file is allocated, and zero-filled, when it is created), less what a resumed temporary file
        already holds. A compressed file's size is not known in advance: that is logged, not refused."""
        if self.compression is not None:
            log.info(
                "%s is compressed (%s): its size is not known in advance, so free disk space is not checked",
                self.path, self.compression,
            )
            return
        capacity = self.layout["labels"][0][0]
        total = OVERHEAD_BYTES + capacity  # /split_code: a byte per row
        for shape, dtype, chunk_rows, _ in self.layout.values():  # allocated, and written, in whole chunks
            rows = min(chunk_rows, capacity)
            total += -(-capacity // rows) * rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        held = self.tmp.stat().st_blocks * 512 if self.tmp.exists() else 0
        free = shutil.disk_usage(self.path.parent).free
        if total - held > free:
            kept = f" more ({format_bytes(total)} in all, {format_bytes(held)} already in {self.tmp})" if held else ""
            raise UserError(
                f"not enough disk space to write {self.path}: it needs {format_bytes(total - held)}{kept}, and "
                f"{self.path.parent} has {format_bytes(free)} free"
            )

    def _create(self, attrs: Mapping[str, Any], resume_key: str) -> h5py.File:
        """A new temporary file with every dataset allocated, made under another name and renamed, so that the
        temporary path only ever holds a whole file; and an empty log of skipped images beside it."""
        self.skipped_log.write_bytes(b"")
        building = temporary_sibling(self.tmp)
        try:
            with h5py.File(building, "w") as f:
                structured = [key for key, value in attrs.items() if isinstance(value, (dict, list, tuple))]
                for key, value in attrs.items():
                    f.attrs[key] = json.dumps(value) if key in structured else value
                f.attrs["json_attrs"] = json.dumps(structured)
                f.attrs["resume_key"] = resume_key
                f.attrs["complete"] = False
                for name, (shape, dtype, chunk_rows, fillvalue) in self.layout.items():
                    dcpl = None
                    if self.compression is None:
                        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                    f.create_dataset(
                        name, shape=shape, maxshape=(None, *shape[1:]), dtype=dtype,
                        chunks=(min(chunk_rows, shape[0]), *shape[1:]), compression=self.compression, dcpl=dcpl,
                        track_times=False, fillvalue=fillvalue,
                    )
                f.create_dataset("progress", data=np.zeros(2, dtype=np.int64), track_times=False)
            os.replace(building, self.tmp)
        except BaseException:
            building.unlink(missing_ok=True)
            raise
        return h5py.File(self.tmp, "r+")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """A full disk becomes a one-line error that keeps the work for the next run; an HDF5 error (a damaged file)
        removes the temporary file, so that the next run starts over, and says so in one line."""
        try:
            yield
        except (OSError, ValueError) as error:
            if is_disk_full(error):
                self._close()
                kept = (
                    f"the work done so far is kept in {self.tmp}: free some space and run the same command again to "
                    "resume it" if self.tmp.exists() else "free some space and run the same command again"
                )
                free = shutil.disk_usage(self.path.parent).free
                raise UserError(
                    f"cannot write {self.path}: no space left on device ({format_bytes(free)} free); {kept}"
                ) from error
            if isinstance(error, OSError) and error.errno is None:  # HDF5's errors carry no errno
                self._close()
                self._remove_partial()
                raise UserError(
                    f"cannot write {self.tmp}: {error}; it was removed, so the same command starts over"
                ) from error
            raise

    def _close(self) -> None:
        """Close the file after a failure (closing flushes, and may fail the same way: the work on disk stays)."""
        if self.file is None:
            return
        try:
            self.file.close()
        except (OSError, RuntimeError, ValueError) as error:
            log.debug("closing %s after a failure: %s", self.tmp, error)

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

        ``position`` None appends without marking: the rows and skipped files count once a later write marks a
        position (a resumed writer overwrites them), so a batch can be written in pieces.
        """
        f, start, stop = self.file, self.rows, self.rows + len(paths)
        with self._guard():
            if len(paths):
                for name, values in features.items():
                    dataset = f["features"][name]
                    dataset[start:stop] = values.astype(dataset.dtype, copy=False)
                f["paths"][start:stop] = _encode(paths, f["paths"].dtype, "paths")
                f["labels"][start:stop] = labels
                f["split"][start:stop] = _encode(splits, f["split"].dtype, "split")
                if hashes is not None:
                    f["sha256"][start:stop] = np.asarray(hashes, dtype=SHA256)
                if "views" in f:
                    for name in f["views"]:
                        dataset = f["views"][name]
                        dataset[start:stop] = views[name].astype(dataset.dtype, copy=False)
            if skipped:
                self._log_skipped(skipped)
            self.rows = stop
            if position is not None:
                f.flush()  # the rows are in the file before the progress that counts them
                f["progress"][:] = (position, stop)
                f.flush()
                self.position = position

    def _log_skipped(self, skipped: Sequence[tuple[str, str]]) -> None:
        """Append ``skipped`` (path, reason) to the log beside the file, each line ``[position, path, reason]`` with
        the position marked before them: a resumed writer keeps the lines of batches marked done since."""
        with self.skipped_log.open("a") as lines:
            lines.writelines(json.dumps([self.position, path, reason]) + "\n" for path, reason in skipped)
        self._skipped.extend(skipped)

    def _read_skipped_log(self, position: int) -> None:
        """Keep the log's lines of batches marked done (written before ``position``); cut off the rest, a torn last
        line included."""
        kept, size = [], 0
        with self.skipped_log.open("rb") as lines:
            for line in lines:
                try:
                    mark, path, reason = json.loads(line)
                except (ValueError, TypeError):
                    break
                if not line.endswith(b"\n") or mark >= position:
                    break
                kept.append((path, reason))
                size += len(line)
        os.truncate(self.skipped_log, size)
        self._skipped = kept

    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every file skipped so far, including before a resume."""
        return list(self._skipped)

    def empty_rows(self, names: Sequence[str], n: int) -> dict[str, np.ndarray]:
        """Uninitialised arrays for ``n`` rows of each row dataset ``names`` (e.g. ``features/x``), in its shape and
        dtype: what rows copied from another file (``FeatureReader.read``) are gathered in."""
        return {name: np.empty((n, *self.layout[name][0][1:]), self.layout[name][1]) for name in names}

    def __enter__(self) -> FeatureWriter:
        return self

    def _save_undo(self) -> None:
        """Save what the finishing steps may change, so that a run killed during them can be rolled back: the file's
        size, its inode, and every byte outside the row data (HDF5's metadata, a few KiB). A compressed chunk that
        the trim rewrites (the one holding the last rows) moves and frees its old place, so those are saved too.
        The file is reopened first, so that the finishing steps start from the state a rolled-back file starts
        from: the same bytes."""
        self.file.close()
        self.file = h5py.File(self.tmp, "r+")
        extents = []

        def add(_, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            if obj.chunks is None:
                extents.append((obj.id.get_offset(), obj.id.get_storage_size()))
                return

            def chunk(info):
                if obj.compression is None or not 0 < self.rows - info.chunk_offset[0] < obj.chunks[0]:
                    extents.append((info.byte_offset, info.size))

            obj.id.chunk_iter(chunk)

        self.file.visititems(add)
        size, gaps, end = self.tmp.stat().st_size, [], 0
        for offset, length in sorted(extents):
            if offset > end:
                gaps.append((end, offset - end))
            end = max(end, offset + length)
        if size > end:
            gaps.append((end, size - end))
        header = {"inode": self.tmp.stat().st_ino, "size": size, "gaps": gaps}
        with atomic_file(self.undo) as building, building.open("wb") as out, self.tmp.open("rb") as source:
            out.write(json.dumps(header).encode() + b"\n")
            for offset, length in gaps:
                source.seek(offset)
                out.write(source.read(length))

    def _roll_back(self) -> None:
        """Put back the bytes ``_save_undo`` saved: the temporary file as it was before the interrupted finishing
        steps. Killed half way, it is simply done again."""
        with self.undo.open("rb") as undo:
            header = json.loads(undo.readline())
            if header["inode"] != self.tmp.stat().st_ino:
                raise ValueError(f"{self.undo} was saved from another file")
            with self.tmp.open("r+b") as target:
                for offset, length in header["gaps"]:
                    saved = undo.read(length)
                    if len(saved) != length:
                        raise ValueError(f"{self.undo} is cut short")
                    target.seek(offset)
                    target.write(saved)
                target.truncate(header["size"])
        self.undo.unlink()
        log.info("rolled back the interrupted finishing steps of %s", self.tmp)

    def _finish(self) -> None:
        """Trim the datasets to the rows written, add ``/split_code``, ``/skipped`` and ``final_attrs``, mark the file
        complete."""
        f = self.file
        for name in self.layout:
            f[name].resize(self.rows, axis=0)
        self._write_split_codes()
        paths, reasons = (list(column) for column in zip(*self._skipped)) if self._skipped else ([], [])
        for name, column in (("path", paths), ("reason", reasons)):
            values = _encode(column, text_dtype(longest(column)), f"skipped/{name}")
            f.create_dataset(f"skipped/{name}", data=values, track_times=False)
        f.attrs.update(self.final_attrs)
        f.attrs["n_rows"] = self.rows
        f.attrs["complete"] = True
        f.close()

    def _write_split_codes(self) -> None:
        """``/split_code``: the split column as uint8 indices into its ``names`` attribute (JSON), so readers select
        a split's rows without decoding a string per row. Written at the end, in pieces."""
        f = self.file
        names = sorted({name for _, piece in _pieces(f["split"]) for name in set(piece.tolist())})
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
            self._close()
            if self.tmp.exists():
                log.info("partial work kept in %s; the same command resumes it", self.tmp)
            return
        try:
            with self._guard():
                self._save_undo()
                self._finish()
        except BaseException:
            self._close()
            raise
        os.replace(self.tmp, self.path)
        self.undo.unlink()
        self.skipped_log.unlink()
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


def check_replaceable(path: str | Path) -> None:
    """Refuse, naming it, an output ``path`` that holds something other than a features file this pipeline wrote
    (one with a ``config_hash`` attribute): a run never replaces a file it did not write."""
    path = Path(path)
    if not path.exists():
        return
    ours = False
    if path.is_file() and h5py.is_hdf5(path):
        with contextlib.suppress(OSError), h5py.File(path, "r") as f:
            ours = "config_hash" in f.attrs
    if not ours:
        raise UserError(f"refusing to replace {path}: it is not a features file this pipeline wrote; choose another "
                        "--out or move it away")


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes (provenance) of a features file, JSON values decoded."""
    with open_features(path) as f:
        return file_attrs(f)


def file_attrs(f: h5py.File) -> dict[str, Any]:
    """The root attributes of an open features file, JSON values decoded."""
    structured = set(json.loads(f.attrs.get("json_attrs", "[]")))
    return {key: _decode(value, key in structured) for key, value in f.attrs.items() if key != "json_attrs"}


def stored_resume_key(path: str | Path) -> str | None:
    """The resume key a features file (complete or not) was started with; None if it records none."""
    with h5py.File(path, "r") as f:
        return f.attrs.get("resume_key")


class FeatureReader:
    """A features file open for copying its rows into another (reuse, shards): its provenance, each row's image
    content hash and split, and rows of its datasets by name (``features/<layer>``, ``views/<layer>``). Opening a
    file HDF5 cannot read raises OSError. Use as a context manager, or ``close``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = h5py.File(self.path, "r")

    def copyable(self) -> bool:
        """Whether the file is complete and records content hashes and split codes (rows can be found by image)."""
        f = self.file
        return bool(f.attrs.get("complete", False)) and "sha256" in f and "split_code" in f

    def attrs(self) -> dict[str, Any]:
        """The root attributes (provenance), JSON values decoded."""
        return file_attrs(self.file)

    def hashes(self) -> list[str]:
        """Each row's image content hash (hex; empty where unknown)."""
        return [value.decode() for value in self.file["sha256"][()]]

    def in_split(self, split: str) -> np.ndarray:
        """Per row: whether it is in ``split`` (all False when no row is)."""
        names, codes = split_codes(self.file)
        return codes == names.index(split) if split in names else np.zeros(len(codes), dtype=bool)

    def read(self, rows: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Datasets ``names`` at ``rows`` (any order, repeats allowed)."""
        unique, inverse = np.unique(rows, return_inverse=True)
        contiguous = unique[-1] - unique[0] + 1 == len(unique)
        selection = np.s_[unique[0] : unique[-1] + 1] if contiguous else unique
        return {name: self.file[name][selection][inverse] for name in names}

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> FeatureReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def content_digest(path: str | Path, layers: Sequence[str], views: bool = False) -> str:
    """sha256 of everything a classifier trained on ``layers`` reads from the features file ``path``: the class names,
    the labels, each row's split, and the layers' rows (with ``views``, their augmented views too), read
    ``COPY_PIECE_BYTES`` at a time. Equal digests mean equal training inputs, whatever else the files hold."""
    digest = hashlib.sha256()
    with open_features(path) as f:
        datasets, _, _ = _layout(f, layers)
        if views and "views" in f:
            datasets += [f["views"][layer] for layer in layers if layer in f["views"]]
        split = f["split_code"] if "split_code" in f else f["split"]
        digest.update(json.dumps([file_attrs(f)["class_names"], split.attrs.get("names", "")]).encode())
        for dataset in [f["labels"], split, *datasets]:
            digest.update(f"{dataset.name} {dataset.shape} {dataset.dtype.str}".encode())
            rows = max(1, COPY_PIECE_BYTES // max(1, _width(dataset) * dataset.dtype.itemsize))
            for start in range(0, dataset.shape[0], rows):
                digest.update(np.ascontiguousarray(dataset[start : start + rows]).data)
    return digest.hexdigest()


def _pieces(column: h5py.Dataset, piece_rows: int = SPLIT_PIECE) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, values)`` of a string column, ``piece_rows`` at a time, as bytes (about 60 bytes a row in memory)."""
    for start in range(0, column.shape[0], piece_rows):
        yield start, column[start : start + piece_rows]


def _check_split(f: h5py.File, split: str, names: Sequence[str]) -> None:
    """Refuse a ``split`` that no row of ``f`` is in, naming the file and the splits it has."""
    if split not in names:
        raise ConfigError(
            f"split must be one of {list(names)}. Received: split={split!r}: {f.filename} has no rows in it. (A source without a split of its own gets each image's split from its content, so a small one can leave "
            "a split empty: add images, or give the split with split folders or a 'split' column.)"
        )


def split_rows(f: h5py.File, split: str | None) -> np.ndarray | slice:
    """Row selection for ``split`` (None: every row), as a slice when the rows are contiguous.

    Uses ``/split_code`` (one byte a row); a file without it (written by hand) has its ``/split`` strings read
    in pieces instead.
    """
    if split is None:
        return slice(None)
    if "split_code" in f:
        names, codes = split_codes(f)
        _check_split(f, split, names)
        rows = np.flatnonzero(codes == names.index(split))
    else:
        present, pieces, wanted = set(), [], split.encode() if isinstance(split, str) else split
        for start, piece in _pieces(f["split"]):
            present.update(piece.tolist())
            pieces.append(np.flatnonzero(piece == wanted) + start)
        _check_split(f, split, sorted(value.decode() for value in present))
        rows = np.concatenate(pieces)
    return slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] + 1 == rows.size else rows


def split_codes(f: h5py.File) -> tuple[list[str], np.ndarray]:
    """``/split_code`` decoded: the split names (its ``names`` attribute) and each row's index into them."""
    return json.loads(f["split_code"].attrs["names"]), f["split_code"][()]


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
    return list(itertools.pairwise(bounds))


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


def row_images(
    path: str | Path, split: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Which image each row of ``split`` (None: every row) is: the row numbers, image paths (relative to the image
    root), labels, and image content hashes (hex, empty where unknown; None when the file records none)."""
    with open_features(path) as f:
        rows = selected_rows(f, split)
        at = slice(rows.start, rows.stop) if isinstance(rows, range) else rows
        hashes = f["sha256"].asstr()[at] if "sha256" in f else None
        return _indices(rows), f["paths"].asstr()[at], f["labels"][at], hashes
