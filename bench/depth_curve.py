"""Benchmark the depth curve: a linear probe's val/test accuracy at every MobileNet block, on a real dataset.

One script for both curves: ``--dataset fashion-mnist`` (Zalando's Fashion-MNIST, from the Debian package
``dataset-fashion-mnist``) or ``--dataset digits`` (the built-in demo, scikit-learn's digits written by
``pipeline.prepare`` into the workdir). Each run writes the images as PNGs to ``<workdir>/images/<split>/<class>/``,
extracts every block of MobileNet (ImageNet weights, 128x128 input, ``extract.layers: blocks``, the 16x16 raw-pixel
baseline, no augmented views, reuse off, always into a fresh file) and runs the project's linear probe
(``pipeline.classification.probe.run_probe``, the ``probe`` section's defaults) over the file, both in this process;
then it prints the curve as a Markdown table (depth | layer | avg val/test | pyramid val/test, the best val of each
column in bold), the best block, and the extraction and probe seconds.

Choices:

- One extraction for both lines. The probe reads a ``pyramid`` layer as two lines: ``avg``, the row's leading
  ``channels`` columns (the 1x1 cell, which ``SpatialPool`` computes with the same ``ops.mean`` over the whole map
  as ``pooling: avg``) and ``pyramid`` (all 21 cells). So ``--poolings avg pyramid`` (the default) extracts once
  with ``pooling: pyramid``; ``--poolings avg`` alone extracts with ``pooling: avg`` (21x smaller, cheaper to probe).
- ``--dtype float32`` (default), though the pyramid file is twice float16's (13 blocks: 124,992 values per image,
  488 KiB). Measured on the digits: float32 pyramid rows give an ``avg`` line identical, to the last digit, to a
  separate ``pooling: avg`` extraction; float16 ones moved early blocks' ``avg`` cells by up to 0.03 (conv_pw_1 test
  0.826 against 0.852): a block's global average varies little from image to image next to its size, so float16's
  rounding (about 1/2000 of the value) is a visible share of what the probe standardizes. ``--dtype float16``
  halves the disk for larger subsets.
- Fashion-MNIST: a seeded, stratified subset: ``--per-class`` train and ``--val-per-class`` val images per class from
  the official train set (disjoint), ``--test-per-class`` test images per class from the official test set. The
  files are looked up in ``--fashion-dir`` (default: where the Debian package puts them); when the default folder
  lacks them and this runs as root with apt-get, the package is installed (logged); otherwise it stops and says
  what to install.
- Digits: all 1,797 digits with the prepare stage's defaults (32x32 PNGs, stratified 70/15/15 split, seed 0).
  ``--per-class N`` caps them at ceil(N / 0.7) per class (so about N train images per class, for smoke runs);
  ``--val-per-class`` and ``--test-per-class`` do not apply (the split fractions decide).
- The images are written once per workdir and reused while the dataset and subset settings are unchanged
  (``<workdir>/images.json`` records them); the features file and the probe's output are made anew every run.

Default size: 300/100/100 per class is 5,000 Fashion-MNIST images, a 2.4 GiB pyramid file; about 7 minutes on 2
cores (extraction 1.5, probe 5), the digits about 2.5.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from common import positive
from PIL import Image

from pipeline.entry import run
from pipeline.validation import ConfigError, UserError, check_bytes, format_bytes

log = logging.getLogger("bench.depth_curve")

DATASETS = ("fashion-mnist", "digits")
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package puts the IDX files
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Fashion-MNIST's labels 0-9 (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot),
# as folder names.
FASHION_CLASSES = (
    "tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
IDX_MAGIC = {1: 0x801, 3: 0x803}  # labels (1 dimension), images (3 dimensions): unsigned bytes
BACKBONE = "mobilenet"
INPUT_SIZE = (128, 128)  # the project's default (params.yaml extract.input_size)
PIXELS_SIDE = 16  # the raw-pixel baseline, as params.yaml's extract.pixels
POOLINGS = ("avg", "pyramid")
DIGITS_TRAIN_SHARE = 0.7  # prepare's default split: 15% val, 15% test
SPLIT_NAMES = ("train", "val", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    parser.add_argument("--workdir", type=Path,
                        help="images, features file and probe output (default: <tmp>/bottleneck-depth-curve/<dataset>)")
    parser.add_argument("--per-class", type=positive,
                        help="train images per class (default: 300 for fashion-mnist; digits: all, this caps them)")
    parser.add_argument("--val-per-class", type=positive, default=100, help="fashion-mnist val images per class")
    parser.add_argument("--test-per-class", type=positive, default=100, help="fashion-mnist test images per class")
    parser.add_argument("--seed", type=int, default=0, help="seeds the subset (fashion-mnist) or the split (digits)")
    parser.add_argument("--poolings", nargs="+", choices=POOLINGS, default=list(POOLINGS),
                        help="probe lines to report; with pyramid, one pyramid extraction gives both")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float32",
                        help="storage dtype of the blocks")
    parser.add_argument("--batch-size", default="auto", help="extract.batch_size (auto: 32 on CPU)")
    parser.add_argument("--memory-budget", default="2GiB", help="the probe's memory bound (train.memory_budget)")
    parser.add_argument("--fashion-dir", type=Path, default=FASHION_DIR, help="folder of Fashion-MNIST's .gz IDX files")
    parser.add_argument("--png", type=Path, help="copy the probe's curve.png here")
    parser.add_argument("--json", type=Path, help="write the settings, the curve and the timings here")
    args = parser.parse_args(argv)
    if args.batch_size != "auto":
        args.batch_size = positive(args.batch_size)
    if args.workdir is None:
        args.workdir = Path(tempfile.gettempdir()) / "bottleneck-depth-curve" / args.dataset
    args.poolings = [p for p in POOLINGS if p in args.poolings]
    return args


# --- Fashion-MNIST -----------------------------------------------------------------------------------------------


def fashion_paths(folder: Path) -> dict[str, tuple[Path, Path]]:
    return {split: (folder / images, folder / labels) for split, (images, labels) in FASHION_FILES.items()}


def missing_files(folder: Path) -> list[Path]:
    return [path for pair in fashion_paths(folder).values() for path in pair if not path.is_file()]


def ensure_fashion(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Fashion-MNIST's four files in ``folder``; the Debian package installed first when the default folder lacks
    them and this process may (root, apt-get present)."""
    missing = missing_files(folder)
    if missing and folder == FASHION_DIR and shutil.which("apt-get") and os.geteuid() == 0:
        log.info("%s not found: installing the Debian package %s (apt-get install -y)", missing[0], FASHION_PACKAGE)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", FASHION_PACKAGE]
        if subprocess.run(install, env=env).returncode != 0:
            log.info("apt-get install failed: running apt-get update, then installing again")
            subprocess.run(["apt-get", "update"], env=env, check=False)
            subprocess.run(install, env=env, check=False)
        missing = missing_files(folder)
    if missing:
        how = (
            f"install the Debian package {FASHION_PACKAGE} (as root: apt-get install {FASHION_PACKAGE}), which puts "
            f"them in {FASHION_DIR}" if folder == FASHION_DIR
            else f"pass --fashion-dir a folder holding {', '.join(n for pair in FASHION_FILES.values() for n in pair)}"
        )
        raise UserError(f"Fashion-MNIST not found: {missing[0]} is missing; {how}")
    return fashion_paths(folder)


def read_idx(path: Path, dims: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes with ``dims`` dimensions (1: labels, 3: images) as a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    header = np.frombuffer(data, dtype=">u4", count=1 + dims)
    if int(header[0]) != IDX_MAGIC[dims]:
        raise UserError(f"{path} is not an IDX file of {dims}-dimensional unsigned bytes (magic {int(header[0]):#x})")
    shape = tuple(int(n) for n in header[1:])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + dims))
    if array.size != math.prod(shape):
        raise UserError(f"{path} holds {array.size} bytes after its header; its shape {shape} needs {math.prod(shape)}")
    return array.reshape(shape)


def fashion_subset(
    train_labels: np.ndarray, test_labels: np.ndarray, counts: dict[str, int], seed: int
) -> dict[str, np.ndarray]:
    """Seeded, stratified indices: train and val (disjoint) into the official train set, test into the test set."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {split: [] for split in SPLIT_NAMES}
    for label in range(len(FASHION_CLASSES)):
        pool = rng.permutation(np.flatnonzero(train_labels == label))
        test_pool = rng.permutation(np.flatnonzero(test_labels == label))
        if counts["train"] + counts["val"] > len(pool) or counts["test"] > len(test_pool):
            raise ConfigError(
                f"class {FASHION_CLASSES[label]} has {len(pool)} official train images (for --per-class + "
                f"--val-per-class = {counts['train'] + counts['val']}) and {len(test_pool)} test images (for "
                f"--test-per-class = {counts['test']})"
            )
        chosen["train"].append(pool[: counts["train"]])
        chosen["val"].append(pool[counts["train"] : counts["train"] + counts["val"]])
        chosen["test"].append(test_pool[: counts["test"]])
    return {split: np.sort(np.concatenate(parts)) for split, parts in chosen.items()}


def write_fashion(folder: Path, args: argparse.Namespace, counts: dict[str, int]) -> dict[str, int]:
    """The subset as greyscale 28x28 PNGs, ``<split>/<class>/<official index>.png``."""
    paths = ensure_fashion(args.fashion_dir)
    official = {split: (read_idx(images, 3), read_idx(labels, 1)) for split, (images, labels) in paths.items()}
    (train_x, train_y), (test_x, test_y) = official["train"], official["test"]
    log.info("read Fashion-MNIST from %s: %d train and %d test images", args.fashion_dir, len(train_y), len(test_y))
    subset = fashion_subset(train_y, test_y, counts, args.seed)
    for split, indices in subset.items():
        x, y = (test_x, test_y) if split == "test" else (train_x, train_y)
        for index in indices:
            path = folder / split / FASHION_CLASSES[y[index]] / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[index], mode="L").save(path)
    return {split: len(indices) for split, indices in subset.items()}


# --- the images --------------------------------------------------------------------------------------------------


def image_settings(args: argparse.Namespace) -> dict:
    """What decides the images: they are rewritten when it changes."""
    if args.dataset == "digits":
        limit = None if args.per_class is None else max(3, math.ceil(args.per_class / DIGITS_TRAIN_SHARE))
        return {"dataset": "digits", "per_class_limit": limit, "seed": args.seed}
    counts = {"train": args.per_class or 300, "val": args.val_per_class, "test": args.test_per_class}
    return {"dataset": "fashion-mnist", "per_class": counts, "seed": args.seed}


def ensure_images(args: argparse.Namespace) -> tuple[Path, dict[str, int], dict]:
    """``<workdir>/images`` for the dataset, written unless ``<workdir>/images.json`` records the same settings;
    returns the folder, the image count per split, and the settings."""
    folder, record = args.workdir / "images", args.workdir / "images.json"
    settings = image_settings(args)
    if record.is_file() and folder.is_dir():
        kept = json.loads(record.read_text())
        if kept.get("settings") == settings:
            log.info("reusing the images in %s: %s", folder, kept["counts"])
            return folder, kept["counts"], settings
    if folder.exists() and not record.is_file():
        raise UserError(
            f"refusing to replace {folder}: this script did not write it (no {record}); pick another --workdir"
        )
    record.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.dataset == "digits":
        from pipeline.config import PrepareConfig
        from pipeline.prepare import prepare_digits

        counts = prepare_digits(folder, PrepareConfig(per_class_limit=settings["per_class_limit"], seed=args.seed))
    else:
        tmp = args.workdir / ".images.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        counts = write_fashion(tmp, args, settings["per_class"])
        tmp.rename(folder)
    log.info("wrote %d %s images to %s in %.1f s: %s", sum(counts.values()), args.dataset, folder,
             time.perf_counter() - started, counts)
    record.write_text(json.dumps({"settings": settings, "counts": counts}, indent=2) + "\n")
    return folder, counts, settings


# --- extraction and probe ----------------------------------------------------------------------------------------


def clock() -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system, all threads) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def since(start: tuple[float, float]) -> dict[str, float]:
    """Wall and CPU seconds since ``start``; CPU seconds barely move when other processes share the cores."""
    wall, cpu = clock()
    return {"seconds": round(wall - start[0], 2), "cpu_seconds": round(cpu - start[1], 2)}


def extraction_pooling(poolings: list[str]) -> str:
    """One extraction serves every line: a pyramid row's leading cell is the avg line."""
    return "pyramid" if "pyramid" in poolings else "avg"


def extract(args: argparse.Namespace, images: Path, out: Path) -> dict:
    """Every MobileNet block plus the raw pixels into a fresh ``out``; its seconds, images and size."""
    from pipeline.config import ExtractConfig
    from pipeline.extraction.extract import run_extraction
    from pipeline.extraction.reuse import reuse_folder

    config = ExtractConfig.from_params({
        "backbone": BACKBONE, "weights": "imagenet", "input_size": list(INPUT_SIZE), "layers": "blocks",
        "pooling": extraction_pooling(args.poolings), "dtype": args.dtype, "pixels": PIXELS_SIDE,
        "augment_views": 0, "reuse": 0, "batch_size": args.batch_size,
    })
    out.unlink(missing_ok=True)  # a file of the same config would be resumed, its rows copied, not computed
    shutil.rmtree(reuse_folder(out), ignore_errors=True)
    import keras  # noqa: F401  imported before the clock starts, as bench/extract.py does

    started = clock()
    result = run_extraction(images, out, config)
    timed = since(started)
    skipped = len(result.skipped)
    if skipped:
        log.warning("%d images could not be decoded (see %s)", skipped, out.with_suffix(".skipped.csv"))
    return {**timed, "images": result.computed + result.reused, "skipped": skipped, "bytes": out.stat().st_size,
            "pooling": config.layers[0].pooling, "dtype": args.dtype}


def probe(features: Path, out_dir: Path, memory_budget: int) -> tuple[dict, list[dict], dict]:
    """The project's linear probe over every stored layer: its metrics, its curve rows and its seconds."""
    from pipeline.classification.probe import CURVE_JSON, run_probe
    from pipeline.config import ProbeConfig

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    started = clock()
    metrics = run_probe(features, out_dir, ProbeConfig(), memory_budget=memory_budget)
    timed = since(started)
    return metrics, json.loads((out_dir / CURVE_JSON).read_text()), timed


# --- the report --------------------------------------------------------------------------------------------------


def line_of(row: dict) -> str:
    """A curve row's probe line: ``avg`` or ``pyramid`` (the last word of ``logreg avg``)."""
    return row["probe"].rsplit(" ", 1)[-1]


def table(curve: list[dict], metrics: dict, poolings: list[str]) -> str:
    """depth | layer | one val / test column per probe line; the best block by val of each line in bold (as the
    probe picks it: ties go to the shallower block; the raw pixels are the baseline, not a candidate)."""
    cells = {(row["depth"], line_of(row)): row for row in curve}
    names = {row["depth"]: row["layer"] for row in curve}
    best = {line_of({"probe": probe}): row["depth"] for probe, row in metrics["per_probe"].items()}
    header = " | ".join(f"`{p}` val / test" for p in poolings)
    rows = [f"| depth | layer | {header} |", "|---:|---|" + "---:|" * len(poolings)]
    for depth in sorted(names):
        layer = f"pixels ({PIXELS_SIDE}×{PIXELS_SIDE}×3)" if depth == 0 else f"`{names[depth]}`"
        values = []
        for pooling in poolings:
            row = cells.get((depth, pooling))
            text = "" if row is None else f"{row['val_accuracy']:.3f} / {row['test_accuracy']:.3f}"
            values.append(f"**{text}**" if text and best.get(pooling) == depth else text)
        rows.append(f"| {depth} | {layer} | {' | '.join(values)} |")
    return "\n".join(rows)


def report(args: argparse.Namespace, counts: dict[str, int], result: dict) -> str:
    extracted, metrics, probed = result["extract"], result["metrics"], result["probe"]
    if args.dataset == "digits":
        source = "scikit-learn's digits as 32×32 PNGs, the prepare stage's stratified 70/15/15 split"
        limit = result["images_settings"]["per_class_limit"]
        source += f", at most {limit} per class" if limit else " (all 1,797)"
    else:
        per = result["images_settings"]["per_class"]
        source = (f"Fashion-MNIST 28×28, {per['train']} / {per['val']} / {per['test']} per class: train and val from "
                  "the official train set (disjoint), test from the official test set")
    split_text = ", ".join(f"{split} {counts[split]:,}" for split in SPLIT_NAMES)
    best = metrics
    pixels = metrics.get("pixels")
    lines = [
        f"## Depth curve: {args.dataset}, {BACKBONE} (ImageNet weights) at {INPUT_SIZE[0]}×{INPUT_SIZE[1]}",
        "",
        f"{split_text} images ({source}; seed {args.seed}). Linear probe (standardized features, logistic "
        "regression, C chosen on val from 0.01, 0.1, 1, 10), val / test accuracy; the best block by val of each "
        "column in bold:",
        "",
        table(result["curve"], metrics, args.poolings),
        "",
        f"best block: `{best['best_layer']}` (depth {best['depth']}, {best['probe']}, C={best['C']:g}): "
        f"val {best['val_accuracy']:.3f}, test {best['test_accuracy']:.3f}"
        + (f"; raw pixels: val {pixels['val_accuracy']:.3f}, test {pixels['test_accuracy']:.3f}" if pixels else ""),
        f"extract: {extracted['seconds']:.1f} s ({extracted['cpu_seconds']:.0f} CPU s; {extracted['images']:,} images, "
        f"{extracted['images'] / extracted['seconds']:.1f} images/s; {metrics['layers']} blocks, pooling "
        f"{extracted['pooling']}, {extracted['dtype']}, plus pixels: {format_bytes(extracted['bytes'])}, model load "
        "included)",
        f"probe: {probed['seconds']:.1f} s ({probed['cpu_seconds']:.0f} CPU s; {metrics['layers']} blocks + pixels, "
        f"{len({line_of(r) for r in result['curve']})} line(s) per block)",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    memory_budget = check_bytes("--memory-budget", args.memory_budget)
    started = time.perf_counter()
    images, counts, settings = ensure_images(args)
    features, probe_dir = args.workdir / "features.h5", args.workdir / "probe"
    log.info("extracting every %s block (%s, %s) from %d images", BACKBONE, extraction_pooling(args.poolings),
             args.dtype, sum(counts.values()))
    extracted = extract(args, images, features)
    log.info("extracted %d images in %.1f s into %s (%s)", extracted["images"], extracted["seconds"], features,
             format_bytes(extracted["bytes"]))
    metrics, curve, probed = probe(features, probe_dir, memory_budget)
    result = {"images_settings": settings, "extract": extracted, "metrics": metrics, "curve": curve, "probe": probed}
    png = probe_dir / "curve.png"
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, args.png)
        png = args.png
    print(report(args, counts, result), flush=True)
    total = time.perf_counter() - started
    log.info("benchmark finished in %.0f s; curve image %s", total, png)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings_out = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({
            "settings": settings_out, "images": str(images), "counts": counts, "features": str(features),
            "probe_dir": str(probe_dir), "png": str(png), **result, "total_s": round(total, 2),
        }, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
