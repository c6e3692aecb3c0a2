"""DVC stage extract: run the frozen backbone over the images and write the HDF5 features file."""

import argparse

from pipeline.config import ExtractConfig, load_params, section
from pipeline.entry import run
from pipeline.extract import run_extraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", required=True, help="image folder (<split>/<class>/, <class>/ or flat) or CSV")
    parser.add_argument("--out", required=True, help="features file to write (.h5)")
    args = parser.parse_args()
    run_extraction(args.images, args.out, ExtractConfig.from_params(section(load_params(), "extract")))


if __name__ == "__main__":
    run(main)
