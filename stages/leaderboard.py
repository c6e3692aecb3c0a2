"""DVC stage leaderboard: every classifier x layer of params.yaml ranked by test accuracy (CSV, Markdown, plots)."""

import argparse

from pipeline.config import TrainConfig, load_params, section
from pipeline.entry import run
from pipeline.leaderboard import write_leaderboard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval", required=True, help="folder holding <classifier>/<layer>/metrics.json")
    parser.add_argument("--out", required=True, help="folder for leaderboard.csv, .md, .json and .png")
    args = parser.parse_args()
    params = load_params()
    layers = TrainConfig.from_params(section(params, "train")).layers
    write_leaderboard(args.eval, list(section(params, "classifiers")), layers, args.out)


if __name__ == "__main__":
    run(main)
