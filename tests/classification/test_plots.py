"""Tests for pipeline.classification.plots: heat maps are real PNG files of the requested size, with blank cells for NaN."""

import numpy as np
from PIL import Image

from pipeline.classification.plots import heatmap


def test_heatmap_writes_a_png(tmp_path):
    path = tmp_path / "map.png"
    heatmap(np.array([[3, 1], [0, 5]]), ["a", "b"], ["a", "b"], path, title="t", xlabel="x", ylabel="y", colorbar="n")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 300
        pixels = np.asarray(image.convert("L"))
    assert pixels.min() < 100 and pixels.max() > 200  # drawn, not blank


def test_heatmap_accepts_missing_cells_and_many_columns(tmp_path):
    values = np.full((2, 40), np.nan)
    values[0, :5] = 0.5
    heatmap(values, ["r1", "r2"], [f"layer_{i}" for i in range(40)], tmp_path / "wide.png", title="t", xlabel="x",
            ylabel="y", colorbar="accuracy", fmt="{:.3f}")
    with Image.open(tmp_path / "wide.png") as image:
        assert image.size[0] > image.size[1]
