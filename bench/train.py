"""Benchmark stage two: classifier swap vs re-extraction under DVC, HDF5 read throughput, out-of-core peak memory."""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from common import positive

from pipeline.entry import configure_logging

log = logging.getLogger("bench.train")

REPO = Path(__file__).resolve().parents[1]
LAYER = "features"
CLASSES = 10
READ_TARGET = 0.5  # HDF5 -> numpy throughput over np.load of the same array
SWAP_TARGET = 0.05  # a one-entry classifier swap's `dvc repro` over the full default `dvc repro`
SPLITS = {  # extraction groups rows by split, so every file it writes is contiguous; scattered is for comparison
    "contiguous": "contiguous split (every file the pipeline writes)",
    "interleaved": "scattered split (a file written elsewhere)",
}
# ru_maxrss survives fork and exec, so a child of this process (holding the read benchmark's arrays) would start
# at this process's peak: each measurement runs in a grandchild, started by a small Python process.
LAUNCH = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
MEMORY_MODES = {"in_memory": "in memory (load_layers + fit)", "out_of_core": "out of core (HDF5 blocks -> partial_fit)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=positive, default=100_000, help="rows of the synthetic features file")
    parser.add_argument("--width", type=positive, default=1024, help="float32 features per row (1024: MobileNet's last block)")
    parser.add_argument("--repeats", type=positive, default=3, help="timed reads per reader; the median is reported")
    parser.add_argument("--chunk-size", default="64MiB", help="out-of-core block size (train.chunk_size)")
    parser.add_argument("--skip-dvc", action="store_true", help="leave out the classifier-swap measurement (minutes)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bottleneck-bench-train")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--measure-memory", choices=sorted(MEMORY_MODES), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- synthetic features ------------------------------------------------------------------------------------------


def split_column(rows: int, layout: str, rng: np.random.Generator) -> np.ndarray:
    """70/15/15 split labels, in blocks (``contiguous``) or shuffled (``interleaved``)."""
    n_train, n_val = int(rows * 0.7), int(rows * 0.15)
    splits = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (rows - n_train - n_val), dtype=object)
    return rng.permutation(splits) if layout == "interleaved" else splits


def write_features(path: Path, rows: int, width: int, layout: str) -> Path:
    """A real features file (FeatureWriter) of ``rows`` float32 rows: 10 class centroids plus noise, written in blocks."""
    from pipeline.store import FeatureWriter

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    centroids = rng.normal(0, 0.05, (CLASSES, width)).astype(np.float32)  # close classes: accuracy below 1
    labels = rng.integers(0, CLASSES, rows)
    splits = split_column(rows, layout, rng)
    attrs = {  # what train_classifier records from a features file's provenance; no backbone made these rows
        "layers": [LAYER], "class_names": [str(c) for c in range(CLASSES)], "config_hash": "synthetic",
        "backbone": "synthetic", "weights_sha256": "none", "input_size": [0, 0], "interpolation": "none",
        "preprocessing": "none", "extract_config": {},
    }
    block = 8192
    with FeatureWriter(path, capacity=rows, layers={LAYER: ((width,), "float32")}, attrs=attrs, resume_key="bench") as writer:
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            y = labels[start:stop]
            X = centroids[y] + rng.normal(0, 1, (stop - start, width)).astype(np.float32)
            writer.write(stop, {LAYER: X}, [f"{i}.png" for i in range(start, stop)], y, list(splits[start:stop]))
    log.info("wrote %s: %d x %d float32 (%s splits)", path, rows, width, layout)
    return path


# --- 1. classifier swap vs re-extraction -------------------------------------------------------------------------


def timed(args: list[str], cwd: Path) -> float:
    """Wall seconds of one command run with this interpreter's environment first on PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


# One-entry edits of the default classifiers, one after the other: the entry, the hyper-parameter and its new value
# (two per entry, up and down: a solver's time depends on the value, and one run of each is noisy).
SWAPS = (
    ("linear_svm", "C", 0.02), ("linear_svm", "C", 0.005), ("sgd_stream", "alpha", 0.0002), ("sgd_stream", "alpha", 0.00005),
)


def swap_classifier(copy: Path, name: str, key: str, value: float) -> dict:
    """``dvc repro`` after setting ``classifiers.<name>.params.<key>``: its wall seconds, and the seconds the re-run
    classifier itself spent fitting (model.json's ``fit_seconds``, every layer): the rest is the swap's overhead."""
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["classifiers"][name]["params"][key] = value
    (copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    wall = timed([sys.executable, "-m", "dvc", "repro"], copy)
    fits = sum(json.loads(path.read_text())["fit_seconds"] for path in (copy / "data" / "models" / name).glob("*/model.json"))
    log.info("%s.%s = %g: dvc repro %.1f s, of which %.1f s fitting", name, key, value, wall, fits)
    return {"classifier": name, "edit": f"params.{key}: {value}", "swap_s": wall, "fit_s": fits}


def measure_swap(workdir: Path) -> dict:
    """In a fresh git + DVC copy of this project: the default ``dvc repro``, then one-entry classifier edits (each a
    ``dvc repro``), then a forced re-run of the extract stage alone (the work the swaps did not redo)."""
    copy = workdir / "repo"
    shutil.rmtree(copy, ignore_errors=True)
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    timed(["git", "init", "-q"], copy)
    timed([*git, "add", "-A"], copy)
    timed([*git, "commit", "-qm", "bench"], copy)
    dvc = [sys.executable, "-m", "dvc"]
    log.info("dvc repro of the default pipeline in %s (minutes)", copy)
    full = timed([*dvc, "repro"], copy)
    swaps = [swap_classifier(copy, *edit) for edit in SWAPS]
    extract = timed([*dvc, "repro", "--force", "--single-item", "extract"], copy)
    for swap in swaps:
        swap.update(over_full=swap["swap_s"] / full, overhead_over_full=(swap["swap_s"] - swap["fit_s"]) / full)
    log.info("full repro %.1f s; extract stage %.1f s", full, extract)
    return {"full_repro_s": full, "extract_stage_s": extract, "swaps": swaps}


# --- 2. read throughput ------------------------------------------------------------------------------------------


def median_seconds(read, repeats: int) -> tuple[float, np.ndarray]:
    read()  # warm the page cache, so both readers are timed from memory
    times, array = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        array = read()
        times.append(time.perf_counter() - started)
    return statistics.median(times), array


def measure_read(workdir: Path, rows: int, width: int, repeats: int) -> list[dict]:
    """``load_layers`` (what training reads) of the train split from HDF5 against ``np.load`` of the same array."""
    from pipeline.store import load_layers

    results = []
    for layout in SPLITS:
        path = write_features(workdir / f"read-{layout}-{rows}x{width}.h5", rows, width, layout)
        npy = path.with_suffix(".npy")
        h5_s, X = median_seconds(lambda path=path: load_layers(path, [LAYER], "train").X, repeats)
        np.save(npy, X)
        npy_s, same = median_seconds(lambda npy=npy: np.load(npy), repeats)
        assert np.array_equal(X, same)
        mib = X.nbytes / 2**20
        results.append({
            "layout": layout, "mib": mib, "hdf5_s": h5_s, "npy_s": npy_s,
            "hdf5_mib_per_s": mib / h5_s, "npy_mib_per_s": mib / npy_s, "ratio": npy_s / h5_s,
        })
        npy.unlink()
        log.info("read %s: HDF5 %.0f MiB/s, np.load %.0f MiB/s, ratio %.2f", layout, mib / h5_s, mib / npy_s, npy_s / h5_s)
    return results


# --- 3. peak memory ----------------------------------------------------------------------------------------------


def measure_memory_child(features: Path, mode: str, chunk_size: int) -> None:
    """Child mode: train SGD on ``features`` in ``mode``; print peak RSS before and after training as JSON."""
    from pipeline.classification.train import train_classifier
    from pipeline.config import ClassifierConfig

    config = ClassifierConfig(
        name="sgd", estimator="sgd", layer=LAYER, out_of_core=mode == "out_of_core", passes=3,
        params={"loss": "log_loss", "max_iter": 3, "tol": None},
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    metadata = train_classifier(features, config, features.parent / f"model-{mode}", memory_budget=1 << 40, chunk_size=chunk_size)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "mode": mode, "baseline_rss_mib": before / 1024, "peak_rss_mib": after / 1024,
        "growth_mib": (after - before) / 1024, "seconds": time.perf_counter() - started,
        "val_accuracy": metadata["val_accuracy"],
    }), flush=True)


def measure_memory(args: argparse.Namespace, chunk_size: int) -> list[dict]:
    """Each mode in a fresh process on the same file, so one's peak RSS cannot hide the other's."""
    from pipeline.store import split_nbytes

    path = write_features(args.workdir / f"read-contiguous-{args.rows}x{args.width}.h5", args.rows, args.width, "contiguous")
    train_mib = split_nbytes(path, [LAYER], "train") / 2**20
    results = []
    for mode in MEMORY_MODES:
        command = [sys.executable, "-c", LAUNCH, sys.executable, __file__, "--measure-memory", mode, "--workdir", str(args.workdir),
                   "--rows", str(args.rows), "--width", str(args.width), "--chunk-size", args.chunk_size]
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        result = {**json.loads(proc.stdout.strip().splitlines()[-1]), "train_mib": train_mib}
        log.info("%s: peak RSS %.0f MiB (+%.0f MiB while training) for %.0f MiB of train features",
                 mode, result["peak_rss_mib"], result["growth_mib"], train_mib)
        results.append(result)
    return results


# --- report ------------------------------------------------------------------------------------------------------


def verdict(read: dict) -> str:
    return " PASS" if read["ratio"] >= READ_TARGET else " MISS"


def report(swap: dict | None, reads: list[dict], memory: list[dict], chunk_size: str) -> str:
    lines = []
    if swap is not None:
        lines += [
            f"First full `dvc repro`: {swap['full_repro_s']:.0f} s; the extract stage alone, forced: "
            f"{swap['extract_stage_s']:.1f} s.",
            "",
            "| one-entry edit | `dvc repro` | / full repro (target <= 5%) | its own fits | the rest | rest / full |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| `{s['classifier']}` {s['edit']} | {s['swap_s']:.1f} s | {100 * s['over_full']:.1f}%"
            f"{' PASS' if s['over_full'] <= SWAP_TARGET else ' MISS'} | {s['fit_s']:.1f} s | "
            f"{s['swap_s'] - s['fit_s']:.1f} s | {100 * s['overhead_over_full']:.1f}% |"
            for s in swap["swaps"]
        ]
        lines.append("")
    lines += ["| train split read | MiB | HDF5 MiB/s | np.load MiB/s | ratio (target >= 0.5) |", "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {SPLITS[r['layout']]} | {r['mib']:.0f} | {r['hdf5_mib_per_s']:.0f} | {r['npy_mib_per_s']:.0f} | "
        f"{r['ratio']:.2f}{verdict(r) if r['layout'] == 'contiguous' else ''} |"
        for r in reads
    ]
    lines += ["", f"| SGD training ({chunk_size} blocks) | train features MiB | peak RSS MiB | growth while training MiB | seconds | val accuracy |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [
        f"| {MEMORY_MODES[m['mode']]} | {m['train_mib']:.0f} | {m['peak_rss_mib']:.0f} | {m['growth_mib']:.0f} | "
        f"{m['seconds']:.1f} | {m['val_accuracy']:.3f} |"
        for m in memory
    ]
    return "\n".join(lines)


def main() -> None:
    configure_logging()
    args = parse_args()
    from pipeline.validation import check_bytes

    chunk_size = check_bytes("--chunk-size", args.chunk_size)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.measure_memory:
        path = args.workdir / f"read-contiguous-{args.rows}x{args.width}.h5"
        measure_memory_child(path, args.measure_memory, chunk_size)
        return
    started = time.perf_counter()
    swap = None if args.skip_dvc else measure_swap(args.workdir)
    reads = measure_read(args.workdir, args.rows, args.width, args.repeats)
    memory = measure_memory(args, chunk_size)
    print(report(swap, reads, memory, args.chunk_size), flush=True)
    log.info("benchmark finished in %.0f s", time.perf_counter() - started)
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "swap": swap,
                                         "read": reads, "memory": memory}, indent=2))


if __name__ == "__main__":
    main()
