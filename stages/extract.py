"""DVC stage extract: run the frozen backbone over the images of params.yaml's `data` section into the HDF5 features file."""

import argparse

from pipeline.config import DataConfig, ExtractConfig, load_params, section
from pipeline.entry import run
from pipeline.extraction.extract import run_extraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", required=True, help="data.images: an image folder (<split>/<class>/, <class>/ or flat) or a CSV")
    parser.add_argument("--out", required=True, help="features file to write (.h5)")
    args = parser.parse_args()
    params = load_params()
    data = DataConfig(images=args.images, image_root=params.get("data", {}).get("image_root"))
    run_extraction(data.images, args.out, ExtractConfig.from_params(section(params, "extract")), data.image_root)


if __name__ == "__main__":
    run(main)
