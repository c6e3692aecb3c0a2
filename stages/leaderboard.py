"""DVC stage leaderboard: every classifier x layer and fine-tuned model of params.yaml ranked by test accuracy, and the
linear probe's best block."""

import argparse

from pipeline.classification.leaderboard import augmented_twins, write_leaderboard
from pipeline.config import FinetuneConfig, TrainConfig, load_params, section
from pipeline.entry import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--eval", required=True, help="folder holding <classifier>/metrics/<layer>.json and finetune/metrics/<name>.json"
    )
    parser.add_argument("--probe", help="the probe stage's metrics.json, whose best block the leaderboard names")
    parser.add_argument("--out", required=True, help="folder for leaderboard.csv, .md, .json and .png")
    args = parser.parse_args()
    params = load_params()
    layers = TrainConfig.from_params(section(params, "train")).layers
    runs = FinetuneConfig.all_from_params(params.get("finetune"))
    classifiers = section(params, "classifiers")
    write_leaderboard(
        args.eval, list(classifiers), layers, args.out, {name: config.layer for name, config in runs.items()},
        augmented=augmented_twins(classifiers), heads={name: config.head for name, config in runs.items()},
        probe=args.probe,
    )


if __name__ == "__main__":
    run(main)
