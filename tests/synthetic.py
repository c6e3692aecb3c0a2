"""Synthetic features files for the reader and out-of-core tests (real HDF5 written by FeatureWriter, batch by
batch), and a comparison of whole features files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pipeline.store import FeatureWriter

LABELS = np.array([2, 5, 7])
WIDE = 1024  # float32: 4 KiB a row, so 256 rows an HDF5 chunk
ROW = WIDE * 4
N_ROWS = 1200


def write_features(path: Path, splits: np.ndarray, width: int = WIDE, seed: int = 0, batch_rows: int = 4096) -> Path:
    """Two layers of class centroid + noise, written batch by batch: ``wide`` (float32, column 0 = the row number)
    and ``maps`` (2x2x8, float16, channel 0 always 0 like a dead ReLU)."""
    rng = np.random.default_rng(seed)
    n = len(splits)
    classes = rng.integers(0, len(LABELS), n)
    wide_centres = rng.normal(scale=0.5, size=(len(LABELS), width)).astype(np.float32)
    map_centres = rng.normal(size=(len(LABELS), 8))
    layers = {"wide": ((width,), "float32"), "maps": ((2, 2, 8), "float16")}
    with FeatureWriter(path, capacity=n, layers=layers, attrs={}, resume_key="test") as writer:
        for start in range(0, n, batch_rows):
            rows = slice(start, min(start + batch_rows, n))
            k = classes[rows]
            wide = wide_centres[k] + rng.standard_normal((len(k), width), dtype=np.float32)
            wide[:, 0] = np.arange(start, rows.stop)
            maps = map_centres[k][:, None, None, :] + rng.normal(size=(len(k), 2, 2, 8))
            maps[..., 0] = 0.0
            paths = [f"images/{i}.png" for i in range(start, rows.stop)]
            writer.write(rows.stop, {"wide": wide, "maps": maps}, paths, LABELS[k], splits[rows].tolist())
    return path


def contents(path) -> dict:
    """Every attribute, every dataset's values and layout (dtype, chunks, maxshape, compression), by name."""
    items = {}

    def add(name, obj):
        items.update({f"{name}@{key}": value for key, value in obj.attrs.items()})
        if isinstance(obj, h5py.Dataset):
            items[name] = obj[()]
            items[f"{name}#layout"] = repr((obj.dtype, obj.chunks, obj.maxshape, obj.compression))

    with h5py.File(path, "r") as f:
        add("", f)
        f.visititems(add)
    return items


def assert_same_contents(actual: dict, expected: dict, float_rtol: float = 0.0) -> None:
    """The same names, and bit-identical values (NaN equal to NaN) of the same dtype and shape; with ``float_rtol``
    the backbone's float outputs (``features/`` and ``views/``, raw pixels excepted) may differ by that much, or by
    two steps of the dtype they are stored in, whichever is more: a float32 result that differs in its last bits
    (other thread counts in another process) can round to the neighbouring float16."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        if float_rtol and name.startswith(("features/", "views/")) and "pixels" not in name and "@" not in name \
                and "#" not in name:
            assert actual[name].dtype == value.dtype and actual[name].shape == value.shape, name
            tolerance = max(float_rtol, 2 * float(np.finfo(value.dtype).eps))
            np.testing.assert_allclose(actual[name], value, rtol=tolerance, atol=float_rtol, err_msg=name)
        else:
            np.testing.assert_array_equal(actual[name], value, err_msg=name, strict=True)
