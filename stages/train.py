"""DVC stage train: fit one classifier entry of params.yaml on one layer of the features file and save the model."""

import argparse

from pipeline.classification.train import train_classifier
from pipeline.config import ClassifierConfig, ExtractConfig, TrainConfig, load_params, section
from pipeline.entry import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("classifier", help="name of an entry under 'classifiers' in params.yaml")
    parser.add_argument("--layer", required=True, help="stored layer (e.g. conv_pw_7_relu, pixels), or a+b to concatenate")
    parser.add_argument("--features", required=True, help="features file (.h5)")
    parser.add_argument("--out", required=True, help="model directory to write")
    args = parser.parse_args()
    params = load_params()
    config = ClassifierConfig.from_params(section(params, "classifiers"), args.classifier, args.layer)
    train = TrainConfig.from_params(section(params, "train"))
    cluster = ExtractConfig.from_params(section(params, "extract")).cluster  # searches use the configured cluster
    train_classifier(
        args.features, config, args.out, cluster=cluster,
        memory_budget=train.memory_budget, chunk_size=train.chunk_size,
    )


if __name__ == "__main__":
    run(main)
