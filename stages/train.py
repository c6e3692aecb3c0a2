"""DVC stage train: one classifier entry of params.yaml trained and evaluated on every train.layers entry, in one process."""

import argparse

from pipeline.classification.runner import run_classifier
from pipeline.config import ExtractConfig, TrainConfig, load_params, section
from pipeline.entry import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("classifier", help="name of an entry under 'classifiers' in params.yaml")
    parser.add_argument("--features", required=True, help="features file (.h5)")
    parser.add_argument("--models", required=True, help="folder for one model directory per train.layers entry")
    parser.add_argument("--eval", required=True, help="folder for the test split's metrics and plot files, by kind")
    parser.add_argument("--reuse", help="folder keeping earlier runs, so that unchanged pairs are copied, not trained")
    args = parser.parse_args()
    params = load_params()
    train = TrainConfig.from_params(section(params, "train"))
    cluster = ExtractConfig.from_params(section(params, "extract")).cluster  # searches use the configured cluster
    run_classifier(
        args.features, section(params, "classifiers"), args.classifier, train, args.models, args.eval,
        reuse_dir=args.reuse, cluster=cluster,
    )


if __name__ == "__main__":
    run(main)
