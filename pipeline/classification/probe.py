"""Linear probes: a standardized logistic regression per stored layer, C chosen on val, as a curve over block depth."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_file, write_json
from pipeline.classification.rowspace import RowSpace
from pipeline.config import PIXELS, PYRAMID_GRIDS, ProbeConfig
from pipeline.store import feature_shape, iter_chunks, load_layers, read_attrs, split_nbytes
from pipeline.validation import ConfigError, format_bytes

log = logging.getLogger(__name__)

# The files run_probe writes in its folder: the DVC plot data, its PNG, and the DVC metrics.
CURVE_JSON, CURVE_PNG, METRICS = "curve.json", "curve.png", "metrics.json"
SPLITS = ("train", "val", "test")
LABELS = {"logistic_regression": "logreg"}  # an estimator's short name in probe names ("logreg avg")
PYRAMID_CELLS = sum(g * g for g in PYRAMID_GRIDS)  # a pyramid row: the 1x1 cell (the global average) first, 21 cells


@dataclass(frozen=True)
class Layer:
    """One stored layer as the probe reads it: its depth (0: the raw pixels), the pooling it was stored with, its
    probe lines (name -> how many leading columns of the read rows it uses; None: all) and how it is read."""

    name: str
    depth: int
    pooling: str
    lines: dict[str, int | None]
    spatial_mean: bool  # stored unpooled (h, w, c): read block by block, averaged over the positions


def plan(features: str | Path, config: ProbeConfig, memory_budget: int) -> list[Layer]:
    """Every stored layer the probe reads, in the file's (depth) order, ``pixels`` first as depth 0 when it is
    stored and ``config.pixels``; a layer whose probe rows (float32, all three splits) exceed ``memory_budget`` is
    refused before anything is fitted."""
    attrs = read_attrs(features)
    if "layers" not in attrs:
        raise ConfigError(f"{features} records no layer list (attribute 'layers'): extract it with this pipeline")
    poolings, dtypes = attrs.get("pooling", {}), attrs.get("dtype", {})
    layers = []
    blocks = [name for name in attrs["layers"] if name != PIXELS]
    if config.pixels and PIXELS in attrs["layers"]:
        layers.append(Layer(PIXELS, 0, "none", {"none": None}, spatial_mean=False))
    for depth, name in enumerate(blocks, start=1):
        shape = feature_shape(features, name)
        pooling = poolings.get(name, "none" if len(shape) > 1 else "pooled")
        if pooling == "pyramid":
            lines = {"avg": shape[-1] // PYRAMID_CELLS, "pyramid": None}
        elif len(shape) > 1:
            lines = {"avg": None}  # unpooled maps: their global average
        else:
            lines = {pooling: None}
        layers.append(Layer(name, depth, pooling, lines, spatial_mean=len(shape) > 1))
    for layer in layers:
        stored = sum(split_nbytes(features, [layer.name], split) for split in SPLITS)
        shape = feature_shape(features, layer.name)
        needed = stored // np.dtype(dtypes.get(layer.name, "float32")).itemsize * 4
        if layer.spatial_mean:
            needed //= int(np.prod(shape[:-1]))
        if needed > memory_budget:
            raise ConfigError(
                f"the probe of layer {layer.name} needs {format_bytes(needed)} in memory (its train, val and test rows "
                f"as float32), over train.memory_budget {format_bytes(memory_budget)}: raise train.memory_budget, or "
                f"extract the layer with pooling avg"
            )
    return layers


def read_layer(features: str | Path, layer: Layer, chunk_bytes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per split: the layer's rows as float32 (flattened; unpooled maps averaged over their positions, read
    ``chunk_bytes`` at a time) and their labels."""
    read = {}
    for split in SPLITS:
        if not layer.spatial_mean:
            rows = load_layers(features, [layer.name], split)
            read[split] = rows.X.astype(np.float32, copy=False), rows.y
            continue
        channels = feature_shape(features, layer.name)[-1]
        blocks = [
            (block.X.reshape(len(block.X), -1, channels).mean(axis=1, dtype=np.float32), block.y)
            for block in iter_chunks(features, [layer.name], split, chunk_bytes)
        ]
        read[split] = np.concatenate([X for X, _ in blocks]), np.concatenate([y for _, y in blocks])
    return read


def standardize(train: np.ndarray, *others: np.ndarray) -> None:
    """Scale every column to zero mean and unit variance on ``train``, in place (constant columns: centred only),
    as scikit-learn's StandardScaler does; column by column, so the leading columns of a pyramid row scale alike
    whether or not the rest are there."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler(copy=False).fit(train)
    for X in (train, *others):
        scaler.transform(X)


def row_space(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """``train`` (n rows, d > n columns) and ``others`` in an orthonormal basis of the span of the train rows
    (``RowSpace``: r <= n columns each, the same inner products with every train row), in their own dtype; unchanged
    where that basis does not pay.

    The optimum of an L2-penalized fit is the same in either basis, but lbfgs may take more iterations to reach it in
    this one (its columns differ in scale): a fit stopped by ``probe.max_iter`` is logged, and can pick another C.
    """
    space = RowSpace.of(train)
    if space is None:
        return (train, *others)
    return (space.project_train(), *(space.project(X) for X in others))


def fit_path(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], config: ProbeConfig
) -> tuple[dict[str, Any], int]:
    """Fit ``config.estimator`` once per ``config.C`` (ascending, warm-started) on the train split; return the C
    with the best val accuracy (ties: the smaller), its val and test accuracy, and how many fits stopped at
    ``max_iter`` rather than converging."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    (X, y), (X_val, y_val), (X_test, y_test) = (splits[split] for split in SPLITS)
    model = LogisticRegression(max_iter=config.max_iter, tol=config.tol, warm_start=True)
    scores, capped = [], 0
    # One BLAS thread: scipy's L-BFGS-B (C since scipy 1.15) calls BLAS on vectors far too small for threads, and
    # with two threads a fit here ran up to 50x slower (measured: 0.4 s against 19 s on 2 cores).
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # counted below, logged once per line
        for C in config.C:
            model.set_params(C=C).fit(X, y)
            capped += int(np.max(model.n_iter_) >= config.max_iter)
            val = float(np.mean(model.predict(X_val) == y_val))
            test = float(np.mean(model.predict(X_test) == y_test))
            scores.append({"C": C, "val_accuracy": val, "test_accuracy": test})
    return max(scores, key=lambda score: (score["val_accuracy"], -score["C"])), capped


def probe_lines(
    features: str | Path, layer: Layer, config: ProbeConfig, chunk_bytes: int
) -> list[dict[str, Any]]:
    """The layer's curve rows: one per probe line, read once and standardized once (a pyramid's avg line is its
    leading columns, the global average, standardized alike)."""
    splits = read_layer(features, layer, chunk_bytes)
    standardize(*(X for X, _ in splits.values()))
    label = LABELS[config.estimator]
    rows = []
    for line, width in layer.lines.items():
        started = time.perf_counter()
        columns = {split: (X[:, :width] if width else X, y) for split, (X, y) in splits.items()}
        d = columns["train"][0].shape[1]
        spaced = row_space(*(X for X, _ in columns.values()))
        reduced = spaced[0].shape[1] < d
        columns = {split: (X, columns[split][1]) for split, X in zip(SPLITS, spaced)}
        best, capped = fit_path(columns, config)
        seconds = time.perf_counter() - started
        name = f"{label} {line}"
        log.info(
            "depth %d %s, %s: %d features%s, C=%g: val %.4f, test %.4f (%.1f s)", layer.depth, layer.name, name, d,
            f" (fitted in their {columns['train'][0].shape[1]}-dimensional train row space)" if reduced else "",
            best["C"], best["val_accuracy"], best["test_accuracy"], seconds,
        )
        if capped:
            log.warning(
                "%s on %s: %d of %d fits stopped at probe.max_iter=%d before converging", name, layer.name, capped,
                len(config.C), config.max_iter,
            )
        rows.append({
            "depth": layer.depth, "layer": layer.name, "probe": name, "estimator": config.estimator,
            "pooling": line, "features": d, **best, "seconds": round(seconds, 3),
        })
    return rows


def curve_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The DVC plot's rows: the blocks' rows, and the raw-pixel row (if any) repeated at depth 0 of every probe
    line, so that each line starts from the baseline; by depth, then probe."""
    pixels = [row for row in rows if row["layer"] == PIXELS]
    blocks = [row for row in rows if row["layer"] != PIXELS]
    starts = [{**row, "probe": probe} for row in pixels for probe in dict.fromkeys(r["probe"] for r in blocks)]
    return [*starts, *blocks]


def best_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The best block by val accuracy (never by test); ties: the shallower block, then the fewer features."""
    return max(rows, key=lambda row: (row["val_accuracy"], -row["depth"], -row["features"]))


def draw_curve(rows: Sequence[dict[str, Any]], best: dict[str, Any], path: str | Path, title: str) -> None:
    """The curve as a PNG: layer names in depth order on x, accuracy on y; a colour per probe line, val solid and
    test dashed; the best val point starred."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    names = {row["depth"]: row["layer"] for row in rows}
    depths = sorted(names)
    fig = Figure(figsize=(min(max(7.0, 0.6 * len(depths) + 3.0), 30.0), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles = []
    for index, probe in enumerate(dict.fromkeys(row["probe"] for row in rows)):
        mine = sorted((row for row in rows if row["probe"] == probe), key=lambda row: row["depth"])
        color = f"C{index % 10}"
        x = [depths.index(row["depth"]) for row in mine]
        ax.plot(x, [row["val_accuracy"] for row in mine], "-o", color=color, markersize=4)
        ax.plot(x, [row["test_accuracy"] for row in mine], "--s", color=color, markersize=3, alpha=0.8)
        handles.append(Line2D([], [], color=color, label=probe))
    ax.plot(
        depths.index(best["depth"]), best["val_accuracy"], "*", color="black", markersize=14,
        label=f"best val: {best['layer']} ({best['probe']}) {best['val_accuracy']:.3f}",
    )
    handles += [
        Line2D([], [], color="grey", linestyle="-", label="val"),
        Line2D([], [], color="grey", linestyle="--", label="test"),
        *ax.get_legend_handles_labels()[0],
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_xticks(range(len(depths)), labels=[names[d] for d in depths], rotation=45, ha="right")
    ax.set_xlabel("layer, in depth order")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.savefig(path, format="png", dpi=100)


def run_probe(
    features: str | Path, out_dir: str | Path, config: ProbeConfig, memory_budget: int = 2 << 30,
    chunk_size: int = 64 << 20,
) -> dict[str, Any]:
    """Probe every stored layer of ``features`` (see ``plan``) with ``config``; write to ``out_dir``:

    - ``curve.json``: DVC plot rows ``{depth, layer, probe, estimator, pooling, features, C, val_accuracy,
      test_accuracy, seconds}``, a probe line per estimator and pooling (a pyramid layer gives ``avg``, its leading
      1x1 cell, and ``pyramid``; an unpooled layer its global ``avg``); raw pixels at depth 0 of every line;
    - ``curve.png``: the same curve;
    - ``metrics.json``: the best block by val accuracy (``best_layer``, its depth, probe, pooling, C, val and test
      accuracy), the best block of each probe line, and the raw-pixel baseline.

    Each file is written whole or not at all. Returns the metrics.
    """
    started = time.perf_counter()
    layers = plan(features, config, memory_budget)
    if not any(layer.depth for layer in layers):
        raise ConfigError(f"{features} stores no backbone layer to probe")
    rows = [row for layer in layers for row in probe_lines(features, layer, config, chunk_size)]
    curve = curve_rows(rows)
    blocks = [row for row in rows if row["layer"] != PIXELS]
    best = best_row(blocks)
    label = LABELS[config.estimator]
    out_dir = Path(out_dir)
    with atomic_file(out_dir / CURVE_PNG) as tmp:
        draw_curve(curve, best, tmp, f"Linear probe ({label}) per layer: val solid, test dashed")
    write_json(out_dir / CURVE_JSON, curve)
    summary = ("depth", "C", "val_accuracy", "test_accuracy")
    metrics = {
        "best_layer": best["layer"], "probe": best["probe"], "estimator": best["estimator"], "pooling": best["pooling"],
        "depth": best["depth"], "features": best["features"], "C": best["C"], "val_accuracy": best["val_accuracy"],
        "test_accuracy": best["test_accuracy"],
        "per_probe": {
            probe: {"layer": row["layer"], **{key: row[key] for key in summary}}
            for probe in dict.fromkeys(row["probe"] for row in blocks)
            for row in [best_row([r for r in blocks if r["probe"] == probe])]
        },
        "layers": len({row["layer"] for row in blocks}),
        "seconds": round(time.perf_counter() - started, 2),
    }
    pixels = next((row for row in rows if row["layer"] == PIXELS), None)
    if pixels is not None:
        metrics["pixels"] = {key: pixels[key] for key in ("C", "val_accuracy", "test_accuracy")}
    write_json(out_dir / METRICS, metrics)
    log.info(
        "probed %d layers in %.1f s: best %s (%s, C=%g), val %.4f, test %.4f", metrics["layers"], metrics["seconds"],
        best["layer"], best["probe"], best["C"], best["val_accuracy"], best["test_accuracy"],
    )
    return metrics
