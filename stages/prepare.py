"""DVC stage prepare: write the built-in digits dataset as PNG files in split/class folders."""

import argparse

from pipeline.config import PrepareConfig, load_params, section
from pipeline.entry import run
from pipeline.prepare import prepare_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder to write <split>/<class>/*.png into")
    args = parser.parse_args()
    prepare_digits(args.out, PrepareConfig.from_params(section(load_params(), "prepare")))


if __name__ == "__main__":
    run(main)
