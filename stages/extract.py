"""DVC stage extract: run the frozen backbone over the image folder and write the HDF5 features file."""

import argparse

from pipeline.config import ExtractConfig, load_params, section
from pipeline.dataset import read_split_folders
from pipeline.entry import run
from pipeline.extract import extract_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", required=True, help="image folder laid out as <split>/<class>/<file>")
    parser.add_argument("--out", required=True, help="features file to write (.h5)")
    args = parser.parse_args()
    config = ExtractConfig.from_params(section(load_params(), "extract"))
    extract_features(read_split_folders(args.images), config, args.out)


if __name__ == "__main__":
    run(main)
