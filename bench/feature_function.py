"""Benchmark the on-device feature function (uint8 in; cast, preprocess_input, backbone, pooling and dtype in one
compiled Keras graph) against the host path it replaced (numpy cast and preprocess_input, the raw multi-output model,
numpy pooling of the full maps): the same batch, interleaved in one process, medians of every round."""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
from common import positive

from pipeline.entry import configure_logging

log = logging.getLogger("bench.feature_function")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="mobilenet")
    parser.add_argument("--input-size", type=positive, default=224)
    parser.add_argument("--layers", default="conv_pw_13_relu", help="comma-separated, average-pooled")
    parser.add_argument("--batch-size", type=positive, default=32)
    parser.add_argument("--rounds", type=positive, default=12, help="rounds of 3 calls per path, alternating order")
    return parser.parse_args()


def main() -> None:
    import keras

    from pipeline.config import LayerSpec
    from pipeline.extraction.backbone import load_backbone
    from pipeline.extraction.graph import feature_graph

    configure_logging()
    args = parse_args()
    names = args.layers.split(",")
    backbone = load_backbone(args.backbone, "imagenet" if args.backbone == "mobilenet" else None,
                             (args.input_size, args.input_size))
    graph = feature_graph(backbone, [LayerSpec(name) for name in names], None)
    raw = keras.Model(backbone.model.inputs, [backbone.model.get_layer(name).output for name in names])
    batch = np.random.default_rng(0).integers(0, 256, (args.batch_size, *backbone.input_size, 3), dtype=np.uint8)

    def listed(outputs) -> list[np.ndarray]:
        return [np.asarray(o) for o in (outputs if isinstance(outputs, list) else [outputs])]

    def device() -> list[np.ndarray]:
        return listed(graph.predict_on_batch(batch))

    def host() -> list[np.ndarray]:
        return [o.mean(axis=(1, 2)) for o in listed(raw.predict_on_batch(backbone.preprocess(batch.astype(np.float32))))]

    for got, expected in zip(device(), host()):  # the same features, to float32 rounding
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    paths = {"on-device feature function": device, "host path (before)": host}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(2):
        for run in paths.values():
            run()
    for round_ in range(args.rounds):
        for name in (list(paths) if round_ % 2 else list(reversed(paths))):
            started = time.perf_counter()
            for _ in range(3):
                paths[name]()
            seconds[name].append((time.perf_counter() - started) / 3)
    rates = {name: args.batch_size / statistics.median(values) for name, values in seconds.items()}
    baseline = rates["host path (before)"]
    print(f"{args.backbone} at {args.input_size}, {args.layers}, batch {args.batch_size}, {args.rounds} rounds:")
    print("| path | images/s (median) | ratio to the host path |\n|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / baseline:.2f} |")


if __name__ == "__main__":
    main()
