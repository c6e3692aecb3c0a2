"""PNG heat maps (confusion matrices, the leaderboard) drawn with matplotlib's Agg backend, no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Above this many rows or columns the cells are left unlabelled (the numbers would not fit).
MAX_ANNOTATED = 30


def heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    colorbar: str,
    fmt: str = "{:g}",
    cmap: str = "Blues",
    vmin: float | None = 0.0,
) -> None:
    """Write ``values`` (``len(rows)`` x ``len(columns)``; NaN cells left blank) as a PNG with each cell's value.

    ``vmin`` None stretches the colours over the values' own range (to tell close scores apart).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(values, dtype=float)
    width = min(max(6.0, 0.45 * len(columns) + 4.0, max(map(len, columns), default=0) * 0.09 * len(columns)), 30.0)
    height = min(max(4.0, 0.45 * len(rows) + 3.0), 30.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8, label=colorbar)
    ax.set_xticks(range(len(columns)), labels=columns, rotation=90 if max(map(len, columns), default=0) > 3 else 0)
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if max(len(rows), len(columns)) <= MAX_ANNOTATED:
        for (row, column), value in np.ndenumerate(values):
            if np.isfinite(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # text in the contrasting colour
                ax.text(
                    column, row, fmt.format(value), ha="center", va="center", fontsize=9,
                    color="white" if dark else "black",
                )
    fig.savefig(path, format="png", dpi=100)
