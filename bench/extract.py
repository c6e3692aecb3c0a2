"""Benchmark extraction: pipeline speed vs compute-only, peak RSS vs image count, and the seed articles' approaches."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common import positive
from pipeline.config import ExtractConfig
from pipeline.entry import configure_logging

log = logging.getLogger("bench.extract")

SEED = 0
IMAGE_SIZE = (320, 240)  # (width, height) of the generated JPEGs
JPEG_QUALITY = 90
SPEED_TARGET = 0.9  # end-to-end / compute-only images/s, at the largest size
MEMORY_TARGET = 10.0  # % growth of the pipeline's peak RSS from the smallest to the largest size
OVERHEAD_TARGET = 5.0  # % of a cluster run's wall time outside the workers' shard phase, at the largest size
METHODS = {
    "compute": "compute-only (predict_on_batch, in-memory batch)",
    "pipeline": "pipeline (run_extraction -> HDF5)",
    "load_img": "anchor a: load_img list + model.predict",
    "dataset": "anchor b: image_dataset_from_directory + model.predict",
    "cluster": "pipeline on a Dask LocalCluster of 2 workers (8 shards, merged)",
}
CLUSTER = "local:2"
SHARDS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=positive, nargs="+", default=[1000, 10000], help="image counts to run")
    parser.add_argument("--input-size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=positive, default=64)
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--layers", default="conv_pw_7_relu,conv_pw_13_relu", help="comma-separated, avg-pooled")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bottleneck-bench")
    parser.add_argument("--repeats", type=positive, default=1, help="runs per measurement; the medians are reported")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--measure", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def extract_config(args: argparse.Namespace) -> ExtractConfig:
    return ExtractConfig.from_params(
        {"backbone": args.backbone, "input_size": args.input_size, "batch_size": args.batch_size, "layers": args.layers}
    )


def clock() -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system, all threads) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def since(start: tuple[float, float]) -> dict:
    """Wall and CPU seconds since ``start``; CPU seconds barely move when other processes share the cores."""
    wall, cpu = clock()
    return {"seconds": wall - start[0], "cpu_seconds": cpu - start[1]}


def image_dir(workdir: Path, n: int) -> Path:
    return workdir / f"images-{n}"


def synthetic_image(rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB image: a smooth colour gradient, random filled shapes, slight blur and sensor noise."""
    width, height = IMAGE_SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    slopes = rng.uniform(-0.6, 0.6, size=(2, 3))
    base = rng.uniform(40, 215, size=3) + x[..., None] * slopes[0] + y[..., None] * slopes[1]
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        x0, x1 = sorted(rng.integers(0, width, size=2))
        y0, y1 = sorted(rng.integers(0, height, size=2))
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([tuple(int(v) for v in p) for p in rng.integers(0, (width, height), size=(5, 2))], fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 2.0))))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, size=(height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def ensure_images(workdir: Path, n: int) -> Path:
    """``n`` seeded JPEGs in a flat folder of ``workdir``, generated once and reused (a marker file says done)."""
    folder = image_dir(workdir, n)
    marker = folder / ".complete"
    if marker.is_file() and marker.read_text() == f"{n} {SEED}":
        log.info("reusing %d images in %s", n, folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    log.info("generating %d %dx%d JPEGs (quality %d) in %s", n, *IMAGE_SIZE, JPEG_QUALITY, folder)
    for i in range(n):
        synthetic_image(np.random.default_rng([SEED, i])).save(folder / f"img_{i:06d}.jpg", quality=JPEG_QUALITY)
    marker.write_text(f"{n} {SEED}")
    return folder


def image_paths(folder: Path) -> list[Path]:
    """The folder's images in the pipeline's own manifest order."""
    from pipeline.dataset import read_images

    manifest = read_images(folder)
    return [manifest.absolute(i) for i in range(len(manifest))]


def feature_model(config: ExtractConfig):
    from pipeline.backbone import load_backbone

    backbone = load_backbone(config.backbone, config.weights, config.input_size)
    return backbone, backbone.feature_model(config.layer_names)


def pooled(config: ExtractConfig, outputs) -> list[np.ndarray]:
    """The anchors' in-memory outputs, pooled per layer as the pipeline stores them."""
    from pipeline.extract import pool

    outputs = outputs if isinstance(outputs, list) else [outputs]
    return [pool(np.asarray(o), spec.pooling) for spec, o in zip(config.layers, outputs)]


def measure_compute(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The feature sub-model alone: predict_on_batch on one preprocessed float32 batch, repeated after a warm-up."""
    from pipeline.images import decode_image

    started = clock()
    backbone, model = feature_model(config)
    load_s = since(started)["seconds"]
    paths = image_paths(folder)[: config.batch_size]
    images = np.stack([decode_image(p, backbone.input_size, config.interpolation) for p in paths])
    batch = backbone.preprocess(images.astype(np.float32))
    for _ in range(3):
        model.predict_on_batch(batch)
    repeats = math.ceil(n / config.batch_size)
    started = clock()
    for _ in range(repeats):
        model.predict_on_batch(batch)
    return {"images": repeats * len(batch), **since(started), "model_load_s": load_s}


def measure_pipeline(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The whole stage, files to a complete HDF5 file, exactly as DVC runs it (model load included)."""
    from pipeline.extract import run_extraction

    out = folder.parent / f"features-{n}.h5"
    out.unlink(missing_ok=True)
    started = clock()
    run_extraction(folder, out, config)
    return {"images": n, **since(started), "output": str(out)}


class ShardPhase(logging.Handler):
    """Notes when pipeline.shards plans the shards and when the last one is done: the span the workers extract."""

    def __init__(self):
        super().__init__()
        self.times: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        for key, text in (("planned", "images in"), ("extracted", "shards extracted")):
            if text in record.msg:
                self.times[key] = record.created


def measure_cluster(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The same stage on a LocalCluster: the overhead is everything outside the workers' shard phase (the client's
    model load and plan, starting and stopping the cluster, the merge)."""
    import dataclasses

    from pipeline.extract import run_extraction

    shard_size = math.ceil(n / SHARDS)
    config = dataclasses.replace(config, cluster=CLUSTER, shard_size=shard_size)
    out = folder.parent / f"features-cluster-{n}.h5"
    out.unlink(missing_ok=True)
    phase = ShardPhase()
    logging.getLogger("pipeline.shards").addHandler(phase)
    started = clock()
    run_extraction(folder, out, config)
    result = {"images": n, **since(started), "output": str(out)}
    result["shard_phase_seconds"] = phase.times["extracted"] - phase.times["planned"]
    result["overhead_pct"] = 100 * (1 - result["shard_phase_seconds"] / result["seconds"])
    return result


def measure_load_img(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The seed articles: every image into one list via load_img, one array, preprocess_input, model.predict."""
    import keras

    started = clock()
    backbone, model = feature_model(config)
    size, interpolation = backbone.input_size, config.interpolation
    arrays = [
        keras.utils.img_to_array(keras.utils.load_img(p, target_size=size, interpolation=interpolation))
        for p in image_paths(folder)
    ]
    images = backbone.preprocess(np.array(arrays))
    features = pooled(config, model.predict(images, batch_size=config.batch_size, verbose=0))
    return {"images": len(features[0]), **since(started)}


def measure_dataset(config: ExtractConfig, folder: Path, n: int) -> dict:
    """image_dataset_from_directory (unlabelled, unshuffled) mapped with preprocess_input, then model.predict."""
    import keras

    started = clock()
    backbone, model = feature_model(config)
    dataset = keras.utils.image_dataset_from_directory(
        folder, labels=None, image_size=backbone.input_size, batch_size=config.batch_size, shuffle=False,
        interpolation=config.interpolation, verbose=False,
    ).map(backbone.preprocess)
    features = pooled(config, model.predict(dataset, verbose=0))
    return {"images": len(features[0]), **since(started)}


MEASURES = {
    "compute": measure_compute, "pipeline": measure_pipeline, "load_img": measure_load_img, "dataset": measure_dataset,
    "cluster": measure_cluster,
}


def measure(args: argparse.Namespace) -> None:
    """Child mode: run one measurement and print it as one JSON line (peak RSS of this whole process)."""
    import keras  # noqa: F401  imported before any timer starts, so no method pays for it

    config = extract_config(args)
    result = MEASURES[args.measure](config, image_dir(args.workdir, args.n), args.n)
    result.update(
        method=args.measure, size=args.n, images_per_s=result["images"] / result["seconds"],
        cpu_ms_per_image=1000 * result["cpu_seconds"] / result["images"],
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        load_avg_1m=os.getloadavg()[0],  # this process adds about one per busy core; more means other work shared them
    )
    print(json.dumps(result), flush=True)


def child_command(args: argparse.Namespace, kind: str, n: int) -> list[str]:
    return [
        sys.executable, __file__, "--input-size", *map(str, args.input_size), "--batch-size", str(args.batch_size),
        "--backbone", args.backbone, "--layers", args.layers, "--workdir", str(args.workdir),
        "--measure", kind, "--n", str(n),
    ]


def run_child(args: argparse.Namespace, kind: str, n: int) -> dict:
    """One measurement in a fresh process; its logs pass through on stderr, its last stdout line is the result."""
    log.info("measuring %s on %d images", METHODS[kind], n)
    proc = subprocess.run(child_command(args, kind, n), stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        log.error("%s on %d images failed with exit status %d", kind, n, proc.returncode)
        return {"method": kind, "size": n, "error": f"exit status {proc.returncode}"}
    result = json.loads(lines[-1])
    log.info(
        "%s on %d images: %.1f images/s, %.1f CPU ms/image, peak RSS %.0f MiB",
        kind, n, result["images_per_s"], result["cpu_ms_per_image"], result["peak_rss_mib"],
    )
    return result


def run_repeated(args: argparse.Namespace, kind: str, n: int) -> dict:
    """``--repeats`` runs of one measurement: the median of each figure, as one run's peak RSS and speed are noisy."""
    runs = [run_child(args, kind, n) for _ in range(args.repeats)]
    done = [r for r in runs if "error" not in r]
    if len(runs) == 1 or not done:
        return runs[0]
    keys = ("images_per_s", "cpu_ms_per_image", "peak_rss_mib")
    medians = {key: statistics.median(r[key] for r in done) for key in keys}
    return {**done[0], **medians, "runs": runs}


def add_ratios(results: list[dict]) -> None:
    """Each result's images/s over the compute-only images/s measured at the same size."""
    compute = {r["size"]: r["images_per_s"] for r in results if r["method"] == "compute" and "error" not in r}
    for r in results:
        if "error" not in r and r["size"] in compute:
            r["ratio_to_compute"] = r["images_per_s"] / compute[r["size"]]


def find(results: list[dict], method: str, size: int) -> dict:
    return next(r for r in results if r["method"] == method and r["size"] == size)


def targets(results: list[dict], sizes: list[int]) -> dict:
    """The speed ratio at the largest size and the pipeline's peak RSS growth from the smallest to the largest size.

    ``cpu_ratio`` (compute-only CPU ms per image over the pipeline's) is a cross-check that other processes on the
    machine barely move, unlike images/s.
    """
    small, large = find(results, "pipeline", min(sizes)), find(results, "pipeline", max(sizes))
    compute = find(results, "compute", max(sizes))
    ratio = large.get("ratio_to_compute")
    growth = cpu_ratio = None
    if "error" not in small and "error" not in large:
        growth = 100 * (large["peak_rss_mib"] / small["peak_rss_mib"] - 1)
    if "error" not in large and "error" not in compute:
        cpu_ratio = compute["cpu_ms_per_image"] / large["cpu_ms_per_image"]
    overhead = find(results, "cluster", max(sizes)).get("overhead_pct")
    return {
        "speed_ratio": ratio, "speed_pass": ratio is not None and ratio >= SPEED_TARGET, "cpu_ratio": cpu_ratio,
        "memory_growth_pct": growth, "memory_pass": growth is not None and growth < MEMORY_TARGET,
        "cluster_overhead_pct": overhead, "overhead_pass": overhead is not None and overhead < OVERHEAD_TARGET,
    }


def table(results: list[dict]) -> str:
    rows = ["| method | images | images/s | ratio to compute-only | peak RSS MiB |", "|---|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {METHODS[r['method']]} | {r['size']:,} | failed ({r['error']}) | | |")
            continue
        ratio = f"{r['ratio_to_compute']:.2f}" if "ratio_to_compute" in r else ""
        rows.append(
            f"| {METHODS[r['method']]} | {r['size']:,} | {r['images_per_s']:.1f} | {ratio} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(rows)


def target_lines(summary: dict, sizes: list[int]) -> str:
    def verdict(passed: bool) -> str:
        return "PASS" if passed else "MISS"

    ratio, growth = summary["speed_ratio"], summary["memory_growth_pct"]
    ratio_text = "n/a" if ratio is None else f"{ratio:.2f}"
    if summary["cpu_ratio"] is not None:
        ratio_text += f" (CPU-time ratio {summary['cpu_ratio']:.2f})"
    growth_text = "n/a" if growth is None else f"{growth:+.1f}%"
    overhead = summary["cluster_overhead_pct"]
    overhead_text = "n/a" if overhead is None else f"{overhead:.1f}%"
    return (
        f"speed: pipeline / compute-only images/s at {max(sizes):,} images = {ratio_text} "
        f"(target >= {SPEED_TARGET}): {verdict(summary['speed_pass'])}\n"
        f"memory: pipeline peak RSS growth {min(sizes):,} -> {max(sizes):,} images = {growth_text} "
        f"(target < {MEMORY_TARGET:.0f}%): {verdict(summary['memory_pass'])}\n"
        f"cluster: share of the {CLUSTER} run at {max(sizes):,} images outside the shard phase (client model load, "
        f"plan, cluster start and stop, merge) = {overhead_text} (target < {OVERHEAD_TARGET:.0f}%): "
        f"{verdict(summary['overhead_pass'])}"
    )


def benchmark(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    sizes = sorted(set(args.sizes))
    for n in sizes:
        ensure_images(args.workdir, n)
    results = [run_repeated(args, kind, n) for n in sizes for kind in METHODS]
    add_ratios(results)
    summary = targets(results, sizes)
    print(table(results), target_lines(summary, sizes), sep="\n\n", flush=True)
    total = time.perf_counter() - started
    log.info("benchmark finished in %.0f s", total)
    if args.json:
        hidden = ("measure", "n", "json")
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in hidden}
        report = {"settings": settings, "results": results, "targets": summary, "total_s": total}
        args.json.write_text(json.dumps(report, indent=2))


def main() -> None:
    configure_logging()
    args = parse_args()
    if args.measure:
        measure(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
