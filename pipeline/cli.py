"""The command line, ``python -m pipeline``: the same library functions the DVC stages call."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import DataConfig, ExtractConfig, LayerSpec, load_params, param_fields, param_keys
from pipeline.entry import run
from pipeline.validation import ConfigError, check_keys, format_bytes

log = logging.getLogger(__name__)

DEFAULT_PARAMS = "params.yaml"
# Every key of the extract section, each a flag: --augment-rotation sets extract.augment.rotation.
EXTRACT_KEYS = param_keys(ExtractConfig)
EXTRACT_DESCRIPTION = (
    "Extract features from images into an HDF5 file. Every key of params.yaml's extract section has a flag "
    "(--augment-rotation sets extract.augment.rotation); a flag's value is read as YAML, as in params.yaml (null, "
    "true, 0.5, [a, b]). Flags override the params file (./params.yaml when present, or --params FILE), which "
    "overrides the defaults; the log names the keys taken from the file."
)


def describe_layers(backbone: str, input_size: tuple[int, int] | None = None) -> list[tuple[str, tuple, int]]:
    """(name, output shape, float32 bytes per image) for every layer; shapes do not depend on the weights."""
    import numpy as np

    from pipeline.extraction.backbone import headless_model

    model = headless_model(backbone, input_size)
    return [
        (layer.name, tuple(layer.output.shape[1:]), 4 * int(np.prod(layer.output.shape[1:], dtype=np.int64)))
        for layer in model.layers
    ]


def cmd_layers(args: argparse.Namespace) -> None:
    from pipeline.extraction.model import pooled_shape

    input_size = tuple(args.input_size) if args.input_size else None
    rows = describe_layers(args.backbone, input_size)
    if args.blocks:  # what extract.layers: blocks extracts
        from pipeline.extraction.blocks import block_layers

        by_name = {row[0]: row for row in rows}
        rows = [by_name[name] for name in block_layers(args.backbone, input_size)]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'layer':<{width}}  {'output shape':<20}  bytes/image (float32) by pooling: none | avg, max | pyramid")
    for name, shape, size in rows:
        pooled = [4 * math.prod(pooled_shape(shape, pooling)) for pooling in ("avg", "pyramid")] if len(shape) == 3 else []
        sizes = " | ".join(format_bytes(n) for n in (size, *pooled))
        print(f"{name:<{width}}  {shape!s:<20}  {sizes}")


def yaml_value(text: str) -> Any:
    """A flag's value read as params.yaml reads it: null, true, 3, 0.5, [a, b], or a plain string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a YAML value: {' '.join(str(error).split())}") from None


def yaml_text(value: Any) -> str:
    """``value`` as params.yaml spells it (null, false, 0.15, avg)."""
    return yaml.safe_dump(value).split("\n")[0]


def many_values(f: dataclasses.Field) -> bool:
    """Whether a key's flag takes several words (``--input-size H W``), named by a tuple metavar."""
    return isinstance(f.metadata.get("metavar"), tuple)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per key of the extract section, made from the config dataclasses' fields and their help texts."""
    nested = {f.name: f.metadata["help"] for f in param_fields(ExtractConfig)}
    groups = {"": parser.add_argument_group("extract", "params.yaml's extract section, one flag per key")}
    for key, f in EXTRACT_KEYS:
        section = key.rpartition(".")[0]
        if section not in groups:
            groups[section] = parser.add_argument_group(f"extract.{section}", nested[section])
        default = "the backbone's last layer" if key == "layers" else yaml_text(f.default)
        options = {"dest": key, "default": argparse.SUPPRESS, "help": f"{f.metadata['help']} (default: {default})"}
        flag = "--" + key.replace(".", "-").replace("_", "-")
        if isinstance(f.default, bool):
            groups[section].add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        else:
            metavar = f.metadata.get("metavar", f.name.upper())
            nargs = "+" if many_values(f) else None
            groups[section].add_argument(flag, type=yaml_value, metavar=metavar, nargs=nargs, **options)


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The extract keys given as flags, by dotted key (``augment.rotation``); ``--input-size null`` is one value."""
    values = {}
    for key, f in EXTRACT_KEYS:
        if hasattr(args, key):
            value = getattr(args, key)
            values[key] = value[0] if many_values(f) and len(value) == 1 else value
    return values


def has_key(mapping: Any, key: str) -> bool:
    """Whether the dotted ``key`` is set in nested ``mapping``."""
    for name in key.split("."):
        if not isinstance(mapping, Mapping) or name not in mapping:
            return False
        mapping = mapping[name]
    return True


def set_key(mapping: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` in nested ``mapping``, copying the nested mappings it changes."""
    *parents, name = key.split(".")
    for parent in parents:
        child = mapping.get(parent)
        mapping[parent] = dict(child) if isinstance(child, Mapping) else {}
        mapping = mapping[parent]
    mapping[name] = value


def default_layer(extract: Mapping[str, Any]) -> str:
    """The backbone's last block, which Keras tutorials extract: the output layer of the headless
    (``include_top=False``) keras.applications model, or a ``.keras`` file's last layer."""
    config = ExtractConfig.from_params({**extract, "layers": ["last"]})  # every other key is checked before building
    import keras

    # Automatic layer names (mobilenetv3's activation_17) count up per Keras session: describe_layers names the layer
    # as a fresh process does (`python -m pipeline layers`); leave a fresh session for the extraction's model.
    name = describe_layers(config.backbone, config.input_size)[-1][0]
    keras.backend.clear_session()
    why = (
        f"the last layer of {config.backbone}" if config.backbone.endswith(".keras")
        else f"the output of {config.backbone} without its classifier (include_top=False)"
    )
    log.info("no --layers flag or extract.layers key: extracting %s, %s, as Keras tutorials do", name, why)
    return name


def extract_settings(args: argparse.Namespace) -> tuple[DataConfig, ExtractConfig]:
    """The images and the extract config: the flags over the params file's data and extract sections, over the defaults.

    The params file is ``--params FILE`` (which must exist), else ``params.yaml`` here when there is one.
    """
    path = args.params
    if path is None and Path(DEFAULT_PARAMS).is_file():
        path = DEFAULT_PARAMS
    params = load_params(path) if path is not None else {}
    extract = check_keys("extract", params.get("extract", {}), {key.partition(".")[0] for key, _ in EXTRACT_KEYS})
    flags = flag_values(args)
    took = [f"extract.{key}" for key, _ in EXTRACT_KEYS if key not in flags and has_key(extract, key)]

    if args.images is not None:
        data = DataConfig(images=args.images, image_root=args.image_root)
    elif "data" in params:
        data = DataConfig.from_params(params["data"])
        took += [f"data.{key}" for key in params["data"] if not (key == "image_root" and args.image_root is not None)]
        if args.image_root is not None:
            data = dataclasses.replace(data, image_root=args.image_root)
    else:
        where = f"{path} has no data section" if path else f"there is no {DEFAULT_PARAMS} here"
        raise ConfigError(f"extract needs --images (an image folder or a .csv manifest): {where} to take data.images from")

    if path is None:
        log.info("no %s here: the flags and the defaults only", DEFAULT_PARAMS)
    else:
        log.info("took %s from %s (flags override them)", ", ".join(sorted(took)) or "no keys", path)

    merged = dict(extract)
    for key, value in flags.items():
        set_key(merged, key, value)
    if "layers" not in merged:
        merged["layers"] = [default_layer(merged)]
    config = ExtractConfig.from_params(merged)
    every_layer = {f.name: flags[f.name] for f in param_fields(LayerSpec) if f.name in flags}
    if every_layer:  # --pooling / --dtype apply to every layer, over its own options in params.yaml
        config = dataclasses.replace(config, layers=tuple(dataclasses.replace(s, **every_layer) for s in config.layers))
    return data, config


def cmd_extract(args: argparse.Namespace) -> None:
    data, config = extract_settings(args)  # every key is checked before TensorFlow is imported
    from pipeline.extraction.extract import run_extraction

    run_extraction(data.images, args.out, config, data.image_root)


def cmd_predict(args: argparse.Namespace) -> None:
    from pipeline.predict import format_line, predict_images, write_csv

    predictions = predict_images(args.model, args.images, top_k=args.top_k, batch_size=args.batch_size)
    if args.csv:
        write_csv(predictions, args.csv)
    else:
        for prediction in predictions:
            print(format_line(prediction))


def cmd_reuse(args: argparse.Namespace) -> None:
    from pipeline.extraction.reuse import entries, prune, reuse_folder

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
    layers.add_argument(
        "--blocks", action="store_true",
        help="only the output of every block, in depth order: what extract.layers: blocks extracts",
    )
    layers.set_defaults(func=cmd_layers)

    extract = commands.add_parser(
        "extract", help="extract features from images into an HDF5 file", description=EXTRACT_DESCRIPTION
    )
    extract.add_argument(
        "--images", help="image folder (split/class, class or flat) or a CSV manifest (default: data.images of the params file)"
    )
    extract.add_argument(
        "--image-root", help="folder that CSV paths are relative to (default: the CSV's folder; with data.images: data.image_root)"
    )
    extract.add_argument("--out", required=True, help="features file to write (.h5); its folder must exist")
    extract.add_argument(
        "--params", help=f"params file whose data and extract sections are the base (default: {DEFAULT_PARAMS} if present)"
    )
    add_config_flags(extract)
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
