"""Benchmark extraction: pipeline speed vs compute-only, peak RSS vs image count, the seed articles' approaches, and
an incremental re-run (1% new images) against a full re-run; on synthetic 320x240 JPEGs or on camera-sized photos
(``--corpus camera --megapixels 12``). With two or more sizes every method's rate is also taken beyond its fixed
cost: (largest - smallest images) / (their seconds' difference)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import positive
from PIL import Image, ImageDraw, ImageFilter

from pipeline.config import ExtractConfig
from pipeline.entry import configure_logging

log = logging.getLogger("bench.extract")

SEED = 0
IMAGE_SIZE = (320, 240)  # (width, height) of the generated JPEGs
JPEG_QUALITY = 90
SPEED_TARGET = 0.9  # end-to-end / compute-only images/s, at the largest size
MEMORY_TARGET = 10.0  # % growth of the pipeline's peak RSS from the smallest to the largest size
OVERHEAD_TARGET = 5.0  # % of a cluster run's wall time outside the workers' shard phase, at the largest size
CAMERA_QUALITY = 92  # camera and phone JPEGs
METHODS = {
    "compute": "compute-only (predict_on_batch, in-memory batch)",
    "pipeline": "pipeline (run_extraction -> HDF5), decode fast",
    "pipeline_exact": "pipeline, decode exact (every image decoded whole)",
    "reader": "the pipeline's reader alone (decode fast, all cores, no model): the decode ceiling",
    "load_img": "anchor a: load_img list + model.predict",
    "dataset": "anchor b: image_dataset_from_directory + model.predict",
    "cluster": "pipeline on a Dask LocalCluster of 2 workers (8 shards, merged)",
}
CLUSTER = "local:2"
SHARDS = 8
ADDED_FRACTION = 0.01  # new images added to the largest set for the incremental part
INCREMENTAL_TARGET = 5.0  # % of a full re-run's wall time the incremental re-run may take beyond its fixed overhead
STEPS = {  # the incremental part, in the order run; the first three write the same output path, reuse on
    "first": "first extraction (reuse on)",
    "added": f"incremental re-run: +{ADDED_FRACTION:.0%} new images (output deleted)",
    "unchanged": "re-run, no new images (output deleted): the fixed overhead",
    "full": "full re-run (reuse off, fresh output): the baseline",
}
LABELS = {**METHODS, **STEPS}
METHOD_KEYS = ("images_per_s", "cpu_ms_per_image", "peak_rss_mib")  # medians over --repeats
STEP_KEYS = ("seconds", "cpu_seconds", "load_s", "hash_s", "rows_s", "rest_s", "peak_rss_mib")
PARTS = ("methods", "incremental")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=positive, nargs="+", default=[1000, 10000], help="image counts to run")
    parser.add_argument("--corpus", choices=("synthetic", "camera"), default="synthetic",
                        help="synthetic 320x240 JPEGs, or camera-sized ones made from scikit-image's and "
                             "scikit-learn's real photos (cropped, flipped and brightened: every file differs)")
    parser.add_argument("--megapixels", type=float, default=12.0, help="size of the camera corpus's JPEGs (4:3)")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), help="the methods to run (default: all)")
    parser.add_argument(
        "--only", choices=PARTS, help="run one part: the methods table, or the incremental re-run on the largest size"
    )
    parser.add_argument("--input-size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    parser.add_argument("--batch-size", type=batch_size, default=64, help="a number, or auto (GPU: the largest that fits)")
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--weights", choices=("imagenet", "none"), default="imagenet",
                        help="none: random weights (enough for speed; only mobilenet's ImageNet weights work offline)")
    parser.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPU only)")
    parser.add_argument("--xla", action="store_true", help="XLA-compiled feature function (GPU only)")
    parser.add_argument("--layers", default="conv_pw_7_relu,conv_pw_13_relu", help="comma-separated, avg-pooled")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bottleneck-bench")
    parser.add_argument("--repeats", type=positive, default=1, help="runs per measurement; the medians are reported")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument("--measure", choices=sorted(LABELS), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def batch_size(text: str) -> int | str:
    """An argparse type: ``auto`` or a positive integer."""
    return text if text == "auto" else positive(text)


def extract_config(args: argparse.Namespace) -> ExtractConfig:
    return ExtractConfig.from_params({
        "backbone": args.backbone, "weights": None if args.weights == "none" else args.weights,
        "input_size": args.input_size, "batch_size": args.batch_size, "layers": args.layers,
        "mixed_precision": args.mixed_precision, "xla": args.xla,
    })


def clock() -> tuple[float, float]:
    """Wall-clock and CPU seconds (user + system, all threads) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def since(start: tuple[float, float]) -> dict:
    """Wall and CPU seconds since ``start``; CPU seconds barely move when other processes share the cores."""
    wall, cpu = clock()
    return {"seconds": wall - start[0], "cpu_seconds": cpu - start[1]}


def corpus_tag(args: argparse.Namespace) -> str:
    """What the image folders' names start with: nothing for the synthetic corpus (as before it had a choice)."""
    return "" if args.corpus == "synthetic" else f"camera-{args.megapixels:g}mp-"


def image_dir(workdir: Path, n: int, first: int = 0, tag: str = "") -> Path:
    return workdir / (f"{tag}images-{n}" if first == 0 else f"{tag}images-{n}-from-{first}")


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


@functools.cache
def real_photos() -> list[np.ndarray]:
    """The real photos scikit-image and scikit-learn ship (RGB, 300 to 640 pixels a side), loaded once a process."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
    photos = [getattr(data, name)() for name in names] + [data.stereo_motorcycle()[0]]
    return photos + list(load_sample_images().images)


def camera_image(rng: np.random.Generator, photos: list[np.ndarray], megapixels: float) -> Image.Image:
    """A 4:3 camera-sized photo: a random crop (70-100% of each side) of one of ``photos``, maybe mirrored, its
    brightness scaled by 0.8-1.2, resized (bicubic) to ``megapixels``."""
    photo = photos[rng.integers(len(photos))]
    height, width = photo.shape[:2]
    crop_h, crop_w = (int(side * rng.uniform(0.7, 1.0)) for side in (height, width))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    crop = photo[top : top + crop_h, left : left + crop_w]
    crop = crop[:, ::-1] if rng.random() < 0.5 else crop
    crop = np.clip(crop * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    out_w = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    return Image.fromarray(crop).resize((out_w, round(out_w * 3 / 4)), Image.Resampling.BICUBIC)


def ensure_images(args: argparse.Namespace, n: int, first: int = 0) -> Path:
    """``n`` seeded JPEGs of ``args.corpus``, images ``first`` to ``first + n - 1``, in a flat folder of
    ``args.workdir``, generated once and reused (a marker file says done). Each image has its own seed, so folders
    with other ``first`` share none."""
    folder = image_dir(args.workdir, n, first, corpus_tag(args))
    marker, done = folder / ".complete", f"{n} {SEED}" + (f" from {first}" if first else "")
    if marker.is_file() and marker.read_text() == done:
        log.info("reusing %d images in %s", n, folder)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    camera = args.corpus == "camera"
    what = f"{args.megapixels:g} MP camera" if camera else f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} synthetic"
    log.info("generating %d %s JPEGs in %s on %d cores", n, what, folder, os.cpu_count())
    with ProcessPoolExecutor() as pool:
        jobs = [(folder / f"img_{i:06d}.jpg", i, args.megapixels if camera else None) for i in range(first, first + n)]
        for _ in pool.map(write_image, jobs, chunksize=8):
            pass
    marker.write_text(done)
    return folder


def write_image(job: tuple[Path, int, float | None]) -> None:
    """Image ``index`` of a corpus, seeded by it: a camera photo of that many megapixels, or a synthetic JPEG."""
    path, index, megapixels = job
    rng = np.random.default_rng([SEED, index])
    if megapixels is not None:
        camera_image(rng, real_photos(), megapixels).save(path, quality=CAMERA_QUALITY)
    else:
        synthetic_image(rng).save(path, quality=JPEG_QUALITY)


def link_images(source: Path, folder: Path) -> None:
    """Hard-link (else copy) the images of ``source`` into ``folder``: the same bytes, so the same content hashes."""
    for path in source.glob("*.jpg"):
        try:
            os.link(path, folder / path.name)
        except OSError:
            shutil.copyfile(path, folder / path.name)


def fresh_output(out: Path) -> None:
    """Delete ``out`` and the earlier outputs kept beside it for reuse, so that a run computes every image."""
    from pipeline.extraction.reuse import reuse_folder

    out.unlink(missing_ok=True)
    shutil.rmtree(reuse_folder(out), ignore_errors=True)


def incremental_paths(workdir: Path) -> tuple[Path, Path, Path]:
    """The incremental part's image folder (grows by the new images), its output, and the full re-run's output."""
    root = workdir / "incremental"
    return root / "images", root / "features.h5", root / "features-full.h5"


def image_paths(folder: Path) -> list[Path]:
    """The folder's images in the pipeline's own manifest order."""
    from pipeline.extraction.dataset import read_images

    manifest = read_images(folder)
    return [manifest.absolute(i) for i in range(len(manifest))]


def feature_model(config: ExtractConfig):
    from pipeline.extraction.backbone import load_backbone

    backbone = load_backbone(config.backbone, config.weights, config.input_size)
    return backbone, backbone.feature_model(config.layer_names)


def pooled(config: ExtractConfig, outputs) -> list[np.ndarray]:
    """The anchors' in-memory outputs, pooled per layer as the pipeline stores them (with its own pooling layer)."""
    import keras

    from pipeline.extraction.graph import SpatialPool

    outputs = outputs if isinstance(outputs, list) else [outputs]
    return [keras.ops.convert_to_numpy(SpatialPool(spec.pooling)(o)) for spec, o in zip(config.layers, outputs)]


def measure_compute(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The model alone: the pipeline's feature function (uint8 in, pooled features out, under the run's precision,
    XLA and batch size, backing off like extraction on a GPU) on one in-memory batch, repeated after a warm-up."""
    from pipeline.extraction import accelerate
    from pipeline.extraction.images import decode_image
    from pipeline.extraction.model import load_feature_model

    started = clock()
    compute = accelerate.resolve(config.batch_size, config.mixed_precision, config.xla)
    features = load_feature_model(config, compute)
    load_s = since(started)["seconds"]
    paths = image_paths(folder)[: compute.batch_size]
    images = np.stack([decode_image(p, features.backbone.input_size, config.interpolation) for p in paths])
    batch = np.resize(images, (compute.batch_size, *images.shape[1:]))  # repeated up to a full batch
    for _ in range(3):
        features.device.run(features.model.predict_on_batch, batch)
    repeats = math.ceil(n / compute.batch_size)
    started = clock()
    for _ in range(repeats):
        features.device.run(features.model.predict_on_batch, batch)
    return {"images": repeats * len(batch), **since(started), "model_load_s": load_s, "batch_size": features.device.size}


def measure_pipeline(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The whole stage, files to a complete HDF5 file, exactly as DVC runs it the first time (model load and content
    hashing included; no earlier output to reuse)."""
    from pipeline.extraction.extract import run_extraction
    from pipeline.store import read_attrs

    out = folder.parent / f"features-{folder.name}-{config.decode}.h5"
    fresh_output(out)
    started = clock()
    run_extraction(folder, out, config)
    timed = since(started)
    return {"images": n, **timed, "output": str(out), "batch_size": read_attrs(out)["device_batch_size"]}


def measure_pipeline_exact(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The whole stage with every image decoded whole (``decode: exact``, bit parity with keras.utils.load_img)."""
    import dataclasses

    return measure_pipeline(dataclasses.replace(config, decode="exact"), folder, n)


def measure_reader(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The pipeline's batch reader alone, as extraction runs it (decode threads on every core), without a model."""
    from pipeline.extraction.images import iter_batches

    started = clock()
    decoded = 0
    for batch in iter_batches(image_paths(folder), tuple(config.input_size), config.interpolation, config.decode,
                              config.batch_size, on_error="fail"):
        decoded += len(batch.images)
    return {"images": decoded, **since(started)}


class LogMarks(logging.Handler):
    """Notes when a log message whose format string contains one of ``texts`` (key -> text) is emitted: the time
    (``time.time()``) of the last such record, by key."""

    def __init__(self, texts: dict[str, str]):
        super().__init__()
        self.texts = texts
        self.times: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        for key, text in self.texts.items():
            if text in record.msg:
                self.times[key] = record.created


SHARD_MARKS = {"planned": "images in", "extracted": "shards extracted"}  # pipeline.extraction.shards: the workers' span
EXTRACT_MARKS = {  # pipeline.extraction.extract, .hashing and .write: the end of each phase of one extraction
    "loaded": "extracting %s from",  # folder listed, model built
    "hashed": "hashed %d files",  # every image's sha256
    "written": "images through the model in",  # rows copied from the kept file and new ones computed
}


def measure_cluster(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The same stage on a LocalCluster: the overhead is everything outside the workers' shard phase (the client's
    model load and plan, starting and stopping the cluster, the merge)."""
    import dataclasses

    from pipeline.extraction.extract import run_extraction

    shard_size = math.ceil(n / SHARDS)
    config = dataclasses.replace(config, cluster=CLUSTER, shard_size=shard_size)
    out = folder.parent / f"features-cluster-{n}.h5"
    fresh_output(out)
    phase = LogMarks(SHARD_MARKS)
    logging.getLogger("pipeline.extraction.shards").addHandler(phase)
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


def timed_extraction(config: ExtractConfig, images: Path, out: Path) -> dict:
    """``run_extraction`` as DVC runs it, with the counts it returns and the seconds of each phase: listing the
    folder and building the model (``load_s``), hashing every file (``hash_s``), copying kept rows and computing the
    others (``rows_s``), then closing, keeping the output for reuse and the skipped report (``rest_s``)."""
    from pipeline.extraction.extract import run_extraction

    marks = LogMarks(EXTRACT_MARKS)
    logging.getLogger("pipeline").addHandler(marks)
    wall_start, started = time.time(), clock()
    extracted = run_extraction(images, out, config)
    result = {"images": extracted.computed + extracted.reused, **since(started)}
    ends = [wall_start, *(marks.times[key] for key in EXTRACT_MARKS), wall_start + result["seconds"]]
    phases = {f"{key}_s": end - start for key, start, end in zip(("load", "hash", "rows", "rest"), ends, ends[1:])}
    return {**result, "computed": extracted.computed, "reused": extracted.reused, **phases, "output": str(out)}


def measure_reused(config: ExtractConfig, folder: Path, n: int) -> dict:
    """One run of the incremental part into its output path, reuse on (the parent prepares the folder and output)."""
    images, out, _ = incremental_paths(folder.parent)
    return timed_extraction(config, images, out)


def measure_full_rerun(config: ExtractConfig, folder: Path, n: int) -> dict:
    """The incremental part's baseline: the same grown folder, reuse off, into a fresh output path."""
    import dataclasses

    images, _, out = incremental_paths(folder.parent)
    fresh_output(out)
    return timed_extraction(dataclasses.replace(config, reuse=0), images, out)


MEASURES = {
    "compute": measure_compute, "pipeline": measure_pipeline, "pipeline_exact": measure_pipeline_exact,
    "reader": measure_reader, "load_img": measure_load_img, "dataset": measure_dataset,
    "cluster": measure_cluster, "first": measure_reused, "added": measure_reused, "unchanged": measure_reused,
    "full": measure_full_rerun,
}


def measure(args: argparse.Namespace) -> None:
    """Child mode: run one measurement and print it as one JSON line (peak RSS of this whole process)."""
    import keras  # noqa: F401  imported before any timer starts, so no method pays for it

    config = extract_config(args)
    result = MEASURES[args.measure](config, image_dir(args.workdir, args.n, tag=corpus_tag(args)), args.n)
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
        "--backbone", args.backbone, "--weights", args.weights, "--layers", args.layers, "--workdir", str(args.workdir),
        "--corpus", args.corpus, "--megapixels", str(args.megapixels), "--measure", kind, "--n", str(n),
        *(["--mixed-precision"] if args.mixed_precision else []), *(["--xla"] if args.xla else []),
    ]


def run_child(args: argparse.Namespace, kind: str, n: int) -> dict:
    """One measurement in a fresh process; its logs pass through on stderr, its last stdout line is the result."""
    log.info("measuring %s on %d images", LABELS[kind], n)
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


def median_of(runs: list[dict], keys: Sequence[str]) -> dict:
    """One result for repeated runs of a measurement: the first successful run with the median of each of ``keys``
    (one run's peak RSS and speed are noisy), and every run."""
    done = [r for r in runs if "error" not in r]
    if len(runs) == 1 or not done:
        return runs[0]
    medians = {key: statistics.median(r[key] for r in done) for key in keys}
    return {**done[0], **medians, "runs": runs}


def run_repeated(args: argparse.Namespace, kind: str, n: int) -> dict:
    """``--repeats`` runs of one measurement, as ``median_of``."""
    return median_of([run_child(args, kind, n) for _ in range(args.repeats)], METHOD_KEYS)


def add_ratios(results: list[dict]) -> None:
    """Each result's images/s over the compute-only images/s measured at the same size."""
    compute = {r["size"]: r["images_per_s"] for r in results if r["method"] == "compute" and "error" not in r}
    for r in results:
        if "error" not in r and r["size"] in compute:
            r["ratio_to_compute"] = r["images_per_s"] / compute[r["size"]]


def beyond_fixed_cost(results: list[dict], sizes: list[int]) -> dict[str, dict]:
    """Per method, the rate beyond a run's fixed cost (imports, model load, first call, file open): the extra images
    of the largest size over its extra seconds against the smallest, and the fixed seconds that rate leaves."""
    small, large = min(sizes), max(sizes)
    marginal = {}
    for method in dict.fromkeys(r["method"] for r in results):
        a, b = find(results, method, small), find(results, method, large)
        if "error" in a or "error" in b or b["seconds"] <= a["seconds"]:
            continue
        rate = (b["images"] - a["images"]) / (b["seconds"] - a["seconds"])
        marginal[method] = {"images_per_s": rate, "fixed_seconds": a["seconds"] - a["images"] / rate}
    for anchor in ("dataset", "compute"):
        if anchor in marginal:
            for values in marginal.values():
                values[f"ratio_to_{anchor}"] = values["images_per_s"] / marginal[anchor]["images_per_s"]
    return marginal


def marginal_table(marginal: dict[str, dict], sizes: list[int]) -> str:
    rows = [
        f"beyond each run's fixed cost ({min(sizes):,} -> {max(sizes):,} images):",
        "| method | images/s | fixed s | ratio to the anchor (image_dataset_from_directory) | ratio to compute-only |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, m in marginal.items():
        ratios = [f"{m[key]:.2f}" if key in m else "" for key in ("ratio_to_dataset", "ratio_to_compute")]
        rows.append(f"| {METHODS[method]} | {m['images_per_s']:.1f} | {m['fixed_seconds']:.1f} | {' | '.join(ratios)} |")
    return "\n".join(rows)


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


def incremental_run(args: argparse.Namespace, n: int, added: int) -> dict[str, dict]:
    """One pass of the incremental part, each step in a fresh process: a new folder of the ``n`` base images (hard
    links) extracted with reuse on; ``added`` new images linked in and the output deleted, as DVC deletes a stage's
    outputs before it re-runs it (so rows come from the kept file, not the output), then re-run; the output deleted
    again and re-run with nothing new; then the baseline. Each step's counts are checked against what it must do."""
    images, out, _ = incremental_paths(args.workdir)
    shutil.rmtree(images.parent, ignore_errors=True)
    images.mkdir(parents=True)
    link_images(image_dir(args.workdir, n, tag=corpus_tag(args)), images)
    expected = {"first": (n, 0), "added": (added, n), "unchanged": (0, n + added), "full": (n + added, 0)}
    results = {}
    for step, (computed, reused) in expected.items():
        if step == "added":
            link_images(image_dir(args.workdir, added, first=n, tag=corpus_tag(args)), images)
        if step in ("added", "unchanged"):
            out.unlink(missing_ok=True)
        result = run_child(args, step, n)
        if "error" not in result and (result["computed"], result["reused"]) != (computed, reused):
            result["error"] = (
                f"expected {computed} computed and {reused} reused, got {result['computed']} and {result['reused']}"
            )
            log.error("%s: %s", step, result["error"])
        results[step] = result
    return results


def incremental_summary(steps: dict[str, dict], n: int, added: int) -> dict:
    """The incremental re-run, the fixed overhead (the re-run with nothing new) and what the re-run costs beyond
    it, as seconds and % of the full re-run; the target: beyond the overhead, under ``INCREMENTAL_TARGET`` %."""
    summary = {"base_images": n, "added_images": added, "share_pct": 100 * added / (n + added)}
    if any("error" in r for r in steps.values()):
        return {**summary, "pass": False}
    full, incremental, overhead = (steps[step]["seconds"] for step in ("full", "added", "unchanged"))
    cpu = {step: steps[step]["cpu_seconds"] for step in ("full", "added", "unchanged")}
    beyond = incremental - overhead
    return {
        **summary, "full_s": full, "incremental_s": incremental, "incremental_pct": 100 * incremental / full,
        "overhead_s": overhead, "overhead_pct": 100 * overhead / full,
        "beyond_overhead_s": beyond, "beyond_overhead_pct": 100 * beyond / full,
        # the same shares in CPU time, which barely moves when other processes share the cores, unlike wall time
        "incremental_cpu_pct": 100 * cpu["added"] / cpu["full"],
        "overhead_cpu_pct": 100 * cpu["unchanged"] / cpu["full"],
        "beyond_overhead_cpu_pct": 100 * (cpu["added"] - cpu["unchanged"]) / cpu["full"],
        # the new images at the full re-run's rate in its rows phase; the rest of "beyond": first call, padded batch
        "new_images_at_full_rate_s": steps["full"]["rows_s"] * added / (n + added),
        "pass": 100 * beyond / full < INCREMENTAL_TARGET,
    }


def incremental_table(steps: dict[str, dict]) -> str:
    rows = [
        "| run | images | computed | reused | seconds | % of full re-run | list + model load s | hash s | rows s | "
        "rest s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    full = steps["full"].get("seconds")
    for step, r in steps.items():
        if "error" in r and "seconds" not in r:
            rows.append(f"| {STEPS[step]} | | | | failed ({r['error']}) | | | | | |")
            continue
        share = f"{100 * r['seconds'] / full:.1f}" if full else ""
        counts = f"{r['computed']:,} | {r['reused']:,}" + (" (wrong)" if "error" in r else "")
        rows.append(
            f"| {STEPS[step]} | {r['images']:,} | {counts} | {r['seconds']:.1f} | {share} | {r['load_s']:.1f} | "
            f"{r['hash_s']:.1f} | {r['rows_s']:.1f} | {r['rest_s']:.1f} |"
        )
    return "\n".join(rows)


def incremental_line(summary: dict) -> str:
    n, added, s = summary["base_images"], summary["added_images"], summary
    head = f"incremental: +{added:,} new images ({s['share_pct']:.2f}% of {n + added:,}) to {n:,}"
    if "full_s" not in summary:
        return f"{head}: a step failed or did the wrong work (see above): MISS"
    return "\n  ".join([
        f"{head}: re-run {s['incremental_s']:.1f} s = {s['incremental_pct']:.1f}% of a full re-run "
        f"({s['full_s']:.1f} s) (CPU time {s['incremental_cpu_pct']:.1f}%)",
        f"fixed overhead (re-run with no new images: folder listing, model load, hashing every file, copying every "
        f"row) {s['overhead_s']:.1f} s = {s['overhead_pct']:.1f}% (CPU time {s['overhead_cpu_pct']:.1f}%)",
        f"beyond it {s['beyond_overhead_s']:.1f} s = {s['beyond_overhead_pct']:.2f}% (CPU time "
        f"{s['beyond_overhead_cpu_pct']:.2f}%); the new images' {s['share_pct']:.2f}% share of the full re-run's rows "
        f"phase is {s['new_images_at_full_rate_s']:.1f} s; the rest: the model's first call, the last batch padded",
        f"target: beyond the fixed overhead < {INCREMENTAL_TARGET:.0f}% of a full re-run: "
        f"{'PASS' if s['pass'] else 'MISS'}",
    ])


def methods_part(args: argparse.Namespace, report: dict) -> None:
    """Every method at every size, each in a fresh process, against compute-only; the speed, memory and cluster
    targets."""
    sizes = sorted(set(args.sizes))
    for n in sizes:
        ensure_images(args, n)
    results = [run_repeated(args, kind, n) for n in sizes for kind in args.methods or METHODS]
    add_ratios(results)
    print(table(results), flush=True)
    report.update(results=results)
    if {"pipeline", "compute", "cluster"} <= set(args.methods or METHODS):
        summary = targets(results, sizes)
        print(target_lines(summary, sizes), flush=True)
        report.update(targets=summary)
    if len(sizes) > 1:
        marginal = beyond_fixed_cost(results, sizes)
        print(marginal_table(marginal, sizes), flush=True)
        report.update(beyond_fixed_cost=marginal)


def incremental_part(args: argparse.Namespace, report: dict) -> None:
    """``ADDED_FRACTION`` new images added to the largest size: the incremental re-run against a full re-run
    (``--repeats`` passes of every step, medians reported)."""
    n = max(args.sizes)
    added = max(1, round(n * ADDED_FRACTION))
    ensure_images(args, n)
    ensure_images(args, added, first=n)
    runs = [incremental_run(args, n, added) for _ in range(args.repeats)]
    steps = {step: median_of([run[step] for run in runs], STEP_KEYS) for step in STEPS}
    summary = incremental_summary(steps, n, added)
    print(incremental_table(steps), incremental_line(summary), sep="\n\n", flush=True)
    report["incremental"] = {"steps": steps, "targets": summary}


def benchmark(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    report: dict = {}
    for part, run in (("methods", methods_part), ("incremental", incremental_part)):
        if args.only in (None, part):
            run(args, report)
    total = time.perf_counter() - started
    log.info("benchmark finished in %.0f s", total)
    if args.json:
        hidden = ("measure", "n", "json")
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in hidden}
        args.json.write_text(json.dumps({"settings": settings, **report, "total_s": total}, indent=2))


def main() -> None:
    configure_logging()
    args = parse_args()
    if args.measure:
        measure(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
