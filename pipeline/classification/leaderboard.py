"""The leaderboard: every classifier x layer's and fine-tuned model's test metrics (CSV, Markdown, DVC plot, heat map),
and the linear probe's best block."""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_file, write_json
from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.plots import heatmap
from pipeline.classification.probe import CURVE_PNG
from pipeline.config import FINETUNE_FOLDER, FINETUNED, PIXELS
from pipeline.validation import ConfigError

log = logging.getLogger(__name__)

# Columns after classifier and layer; a metric an estimator cannot give (log loss without probabilities) is empty.
COLUMNS = (
    "accuracy", "balanced_accuracy", "macro_f1", "log_loss", "top3_accuracy", "val_accuracy", "fit_seconds",
    "predict_seconds",
)
HEADERS = {
    "accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro F1", "log_loss": "log loss",
    "top3_accuracy": "top-3 acc.", "val_accuracy": "val acc.", "fit_seconds": "fit s", "predict_seconds": "predict s",
}


def finetuned(name: str) -> str:
    """The leaderboard's classifier label of the fine-tuned run ``name``: marked, so it never reads as a classifier."""
    return f"{name} ({FINETUNED})"


def collect(
    eval_dir: str | Path, classifiers: Sequence[str], layers: Sequence[str], finetune: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per classifier x layer from ``eval_dir/<classifier>/metrics/<layer>.json``, and one per fine-tuned run
    (``finetune``: name -> layer) from ``eval_dir/finetune/metrics/<name>.json``, labelled ``finetuned(name)``; best
    test accuracy first (see ``pipeline.classification.evaluate.EvalFiles``).

    Every configured run must have been evaluated: a missing file is a ConfigError naming it (nothing is dropped).
    Ties are broken by val accuracy, then by name.
    """
    finetune = dict(finetune or {})
    paths = {(c, layer): EvalFiles(Path(eval_dir) / c, layer).metrics for c in classifiers for layer in layers}
    for name, layer in finetune.items():
        paths[finetuned(name), layer] = EvalFiles(Path(eval_dir) / FINETUNE_FOLDER, name).metrics
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        runs = "classifier x layer pairs" + (" and fine-tuned models" if finetune else "")
        raise ConfigError(f"no metrics for {len(missing)} of {len(paths)} {runs}; missing: {missing}")
    rows = []
    for (classifier, layer), path in paths.items():
        metrics = json.loads(path.read_text())
        rows.append({"classifier": classifier, "layer": layer, **{key: metrics.get(key) for key in COLUMNS}})
    rows.sort(key=lambda r: (-r["accuracy"], -(r["val_accuracy"] or 0.0), r["classifier"], r["layer"]))
    return rows


def transfer_gains(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per classifier with a ``pixels`` row: its best layer and the test-accuracy gain over raw pixels."""
    gains = []
    for classifier in dict.fromkeys(row["classifier"] for row in rows):
        mine = [row for row in rows if row["classifier"] == classifier]
        pixels = next((row for row in mine if row["layer"] == PIXELS), None)
        learned = [row for row in mine if row["layer"] != PIXELS]
        if pixels is None or not learned:
            continue
        best = max(learned, key=lambda row: (row["accuracy"], row["val_accuracy"] or 0.0))
        gains.append({
            "classifier": classifier, "best_layer": best["layer"], "accuracy": best["accuracy"],
            "pixels_accuracy": pixels["accuracy"], "gain": best["accuracy"] - pixels["accuracy"],
        })
    return gains


def augmented_twins(classifiers: Mapping[str, Any]) -> dict[str, str]:
    """Each ``classifiers`` entry with ``augmented: true`` -> an entry that is the same but for it, where there is one."""

    def clean(entry: Any) -> Any:
        return {key: value for key, value in entry.items() if key != "augmented"} if isinstance(entry, Mapping) else entry

    twins = {}
    for name, entry in classifiers.items():
        if isinstance(entry, Mapping) and entry.get("augmented") is True:
            twin = next((other for other, e in classifiers.items() if other != name and isinstance(e, Mapping)
                         and not e.get("augmented") and clean(e) == clean(entry)), None)
            if twin is not None:
                twins[name] = twin
    return twins


def paired_gains(rows: Sequence[dict[str, Any]], pairs: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per ``variant -> base`` pair of classifier labels, per layer both were evaluated on: the variant's test
    accuracy against the base's (e.g. trained with augmented views against the same entry without, or a fine-tuned
    model against the head it started from)."""
    accuracy = {(row["classifier"], row["layer"]): row["accuracy"] for row in rows}
    gains = []
    for variant, base in pairs.items():
        for layer in dict.fromkeys(row["layer"] for row in rows):
            if (variant, layer) in accuracy and (base, layer) in accuracy:
                mine, theirs = accuracy[variant, layer], accuracy[base, layer]
                gains.append({"variant": variant, "base": base, "layer": layer, "accuracy": mine,
                              "base_accuracy": theirs, "gain": mine - theirs})
    return gains


def read_probe(path: str | Path) -> dict[str, Any]:
    """The probe stage's ``metrics.json`` at ``path``, with ``curve``: the path of its curve PNG beside it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no probe metrics at {path}: run the probe stage (python stages/probe.py) first")
    return {**json.loads(path.read_text()), "curve": str(path.with_name(CURVE_PNG))}


def probe_line(probe: Mapping[str, Any]) -> str:
    """The leaderboard's line on the linear probe (``read_probe``): its best block by val accuracy."""
    pixels = probe.get("pixels")
    baseline = f"; raw pixels: val {pixels['val_accuracy']:.3f}, test {pixels['test_accuracy']:.3f}" if pixels else ""
    return (
        f"Linear probe over all {probe['layers']} stored backbone layers: best block `{probe['best_layer']}` "
        f"({probe['probe']}, C={probe['C']:g}, val {probe['val_accuracy']:.3f}, test {probe['test_accuracy']:.3f}"
        f"{baseline}); curve in {probe['curve']}"
    )


def _cell(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}" if key.endswith("seconds") else f"{value:.3f}"


def markdown(
    rows: Sequence[dict[str, Any]], augmented: Mapping[str, str] | None = None, heads: Mapping[str, str] | None = None,
    probe: Mapping[str, Any] | None = None,
) -> str:
    """The leaderboard as a Markdown table (best first, the top row in bold), then the transfer-vs-pixels lines, the
    lines that say whether augmented views (``augmented``: classifier -> its twin without views) and fine-tuning
    (``heads``: fine-tuned label -> the head it started from) helped, and the linear probe's best block (``probe``:
    see ``read_probe``)."""
    lines = [
        "| rank | classifier | layer | " + " | ".join(HEADERS[key] for key in COLUMNS) + " |",
        "|---:|---|---|" + "---:|" * len(COLUMNS),
    ]
    for rank, row in enumerate(rows, start=1):
        cells = [str(rank), row["classifier"], f"`{row['layer']}`", *(_cell(row[key], key) for key in COLUMNS)]
        if rank == 1:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    gains = transfer_gains(rows)
    if gains:
        lines += ["", "Transfer vs raw pixels (test accuracy, best layer against the same classifier on `pixels`):", ""]
        lines += [
            f"- {g['classifier']}: `{g['best_layer']}` {g['accuracy']:.3f} vs pixels {g['pixels_accuracy']:.3f} "
            f"({g['gain']:+.3f})"
            for g in gains
        ]
    titles = {
        "Augmented views vs clean rows only (test accuracy, same classifier entry without `augmented`):": augmented,
        "Fine-tuned vs the head it started from (test accuracy, same layer):": heads,
    }
    for title, pairs in titles.items():
        found = paired_gains(rows, pairs or {})
        if found:
            lines += ["", title, ""]
            lines += [
                f"- {g['variant']} vs {g['base']} on `{g['layer']}`: {g['accuracy']:.3f} vs {g['base_accuracy']:.3f} "
                f"({g['gain']:+.3f})"
                for g in found
            ]
    if probe is not None:
        lines += ["", probe_line(probe)]
    return "\n".join(lines) + "\n"


def write_leaderboard(
    eval_dir: str | Path, classifiers: Sequence[str], layers: Sequence[str], out_dir: str | Path,
    finetune: Mapping[str, str] | None = None, augmented: Mapping[str, str] | None = None,
    heads: Mapping[str, str] | None = None, probe: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Write ``leaderboard.csv``, ``leaderboard.md``, ``leaderboard.json`` (DVC bar plot) and ``leaderboard.png``.
    ``augmented`` and ``heads``: see ``markdown`` (``heads`` by fine-tuned run name); ``probe``: the probe stage's
    ``metrics.json``, whose best block the Markdown names (None: no probe line).

    The PNG is a classifiers x layers heat map of test accuracy, with a row per fine-tuned run (its layer's cell
    only); the JSON has one row per run with ``run`` (``classifier · layer``) for DVC's bar_horizontal template.
    """
    rows = collect(eval_dir, classifiers, layers, finetune)
    probed = read_probe(probe) if probe is not None else None
    out_dir = Path(out_dir)
    with atomic_file(out_dir / "leaderboard.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["rank", "classifier", "layer", *COLUMNS])
        writer.writeheader()
        writer.writerows({"rank": rank, **row} for rank, row in enumerate(rows, start=1))
    with atomic_file(out_dir / "leaderboard.md") as tmp:
        started_from = {finetuned(name): head for name, head in (heads or {}).items()}
        tmp.write_text(markdown(rows, augmented, started_from, probed))
    write_json(out_dir / "leaderboard.json", [{"run": f"{r['classifier']} · {r['layer']}", **r} for r in rows])
    accuracy = {(row["classifier"], row["layer"]): row["accuracy"] for row in rows}
    names = [*classifiers, *(finetuned(name) for name in finetune or {})]
    grid = np.array([[accuracy.get((c, layer), np.nan) for layer in layers] for c in names])
    with atomic_file(out_dir / "leaderboard.png") as tmp:
        heatmap(
            grid, names, list(layers), tmp, title="Test accuracy: classifier x layer",
            xlabel="layer (features)", ylabel="classifier", colorbar="test accuracy", fmt="{:.3f}", cmap="viridis",
            vmin=None,
        )
    best = rows[0]
    log.info(
        "leaderboard of %d runs: best %s on %s, test accuracy %.4f", len(rows), best["classifier"], best["layer"],
        best["accuracy"],
    )
    if probed is not None:
        log.info("%s", probe_line(probed))
    return rows
