"""The command line, ``python -m pipeline``: the same library functions the DVC stages call."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import COMPRESSIONS, DTYPES, ON_ERROR, POOLINGS, ExtractConfig, load_params, section
from pipeline.entry import run
from pipeline.validation import format_bytes


def describe_layers(backbone: str, input_size: tuple[int, int] | None = None) -> list[tuple[str, tuple, int]]:
    """(name, output shape, float32 bytes per image) for every layer; shapes do not depend on the weights."""
    import keras
    import numpy as np

    from pipeline.backbone import ARCHITECTURES, architecture
    from pipeline.validation import check_one_of

    if backbone.endswith(".keras"):
        model = keras.saving.load_model(backbone, safe_mode=True, compile=False)
    else:
        native = ARCHITECTURES[check_one_of("backbone", backbone, ARCHITECTURES)].native_size
        model = architecture(backbone, tuple(input_size) if input_size else (native, native))
    return [
        (layer.name, tuple(layer.output.shape[1:]), 4 * int(np.prod(layer.output.shape[1:], dtype=np.int64)))
        for layer in model.layers
    ]


def cmd_layers(args: argparse.Namespace) -> None:
    rows = describe_layers(args.backbone, tuple(args.input_size) if args.input_size else None)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'layer':<{width}}  {'output shape':<20}  bytes/image (float32)")
    for name, shape, size in rows:
        print(f"{name:<{width}}  {str(shape):<20}  {format_bytes(size)}")


def extract_config(args: argparse.Namespace) -> ExtractConfig:
    """params.yaml's extract section (if the file exists) with the command-line flags on top."""
    params = dict(section(load_params(args.params), "extract")) if Path(args.params).is_file() else {}
    flags = {
        "backbone": args.backbone,
        "layers": args.layers,
        "pooling": args.pooling,
        "dtype": args.dtype,
        "input_size": args.input_size,
        "batch_size": args.batch_size,
        "on_error": args.on_error,
        "compression": args.compression,
        "interpolation": args.interpolation,
        "preprocessing": args.preprocessing,
        "mixed_precision": args.mixed_precision,
        "xla": args.xla,
        "shard_size": args.shard_size,
        "reuse": args.reuse,
    }
    merged = {**params, **{key: value for key, value in flags.items() if value is not None}}
    for key in ("weights", "cluster"):
        value = getattr(args, key)
        if value is not None:
            merged[key] = None if value.lower() in ("null", "none") else value
    if args.pooling or args.dtype:
        # names only, so that --pooling / --dtype apply to every layer
        merged["layers"] = ExtractConfig.from_params(merged).layer_names
    return ExtractConfig.from_params(merged)


def cmd_extract(args: argparse.Namespace) -> None:
    from pipeline.extract import run_extraction

    run_extraction(args.images, args.out, extract_config(args), args.image_root)


def cmd_predict(args: argparse.Namespace) -> None:
    from pipeline.predict import format_line, predict_images, write_csv

    predictions = predict_images(args.model, args.images, top_k=args.top_k, batch_size=args.batch_size)
    if args.csv:
        write_csv(predictions, args.csv)
    else:
        for prediction in predictions:
            print(format_line(prediction))


def cmd_reuse(args: argparse.Namespace) -> None:
    from pipeline.reuse import entries, prune, reuse_folder

    if args.prune is not None:
        prune(args.features, args.prune)
    kept = entries(args.features)
    print(f"{reuse_folder(args.features)}: {len(kept)} config(s) kept for reuse, most recently used first")
    for entry in kept:
        cost = "0 B extra (hard link of the output)" if entry["shared_with_output"] else format_bytes(entry["bytes"])
        print(f"  {entry['config_hash'][:12]}  {entry['backbone']} {','.join(entry['layers'])}  {cost}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    layers = commands.add_parser("layers", help="list a backbone's layers with output shape and bytes per image")
    layers.add_argument("backbone", help="a keras.applications name (vgg16, mobilenet, ...) or a .keras file")
    layers.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the native size")
    layers.set_defaults(func=cmd_layers)

    extract = commands.add_parser("extract", help="extract features from images into an HDF5 file")
    extract.add_argument("--images", required=True, help="image folder (split/class, class or flat) or a CSV manifest")
    extract.add_argument("--image-root", help="folder that CSV paths are relative to (default: the CSV's folder)")
    extract.add_argument("--out", required=True, help="features file to write (.h5)")
    extract.add_argument("--params", default="params.yaml", help="params file whose 'extract' section is the base")
    extract.add_argument("--backbone", help="keras.applications name or .keras file")
    extract.add_argument("--weights", help="imagenet, null, or a weights file")
    extract.add_argument("--layers", help="comma-separated layer names")
    extract.add_argument("--pooling", choices=POOLINGS, help="pooling for every layer")
    extract.add_argument("--dtype", choices=DTYPES, help="storage dtype for every layer")
    extract.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    extract.add_argument("--interpolation", help="resize filter (bilinear, nearest, bicubic, ...)")
    extract.add_argument("--preprocessing", help="for a .keras backbone: none, tf, torch or caffe")
    extract.add_argument("--batch-size", type=lambda v: v if v == "auto" else int(v), help="images per batch, or auto")
    extract.add_argument("--on-error", choices=ON_ERROR, help="skip undecodable images (reported) or fail")
    extract.add_argument("--compression", choices=COMPRESSIONS, help="HDF5 compression")
    extract.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None, help="GPU only")
    extract.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None, help="GPU only")
    extract.add_argument("--cluster", help="extract in shards on Dask: local:N processes, tcp://host:port, or null")
    extract.add_argument("--shard-size", type=int, help="images per shard on a cluster (default 1024)")
    extract.add_argument("--reuse", type=int, help="earlier outputs' configs kept for reuse (default 3; 0: off)")
    extract.set_defaults(func=cmd_extract)

    reuse = commands.add_parser("reuse", help="list or prune the earlier outputs kept for incremental extraction")
    reuse.add_argument("--features", default="data/features.h5", help="the features file (default: data/features.h5)")
    reuse.add_argument("--prune", type=int, metavar="KEEP", help="keep only the KEEP most recently used configs")
    reuse.set_defaults(func=cmd_reuse)

    predict = commands.add_parser("predict", help="top-k labels for images from a trained model, end to end")
    predict.add_argument("images", nargs="+", metavar="IMAGES_OR_DIRS", help="image files or folders (recursive)")
    predict.add_argument(
        "--model", required=True,
        help="model directory written by training (data/models/<clf>/<layer>) or fine-tuning (data/models/finetune/<name>)",
    )
    predict.add_argument("--top-k", type=int, default=3, help="labels per image, best first (default: 3)")
    predict.add_argument("--csv", help="write path,rank,label,probability|score,error rows here instead of printing")
    predict.add_argument("--batch-size", type=int, help="images per batch (default: the model's extract config)")
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run(lambda: args.func(args))
