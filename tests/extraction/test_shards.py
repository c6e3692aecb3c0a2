"""Extraction on a real Dask LocalCluster (2 processes, loopback): the same file as one process, after a killed
worker, a dead cluster, an interrupted file or a bad image."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest
from distributed import Client, LocalCluster
from synthetic import assert_same_contents, contents

from pipeline.atomic import temporary_sibling
from pipeline.config import ExtractConfig, LayerSpec
from pipeline.extraction import accelerate, write
from pipeline.extraction.dataset import read_images
from pipeline.extraction.extract import extract_features, skipped_report_path
from pipeline.extraction.shards import extract_shard, plan_shards, shard_folder

pytestmark = pytest.mark.slow  # a real Dask LocalCluster in every test

BROKEN = (10, 17, 22)  # positions of the files that are not images in the damaged manifest (43 rows, shards of 8)


@pytest.fixture(scope="module")
def scheduler():
    """A LocalCluster of 2 single-threaded worker processes on loopback, and a client to look into it."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1") as cluster:
        with Client(cluster) as client:
            yield client


@pytest.fixture(scope="module")
def damaged_csv(tmp_path_factory, digits_dir, manifest):
    """A CSV of 40 digits with three files that are not images, at positions ``BROKEN``."""
    root = tmp_path_factory.mktemp("damaged")
    rows = [(path, manifest.class_names[label], "train") for path, label in zip(manifest.paths[:40], manifest.labels)]
    for path, _, _ in rows:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(digits_dir / path, root / path)
    for position in BROKEN:
        (root / f"broken_{position}.png").write_bytes(b"not an image")
        rows.insert(position, (f"broken_{position}.png", "0", "train"))
    with (root / "images.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("filename", "label", "split"), *rows])
    return root / "images.csv"


@pytest.fixture(scope="module")
def damaged(damaged_csv):
    return read_images(damaged_csv)


def small_config(**changes) -> ExtractConfig:
    layers = (LayerSpec("conv_pw_3_relu"), LayerSpec("conv_pw_5_relu", pooling="none", dtype="float16"))
    return ExtractConfig(input_size=(32, 32), layers=layers, batch_size=4, pixels=4, shard_size=8, **changes)


@pytest.fixture(scope="module")
def single(damaged, tmp_path_factory):
    """The damaged manifest extracted in one process: the file every cluster run must reproduce."""
    return extract_features(damaged, small_config(), tmp_path_factory.mktemp("single") / "features.h5").path


def test_a_cluster_writes_the_same_file_as_one_process(features_file, manifest, extract_config, scheduler, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    config = dataclasses.replace(extract_config, cluster=scheduler.scheduler.address, shard_size=32)
    out = extract_features(manifest, config, tmp_path / "features.h5").path
    # bit for bit: the same rows in the same order, the same values, layout and provenance (config_hash included)
    assert_same_contents(contents(out), contents(features_file))
    assert skipped_report_path(out).read_text() == skipped_report_path(features_file).read_text()
    assert not shard_folder(out).exists()
    summary = re.search(r"4 of 4 shards extracted, 0 reused .* loaded (\d+) times in (\d+) worker processes", caplog.text)
    loads, processes = int(summary[1]), int(summary[2])
    assert loads == processes <= 2  # once per worker process, not once per shard


def test_on_error_fail_on_a_cluster_names_the_first_bad_file_and_writes_nothing(damaged_csv, tmp_path):
    out, params = tmp_path / "features.h5", tmp_path / "params.yaml"
    params.write_text("extract:\n  layers: [conv_pw_3_relu]\n  input_size: [32, 32]\n  batch_size: 4\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "extract", "--images", str(damaged_csv), "--out", str(out),
         "--params", str(params), "--layers", "conv_pw_3_relu", "--input-size", "32", "32",
         "--batch-size", "4", "--on-error", "fail", "--cluster", "local:2", "--shard-size", "8"],
        capture_output=True, text=True, timeout=300,
    )
    log = result.stderr
    assert result.returncode == 2, log[-3000:]
    assert "dashboard: http://127.0.0.1:" in log
    assert re.search(r"ERROR pipeline: cannot decode image \S+broken_10\.png: not an image", log.splitlines()[-1]), log[-3000:]
    assert "ImageDecodeError" not in log and "Compute Failed" not in log, log  # no traceback of it, on either side
    assert not out.exists() and not temporary_sibling(out).exists()


def test_shards_are_contiguous_runs_of_whole_batches_with_their_own_keys(damaged, tmp_path):
    shards = plan_shards(damaged, 6, 4, tmp_path / "shards", "0" * 64)  # 6 images rounded up to two batches of 4
    assert [(s.start, s.stop) for s in shards] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 43)]
    assert [p for s in shards for p in s.manifest.paths] == list(damaged.paths)
    assert [label for s in shards for label in s.manifest.labels] == damaged.labels.tolist()
    assert all(s.manifest.root.is_absolute() and s.manifest.absolute(0).is_file() for s in shards)
    assert len({s.key for s in shards}) == 6 and all(s.key.startswith("0" * 64 + ":") for s in shards)
    assert [s.path.name for s in shards[:2]] == ["shard-00000.h5", "shard-00001.h5"]


def test_a_rerun_extracts_only_the_shards_a_dead_cluster_left_missing(damaged, single, scheduler, tmp_path, caplog):
    config = small_config(cluster=scheduler.scheduler.address)
    out = tmp_path / "features.h5"
    with h5py.File(single, "r") as f:
        shards = plan_shards(damaged.hashed(), config.shard_size, config.batch_size, shard_folder(out), f.attrs["config_hash"])
    assert [(s.start, s.stop) for s in shards] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 43)]
    # what a cluster that died leaves: shards 1 and 3 complete, shard 4 half written (here: unreadable)
    compute = accelerate.resolve(config.batch_size, config.mixed_precision, config.xla)
    for index in (1, 3):
        assert extract_shard(shards[index], config, compute).extracted
    temporary_sibling(shards[4].path).write_bytes(b"killed mid-write")
    with h5py.File(shards[3].path, "r+") as f:  # marks the rows the rerun must take from the file, not recompute
        f["features/conv_pw_3_relu"][...] = -1
    caplog.set_level(logging.INFO, logger="pipeline")
    extract_features(damaged, config, out)
    assert "4 of 6 shards extracted, 2 reused from an earlier run" in caplog.text
    actual, expected = contents(out), contents(single)
    reused = np.isin(actual["paths"], [p.encode() for p in shards[3].manifest.paths])
    assert reused.sum() == 8
    assert (actual["features/conv_pw_3_relu"][reused] == -1).all()
    actual["features/conv_pw_3_relu"][reused] = expected["features/conv_pw_3_relu"][reused]
    assert_same_contents(actual, expected)  # including /skipped: broken_10, broken_17, broken_22, in order
    assert [p.decode() for p in actual["skipped/path"]] == [f"broken_{p}.png" for p in BROKEN]
    assert not shard_folder(out).exists()


def test_a_cluster_run_continues_an_interrupted_file_mid_shard(damaged, single, scheduler, tmp_path, monkeypatch, caplog):
    out = tmp_path / "features.h5"
    batches = write.iter_batches

    def stopped_at_20(*args, **kwargs):  # the single-process run is interrupted (Ctrl-C) when it reaches image 20
        for batch in batches(*args, **kwargs):
            if batch.start == 20:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(write, "iter_batches", stopped_at_20)
    with pytest.raises(KeyboardInterrupt):
        extract_features(damaged, small_config(), out)
    monkeypatch.undo()
    with h5py.File(temporary_sibling(out), "r+") as f:
        assert f["progress"][()].tolist() == [20, 18]  # images 10 and 17 skipped
        f["features/conv_pw_3_relu"][0] = -1  # marks a row the cluster run must keep, not recompute
    caplog.set_level(logging.INFO, logger="pipeline")
    extract_features(damaged, small_config(cluster=scheduler.scheduler.address), out)
    assert "20 images done, 18 rows written" in caplog.text  # 20 is inside shard [16, 24)
    actual, expected = contents(out), contents(single)
    assert (actual["features/conv_pw_3_relu"][0] == -1).all()
    actual["features/conv_pw_3_relu"][0] = expected["features/conv_pw_3_relu"][0]
    assert_same_contents(actual, expected)


def mid_shard(client: Client, folder, timeout: float = 60) -> tuple[str, str]:
    """(task key, worker address) of a shard a worker is writing, 0.2 s after its partial file appeared."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for address, keys in client.processing().items():
            for key in keys:
                index = int(key.split("-")[2])
                if temporary_sibling(folder / f"shard-{index:05d}.h5").exists():
                    time.sleep(0.2)
                    return key, address
        time.sleep(0.01)
    raise TimeoutError("no shard was being written")


def test_a_worker_killed_mid_shard_has_its_shard_run_again(manifest, scheduler, tmp_path):
    # a large input and one image per batch: a shard of 50 takes about a second, long enough to be hit half way
    config = ExtractConfig(
        input_size=(224, 224), layers=(LayerSpec("conv_pw_13_relu"),), batch_size=1, shard_size=50,
        cluster=scheduler.scheduler.address,
    )
    reference = extract_features(manifest, dataclasses.replace(config, cluster=None), tmp_path / "single.h5").path
    out = tmp_path / "features.h5"
    pids = scheduler.run(os.getpid)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(extract_features, manifest, config, out)
        key, address = mid_shard(scheduler, shard_folder(out))
        os.kill(pids[address], signal.SIGKILL)
        running.result(timeout=300)
    story = scheduler.run_on_scheduler(lambda dask_scheduler: [t[2] for t in dask_scheduler.story(key)])
    assert story.count("processing") >= 2  # sent to a worker again after the kill
    assert_same_contents(contents(out), contents(reference))
    assert not shard_folder(out).exists()


def test_a_cluster_extracts_only_the_images_an_earlier_output_lacks(features_file, manifest, extract_config, scheduler, tmp_path):
    out = tmp_path / "features.h5"
    known = [i for i in range(len(manifest)) if i % 20 != 7]  # 5 images are new to the second run
    extract_features(manifest.take(known), extract_config, out)
    out.unlink()  # as DVC does: the rows come from the copy kept for reuse
    config = dataclasses.replace(extract_config, cluster=scheduler.scheduler.address, shard_size=32)
    result = extract_features(manifest, config, out)
    assert (result.computed, result.reused) == (5, 95)
    assert not shard_folder(out).exists()
    # rows in order, all provenance equal; values up to the rounding of an image's slot in its batch
    assert_same_contents(contents(out), contents(features_file), float_rtol=1e-5)
