"""Synthetic features files for the reader and out-of-core tests: real HDF5 written by FeatureWriter, batch by batch."""

from __future__ import annotations

from pathlib import Path

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
