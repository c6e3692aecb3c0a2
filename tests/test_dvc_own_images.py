"""End to end: your own images (README, "Your own images"): one params.yaml key, data.images, and nothing of yours is
ever lost."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import h5py
import pytest
from dvc_project import copy_project, dvc, edit_params, read_json, run, sha256, stages_run, tiny_data

pytestmark = pytest.mark.slow  # real `dvc repro` runs: minutes

OWN_CLASSES = ("cat", "coffee", "rocket")


def write_photos(folder: Path, per_class: int, first: int = 0, flat: bool = False) -> list[Path]:
    """Distinct JPEG photos (crops, flips and brightness of scikit-image's real photos), a folder per class unless
    ``flat``; returns the files written."""
    import numpy as np
    from PIL import Image
    from skimage import data

    sources = {"cat": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket()}
    written = []
    for name in OWN_CLASSES:
        photo = sources[name]
        for index in range(first, first + per_class):
            rng = np.random.default_rng([OWN_CLASSES.index(name), index])
            top, left = rng.integers(0, 60, 2)
            crop = photo[top : top + 240, left : left + 320]
            crop = crop[:, ::-1] if index % 2 else crop
            crop = np.clip(crop * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
            path = folder / (f"{name}_{index:03d}.jpg" if flat else f"{name}/IMG_{index:04d}.JPG")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).resize((160, 120)).save(path, quality=90)
            written.append(path)
    return written


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its sha256 and modification time."""
    return {p.relative_to(folder).as_posix(): (sha256(p), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def feature_paths(repo: Path) -> list[str]:
    with h5py.File(repo / "data" / "features.h5", "r") as f:
        return sorted(f["paths"].asstr()[()])


def set_images(repo: Path, images: str | Path, image_root: str | Path | None = None) -> None:
    def edit(params):
        params["data"] = {"images": str(images), "image_root": None if image_root is None else str(image_root)}

    edit_params(repo, edit)


def repro_changes_nothing_twice(repo: Path) -> str:
    """`dvc repro`, then a second one that has nothing to do; returns the first one's log."""
    log = dvc("repro", cwd=repo)
    again = dvc("repro", cwd=repo)
    assert stages_run(again) == [] and "Data and pipelines are up to date." in again, again
    return log


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A copy of the project after the default `dvc repro` on the built-in digits, with a small matrix (2 classifiers
    on the last block, fine-tuning for one epoch) so that each change of data.images re-runs everything quickly."""

    def small(params):
        tiny_data(params)
        params["extract"].update(layers=["conv_pw_13_relu"], pixels=None, augment_views=0)
        params["train"]["layers"] = ["conv_pw_13_relu"]
        # dense_head: the fine-tuning entry starts from its trained head
        params["classifiers"] = {name: params["classifiers"][name] for name in ("linear_svm", "dense_head")}
        params["classifiers"]["dense_head"]["params"].update(epochs=2)
        params["finetune"]["mobilenet_top"].update(layer="conv_pw_13_relu", epochs=1)

    repo = copy_project(tmp_path_factory.mktemp("own") / "repo", small)
    assert "Running stage 'prepare'" in dvc("repro", cwd=repo)
    assert len(feature_paths(repo)) == 100 and all(p.endswith(".png") for p in feature_paths(repo))
    return repo


def test_own_photos_in_data_images_run_everything_and_stay_untouched(own, tmp_path):
    # The scenario that lost a user's photos: they filled data/images (the folder the old README named) after the
    # default run. Now they also set data.images, and every stage runs on their photos; the demo is left alone.
    photos = write_photos(own / "data" / "images", per_class=10)
    before, demo = snapshot(own / "data" / "images"), snapshot(own / "data" / "demo")
    # Exactly the old scenario first, the key not yet set: the demo's stages have nothing to do, and nothing of theirs
    # is in data/images any more, so DVC has nothing to restore over the photos.
    assert stages_run(dvc("repro", cwd=own)) == []
    assert snapshot(own / "data" / "images") == before
    set_images(own, "data/images")
    # The stages that read images see the change; the demo's prepare stage does not.
    assert sorted(json.loads(dvc("status", "--json", cwd=own))) == ["extract", "finetune@mobilenet_top"]
    log = repro_changes_nothing_twice(own)
    assert "Stage 'prepare' didn't change, skipping" in log and "Running stage 'finetune@mobilenet_top'" in log
    assert snapshot(own / "data" / "images") == before and snapshot(own / "data" / "demo") == demo
    assert feature_paths(own) == sorted(p.relative_to(own / "data" / "images").as_posix() for p in photos)
    with (own / "data" / "leaderboard" / "leaderboard.csv").open() as f:
        board = {row["classifier"]: row for row in csv.DictReader(f)}
    assert sorted(board) == ["dense_head", "linear_svm", "mobilenet_top (fine-tuned)"]
    model = read_json(own / "data" / "models" / "linear_svm" / "conv_pw_13_relu" / "model.json")
    assert model["class_names"] == list(OWN_CLASSES)
    # Predict on new photos with the trained model, as the README shows.
    [new] = write_photos(tmp_path / "new", per_class=1, first=50, flat=True)[:1]
    out = run([sys.executable, "-m", "pipeline", "predict", "--model", "data/models/linear_svm/conv_pw_13_relu", str(new)], own)
    assert re.search(rf"{re.escape(str(new))}: (cat|coffee|rocket) \(", out), out
    assert snapshot(own / "data" / "images") == before
    assert "data/images" not in run(["git", "status", "--porcelain", "--untracked-files=all"], own)


def test_own_folder_outside_the_project_by_absolute_path(own, tmp_path):
    folder = tmp_path / "My Photos"  # outside the project, with a space in its name
    photos = write_photos(folder, per_class=8, first=100)
    before = snapshot(folder)
    set_images(own, folder)
    log = repro_changes_nothing_twice(own)
    assert "Running stage 'extract'" in log and "Running stage 'leaderboard'" in log
    assert snapshot(folder) == before
    assert feature_paths(own) == sorted(p.relative_to(folder).as_posix() for p in photos)
    with h5py.File(own / "data" / "features.h5", "r") as f:
        assert f.attrs["image_root"] == str(folder)
    # A growing dataset: new photos re-run extraction, which computes only them.
    added = write_photos(folder, per_class=1, first=200)
    log = dvc("repro", "-s", "extract", cwd=own)
    assert f"{len(photos)} rows reused from earlier extractions, {len(added)} images computed" in log
    now = snapshot(folder)
    assert {name: now[name] for name in before} == before and len(now) == len(photos) + len(added)


def test_a_csv_manifest_through_the_same_key(own, tmp_path):
    root = tmp_path / "shoot"
    photos = write_photos(root / "jpegs", per_class=8, first=300, flat=True)
    manifest = tmp_path / "labels" / "labels.csv"  # outside the image folder: data.image_root says where that is
    manifest.parent.mkdir()
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label", "split"])  # 24 photos are too few to rely on content splits for a test set
        writer.writerows(
            (p.relative_to(root).as_posix(), p.name.split("_")[0], ("train", "train", "train", "val", "test")[i % 5])
            for i, p in enumerate(photos)
        )
    before = snapshot(tmp_path)
    set_images(own, manifest, image_root=root)
    log = repro_changes_nothing_twice(own)
    assert "Running stage 'extract'" in log and "Running stage 'finetune@mobilenet_top'" in log
    assert snapshot(tmp_path) == before
    assert feature_paths(own) == sorted(p.relative_to(root).as_posix() for p in photos)
