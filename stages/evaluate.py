"""DVC stage evaluate: test-split metrics and plots (confusion, per-class, learning curve) for one trained classifier."""

import argparse

from pipeline.classification.evaluate import evaluate_model
from pipeline.entry import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="model directory written by the train stage")
    parser.add_argument("--features", required=True, help="features file (.h5)")
    parser.add_argument("--out", required=True, help="folder for metrics.json and the plot files")
    args = parser.parse_args()
    evaluate_model(args.model, args.features, args.out)


if __name__ == "__main__":
    run(main)
