"""DVC stage finetune: fine-tune one `finetune` entry of params.yaml (top backbone layers + trained head), evaluate it."""

import argparse

from pipeline.config import DataConfig, ExtractConfig, FinetuneConfig, TrainConfig, load_params, section
from pipeline.entry import run
from pipeline.finetune import run_finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="name of an entry under 'finetune' in params.yaml")
    parser.add_argument("--features", required=True, help="features file (.h5) the head was trained on")
    parser.add_argument("--images", required=True, help="data.images: the image folder or CSV the features were extracted from")
    parser.add_argument("--head", required=True, help="the trained head's model directory (data/models/<head>/<layer>)")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--eval", required=True, help="folder for the test split's metrics and plot files, by kind (<kind>/<name>.json)")
    args = parser.parse_args()
    params = load_params()
    config = FinetuneConfig.from_params(section(params, "finetune"), args.name)
    config.check_params(
        section(params, "classifiers"), TrainConfig.from_params(section(params, "train")),
        ExtractConfig.from_params(section(params, "extract")),
    )
    data = DataConfig(images=args.images, image_root=params.get("data", {}).get("image_root"))
    run_finetune(args.features, data.root, args.head, config, args.out, args.eval)


if __name__ == "__main__":
    run(main)
