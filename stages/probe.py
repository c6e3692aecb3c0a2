"""DVC stage probe: a linear probe on every stored layer of the features file, as a curve of accuracy over depth."""

import argparse

from pipeline.classification.probe import run_probe
from pipeline.config import ProbeConfig, TrainConfig, load_params, section
from pipeline.entry import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", required=True, help="features file (.h5)")
    parser.add_argument("--out", required=True, help="folder for curve.json, curve.png and metrics.json")
    args = parser.parse_args()
    params = load_params()
    train = TrainConfig.from_params(section(params, "train"))  # the memory bound, shared with training
    run_probe(
        args.features, args.out, ProbeConfig.from_params(section(params, "probe")),
        memory_budget=train.memory_budget, chunk_size=train.chunk_size,
    )


if __name__ == "__main__":
    run(main)
