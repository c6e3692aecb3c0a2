"""GPU benchmark: MobileNet (ImageNet) and ResNet50 (random weights) at 224, ``batch_size: auto``, mixed precision
and XLA off and on, end to end on 12 MP camera photos and on 320x240 JPEGs (rate beyond each run's fixed cost)
against the model alone on the same GPU, with the batch size chosen. Sized for 5 minutes on one GPU; refuses to run
without one, so no GPU figure is ever made on a CPU."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import extract as bench

from pipeline.entry import configure_logging

log = logging.getLogger("bench.gpu")

BACKBONES = {  # name -> the extract benchmark's options for it
    "mobilenet": ["--backbone", "mobilenet", "--weights", "imagenet", "--layers", "conv_pw_13_relu"],
    "resnet50": ["--backbone", "resnet50", "--weights", "none", "--layers", "conv5_block3_out"],
}
SETTINGS = {"fp32": [], "mixed+XLA": ["--mixed-precision", "--xla"]}
CORPORA = {  # name -> (options, the two sizes whose difference gives the rate beyond the fixed cost)
    "320x240": (["--corpus", "synthetic"], (512, 4096)),  # first: the model-alone batch is decoded from it
    "12 MP camera": (["--corpus", "camera", "--megapixels", "12"], (64, 512)),
}


def options(backbone: str, setting: str, corpus: str, workdir: Path) -> argparse.Namespace:
    return bench.parse_args([
        *BACKBONES[backbone], *SETTINGS[setting], *CORPORA[corpus][0], "--input-size", "224", "224",
        "--batch-size", "auto", "--workdir", str(workdir),
    ])


def gpu_count() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def run(workdir: Path) -> list[dict]:
    """Every backbone x setting: the model alone once (its rate does not depend on the files), then the pipeline at
    both sizes of each corpus, each in a fresh process."""
    rows = []
    for corpus, (_, sizes) in CORPORA.items():
        for n in sizes:
            bench.ensure_images(options("mobilenet", "fp32", corpus, workdir), n)
    for backbone in BACKBONES:
        for setting in SETTINGS:
            first = next(iter(CORPORA))
            model = bench.run_child(options(backbone, setting, first, workdir), "compute", max(CORPORA[first][1]))
            for corpus, (_, sizes) in CORPORA.items():
                args = options(backbone, setting, corpus, workdir)
                small, large = (bench.run_child(args, "pipeline", n) for n in sizes)
                row = {"backbone": backbone, "setting": setting, "corpus": corpus, "model": model, "runs": [small, large]}
                if not any("error" in r for r in (model, small, large)) and large["seconds"] > small["seconds"]:
                    rate = (large["images"] - small["images"]) / (large["seconds"] - small["seconds"])
                    row.update(
                        images_per_s=rate, fixed_seconds=small["seconds"] - small["images"] / rate,
                        model_images_per_s=model["images_per_s"], ratio=rate / model["images_per_s"],
                        batch_size=large["batch_size"], model_batch_size=model["batch_size"],
                    )
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| backbone | setting | corpus | end to end images/s | model alone images/s | ratio | fixed s | batch size |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "images_per_s" not in r:
            lines.append(f"| {r['backbone']} | {r['setting']} | {r['corpus']} | failed | | | | |")
            continue
        lines.append(
            f"| {r['backbone']} | {r['setting']} | {r['corpus']} | {r['images_per_s']:.0f} | "
            f"{r['model_images_per_s']:.0f} | {r['ratio']:.2f} | {r['fixed_seconds']:.1f} | {r['batch_size']} |"
        )
    return "\n".join(lines)


def main() -> None:
    configure_logging()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bottleneck-bench")
    parser.add_argument("--json", type=Path, help="write every result here")
    args = parser.parse_args()
    if not gpu_count():
        raise SystemExit("bench/gpu.py needs a GPU, and TensorFlow sees none here: no GPU figure is made on a CPU")
    rows = run(args.workdir)
    print(table(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
