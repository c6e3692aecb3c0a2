"""Feature extraction: values equal Keras's own pipeline, HDF5 layout and provenance, pooling, and failure safety."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from synthetic import assert_same_contents, contents

from pipeline.atomic import temporary_sibling
from pipeline.config import AugmentConfig, ExtractConfig, LayerSpec, PrepareConfig
from pipeline.extraction import extract
from pipeline.extraction.accelerate import Compute
from pipeline.extraction.dataset import Manifest, read_images
from pipeline.extraction.extract import extract_features, skipped_report_path
from pipeline.extraction.images import ImageDecodeError
from pipeline.extraction.provenance import provenance
from pipeline.extraction.weights import SOURCE
from pipeline.prepare import prepare_digits
from pipeline.validation import ConfigError, UserError

ROWS = [0, 33, 71, 99]  # a few images from different splits and classes


def keras_reference(backbone, layer_names, image_paths, size):
    """Keras's own load_img -> img_to_array -> preprocess_input -> intermediate layer outputs, unpooled."""
    batch = np.stack(
        [keras.utils.img_to_array(keras.utils.load_img(p, target_size=size, interpolation="bilinear")) for p in image_paths]
    )
    model = keras.Model(backbone.model.input, [backbone.model.get_layer(n).output for n in layer_names])
    return model.predict_on_batch(keras.applications.mobilenet.preprocess_input(batch))


def test_stored_features_equal_keras_reference(features_file, extract_config, mobilenet, digits_dir):
    names = extract_config.layer_names
    with h5py.File(features_file, "r") as f:
        assert f.attrs["weights_sha256"] == mobilenet.weights_sha256
        paths = [digits_dir / f["paths"].asstr()[i] for i in ROWS]
        stored = {name: f["features"][name][ROWS] for name in names}
    avg_out, none_out = keras_reference(mobilenet, names, paths, extract_config.input_size)
    assert [spec.pooling for spec in extract_config.layers] == ["avg", "none"]
    np.testing.assert_allclose(stored["conv_pw_5_relu"], avg_out.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)
    assert stored["conv_pw_13_relu"].dtype == np.float16
    np.testing.assert_allclose(stored["conv_pw_13_relu"].astype(np.float32), none_out, rtol=1e-3, atol=1e-4)
    assert np.abs(none_out).max() > 0.1  # the comparison is not between two arrays of zeros


def test_pixels_are_the_decoded_image_box_downscaled(features_file, extract_config, digits_dir):
    with h5py.File(features_file, "r") as f:
        paths = [digits_dir / f["paths"].asstr()[i] for i in ROWS]
        stored = f["features/pixels"][ROWS]
    for path, pixels in zip(paths, stored):
        decoded = keras.utils.load_img(path, target_size=extract_config.input_size, interpolation="bilinear")
        # 64x64 -> 8x8 is a whole factor, so a box filter is the mean of each 8x8 block
        blocks = keras.utils.img_to_array(decoded).reshape(8, 8, 8, 8, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(pixels, blocks, atol=1.0)  # PIL rounds the box mean to uint8 (fixed point)
    assert stored.std() > 10  # images, not a constant


def test_rows_and_labels_align_with_the_manifest(features_file, manifest, digits_dir):
    with h5py.File(features_file, "r") as f:
        paths = list(f["paths"].asstr()[()])
        assert paths == list(manifest.paths)
        assert list(f["split"].asstr()[()]) == list(manifest.splits)
        np.testing.assert_array_equal(f["labels"][()], manifest.labels)
    assert not any(p.startswith("/") for p in paths)
    assert all((digits_dir / p).is_file() for p in paths)
    assert {p.split("/")[0] for p in paths} == {"train", "val", "test"}


def test_feature_datasets_have_row_shapes_and_row_chunks(features_file, manifest):
    expected = {
        "conv_pw_5_relu": ((256,), np.float32), "conv_pw_13_relu": ((2, 2, 1024), np.float16),
        "pixels": ((8, 8, 3), np.float32),
    }
    with h5py.File(features_file, "r") as f:
        assert set(f["features"]) == set(expected)
        for name, (row_shape, dtype) in expected.items():
            dataset = f["features"][name]
            assert dataset.shape == (len(manifest), *row_shape)
            assert dataset.dtype == dtype
            assert dataset.chunks is not None
            assert dataset.chunks[1:] == row_shape
            assert 1 <= dataset.chunks[0] <= len(manifest)


def test_provenance_attributes(features_file, manifest, mobilenet):
    with h5py.File(features_file, "r") as f:
        attrs = dict(f.attrs)
    assert attrs["complete"] is np.True_
    assert attrs["n_rows"] == len(manifest)
    assert attrs["backbone"] == "mobilenet"
    assert attrs["weights"] == "imagenet"
    assert attrs["weights_source"] == SOURCE
    assert attrs["weights_sha256"] == mobilenet.weights_sha256
    assert json.loads(attrs["input_size"]) == [64, 64]
    assert attrs["interpolation"] == "bilinear"
    assert attrs["preprocessing"] == "keras.applications.mobilenet.preprocess_input"
    assert json.loads(attrs["class_names"]) == [str(d) for d in range(10)]
    assert json.loads(attrs["layers"]) == ["conv_pw_5_relu", "conv_pw_13_relu", "pixels"]
    assert json.loads(attrs["pooling"]) == {"conv_pw_5_relu": "avg", "conv_pw_13_relu": "none", "pixels": "none"}
    assert json.loads(attrs["dtype"]) == {"conv_pw_5_relu": "float32", "conv_pw_13_relu": "float16", "pixels": "float32"}
    assert attrs["pixels"] == 8
    assert attrs["image_root"] == str(manifest.root)
    versions = json.loads(attrs["versions"])
    assert versions["tensorflow"] == tf.__version__
    assert versions["keras"] == keras.__version__
    assert versions["h5py"] == h5py.__version__
    assert re.fullmatch(r"[0-9a-f]{64}", attrs["config_hash"])


def test_config_hash_tracks_feature_settings_not_batch_size(features_file, extract_config, mobilenet, manifest):
    with h5py.File(features_file, "r") as f:
        stored = f.attrs["config_hash"]
    same = dataclasses.replace(extract_config, batch_size=5)
    resized = dataclasses.replace(extract_config, interpolation="bicubic")
    pooled = dataclasses.replace(extract_config, layers=(LayerSpec("conv_pw_5_relu", "max"), *extract_config.layers[1:]))
    cpu = Compute(gpus=0, batch_size=5, mixed_precision=False, xla=False)
    assert provenance(same, mobilenet, manifest, cpu)["config_hash"] == stored
    assert provenance(resized, mobilenet, manifest, cpu)["config_hash"] != stored
    assert provenance(pooled, mobilenet, manifest, cpu)["config_hash"] != stored


def test_batch_size_does_not_change_features(features_file, manifest, extract_config, tmp_path):
    assert extract_config.batch_size == 16
    other = extract_features(manifest, dataclasses.replace(extract_config, batch_size=7), tmp_path / "b7.h5").path
    with h5py.File(features_file, "r") as a, h5py.File(other, "r") as b:
        assert a.attrs["config_hash"] == b.attrs["config_hash"]
        for spec in extract_config.layers:
            # float32 rounding differences between batch shapes may flip the last bit of a float16 value
            rtol, atol = (1e-3, 1e-4) if spec.dtype == "float16" else (1e-5, 1e-6)
            np.testing.assert_allclose(b["features"][spec.name][()], a["features"][spec.name][()], rtol=rtol, atol=atol)


def small_config(*layers: str, batch_size: int = 4, on_error: str = "fail") -> ExtractConfig:
    return ExtractConfig(
        input_size=(32, 32), layers=tuple(LayerSpec(n) for n in layers), batch_size=batch_size, on_error=on_error
    )


def make_manifest(root, digits_dir, manifest, n_good: int, broken: str | None) -> Manifest:
    """Copy ``n_good`` digits under ``root`` and append a file that is not an image, named ``broken``."""
    paths = list(manifest.paths[:n_good])
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(digits_dir / p, root / p)
    if broken:
        (root / broken).parent.mkdir(parents=True, exist_ok=True)
        (root / broken).write_bytes(b"this is not a PNG file")
        paths.append(broken)
    labels = np.zeros(len(paths), dtype=np.int64)
    return Manifest(root, tuple(paths), labels, ("train",) * len(paths), ("0",))


def test_unknown_layer_fails_before_reading_images(tmp_path, digits_dir, manifest):
    bad = make_manifest(tmp_path / "images", digits_dir, manifest, 0, "train/0/not_an_image.png")
    out = tmp_path / "features.h5"
    pattern = (
        r"^extract.layers must be layer names of mobilenet \(valid: .*\); 'conv_pw_13_rellu' is not one. "
        r"Received: extract.layers=\['conv_pw_13_rellu'\] Did you mean 'conv_pw_13_relu'\?$"
    )
    with pytest.raises(ConfigError, match=pattern):
        extract_features(bad, small_config("conv_pw_13_rellu"), out)
    assert not out.exists()
    assert not temporary_sibling(out).exists()


def test_on_error_fail_stops_at_the_bad_file_and_leaves_no_final_file(tmp_path, digits_dir, manifest):
    bad = make_manifest(tmp_path / "images", digits_dir, manifest, 21, "train/0/zz_broken.png")
    out = tmp_path / "features.h5"
    with pytest.raises(ImageDecodeError, match=r"cannot decode image .*zz_broken\.png"):
        extract_features(bad, small_config("conv_pw_1_relu", batch_size=4), out)
    assert not out.exists()
    assert temporary_sibling(out).exists()  # the 20 good rows before it are kept for a resumed run


def test_decode_error_leaves_a_previous_file_untouched(tmp_path, digits_dir, manifest):
    bad = make_manifest(tmp_path / "images", digits_dir, manifest, 5, "train/0/zz_broken.png")
    out = tmp_path / "features.h5"
    extract_features(manifest, small_config("conv_pw_1_relu", batch_size=64), out)
    previous = out.read_bytes()
    with pytest.raises(ImageDecodeError, match="zz_broken"):
        extract_features(bad, small_config("conv_pw_1_relu", batch_size=2), out)
    assert out.read_bytes() == previous


def test_on_error_skip_drops_bad_rows_and_reports_them(tmp_path, digits_dir, manifest):
    bad = make_manifest(tmp_path / "images", digits_dir, manifest, 9, "train/0/zz_broken.png")
    out = tmp_path / "features.h5"
    extract_features(bad, small_config("conv_pw_1_relu", batch_size=4, on_error="skip"), out)
    with h5py.File(out, "r") as f:
        assert f["features/conv_pw_1_relu"].shape[0] == f["paths"].shape[0] == 9
        assert "train/0/zz_broken.png" not in f["paths"].asstr()[()].tolist()
        assert f.attrs["n_rows"] == 9
    with skipped_report_path(out).open() as report:
        rows = list(csv.DictReader(report))
    assert [row["path"] for row in rows] == ["train/0/zz_broken.png"]
    assert "not an image" in rows[0]["reason"]


def test_gpu_options_are_logged_no_ops_on_cpu(tmp_path, manifest, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.extraction.accelerate")
    config = dataclasses.replace(small_config("conv_pw_1_relu"), mixed_precision=True, xla=True)
    out = extract_features(manifest, config, tmp_path / "f.h5").path
    assert "mixed_precision applies only on a GPU" in caplog.text and "xla applies only on a GPU" in caplog.text
    with h5py.File(out, "r") as f:
        assert not f.attrs["mixed_precision"] and not f.attrs["xla"]
        assert f["features/conv_pw_1_relu"].dtype == np.float32


@pytest.fixture(scope="module")
def many_digits(tmp_path_factory):
    """All 1,797 digits, enough for an extraction that can be killed half way."""
    root = tmp_path_factory.mktemp("many") / "images"
    prepare_digits(root, PrepareConfig(image_size=16))
    return root


@pytest.fixture(scope="module")
def cli_params(tmp_path_factory):
    """A params.yaml whose extract section the command-line tests run (their flags say the same)."""
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text("extract:\n  layers: [conv_pw_5_relu]\n  input_size: [64, 64]\n  batch_size: 16\n")
    return path


def cli_extract(images, out, params, *, at: int | None = None, then=None, status: int = 0) -> str:
    """Run `python -m pipeline extract` and return its log; once its progress bar passes ``at`` images, call
    ``then(process)`` (kill it, fill its disk). Checks the exit ``status``."""
    args = [sys.executable, "-m", "pipeline", "extract", "--images", str(images), "--out", str(out),
            "--params", str(params), "--layers", "conv_pw_5_relu", "--input-size", "64", "64", "--batch-size", "16"]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    log = b""
    while chunk := os.read(process.stderr.fileno(), 4096):
        log += chunk
        done = [int(n) for n in re.findall(rb"extract: [^\r\n]*?(\d+)/1797 \[", log)]
        if at is not None and done and done[-1] >= at:
            then(process)
            at = None
    process.wait()
    assert process.returncode == status, log.decode()[-2000:]
    return log.decode()


def kill(process) -> None:
    process.send_signal(signal.SIGKILL)


@pytest.fixture(scope="module")
def uninterrupted(many_digits, cli_params, tmp_path_factory):
    """The digits extracted by one uninterrupted command: what every interrupted and resumed run must write."""
    out = tmp_path_factory.mktemp("uninterrupted") / "features.h5"
    cli_extract(many_digits, out, cli_params)
    return out


@pytest.mark.slow
def test_killed_extraction_resumes_and_equals_an_uninterrupted_run(many_digits, cli_params, uninterrupted, tmp_path):
    out = tmp_path / "resumed.h5"
    cli_extract(many_digits, out, cli_params, at=600, then=kill, status=-signal.SIGKILL)
    assert not out.exists() and temporary_sibling(out).exists()
    log = cli_extract(many_digits, out, cli_params)
    done = int(re.search(r"resuming .*: (\d+) images done", log).group(1))
    assert 600 <= done < 1797
    assert_same_contents(contents(out), contents(uninterrupted))
    assert out.read_bytes() == uninterrupted.read_bytes()


@pytest.mark.slow
def test_a_changed_config_discards_the_partial_work(many_digits, cli_params, tmp_path, caplog):
    out = tmp_path / "f.h5"
    cli_extract(many_digits, out, cli_params, at=100, then=kill, status=-signal.SIGKILL)
    manifest = read_images(many_digits)
    extract_features(manifest, small_config("conv_pw_1_relu", batch_size=64), out)
    assert "discarding partial work" in caplog.text
    with h5py.File(out, "r") as f:
        assert list(f["features"]) == ["conv_pw_1_relu"] and f.attrs["n_rows"] == 1797


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc, a folder where no file can be created")
def test_an_output_folder_that_cannot_be_written_fails_before_the_model_loads(manifest, monkeypatch):
    def no_model(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(extract, "load_feature_model", no_model)
    pattern = r"^cannot write /proc/x\.h5: no file can be created in /proc \(No such file or directory\)$"
    with pytest.raises(UserError, match=pattern):
        extract_features(manifest, small_config("conv_pw_1_relu"), "/proc/x.h5")


def test_a_missing_output_folder_fails_before_the_model_loads(manifest, monkeypatch, tmp_path):
    def no_model(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(extract, "load_feature_model", no_model)
    out = tmp_path / "typo" / "x.h5"
    with pytest.raises(UserError, match=rf"^cannot write {out}: its folder {out.parent} does not exist; create it first$"):
        extract_features(manifest, small_config("conv_pw_1_relu"), out)
    assert not out.parent.exists()


@pytest.mark.parametrize("content", [b"my thesis, not a features file", "hdf5"])
def test_a_file_the_pipeline_did_not_write_is_never_replaced(manifest, monkeypatch, tmp_path, content):
    def no_model(*args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(extract, "load_feature_model", no_model)
    out = tmp_path / "precious.h5"
    if content == "hdf5":
        with h5py.File(out, "w") as f:
            f["mine"] = np.arange(3)
    else:
        out.write_bytes(content)
    before = out.read_bytes()
    with pytest.raises(UserError, match=rf"^refusing to replace {out}: it is not a features file this pipeline wrote"):
        extract_features(manifest, small_config("conv_pw_1_relu"), out)
    assert out.read_bytes() == before


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc, a folder where no file can be created")
def test_the_command_line_says_so_in_one_line_and_exits_2(digits_dir, cli_params):
    log = cli_extract(digits_dir, "/proc/x.h5", cli_params, status=2)
    message = "ERROR pipeline: cannot write /proc/x.h5: no file can be created in /proc (No such file or directory)"
    assert log.strip().splitlines()[-1].endswith(message)
    assert "extracting" not in log and "Traceback" not in log


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a real file system of ``size`` ("64k", "4m"): a tmpfs mounted under ``tmp_path`` (root
    only; the test is skipped where mounting is not allowed), unmounted at teardown."""
    mounted = []

    def mount(size: str):
        folder = tmp_path / f"disk-{len(mounted)}"
        folder.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command to make a small file system with")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (it needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_a_disk_without_room_for_the_file_is_refused_before_the_first_batch(many_digits, cli_params, small_disk):
    disk = small_disk("256k")
    out = disk / "features.h5"
    log = cli_extract(many_digits, out, cli_params, status=2)
    message = log.strip().splitlines()[-1]
    assert re.fullmatch(
        rf".* ERROR pipeline: not enough disk space to write {re.escape(str(out))}: it needs 2\.\d MiB, and "
        rf"{re.escape(str(disk))} has 256\.0 KiB free", message,
    ), message
    assert not re.search(r"extract: +\d+%", log)  # no progress bar: no batch began
    assert list(disk.iterdir()) == []


@pytest.mark.slow
def test_a_disk_that_fills_up_stops_the_run_and_the_same_command_resumes(
    many_digits, cli_params, uninterrupted, small_disk
):
    disk = small_disk("4m")  # the file needs 2.2 MiB
    out, filler = disk / "features.h5", disk / "filler"

    def fill(process):  # another process takes the rest of the disk
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, bytes(1 << 16)):
                pass
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(fd)

    log = cli_extract(many_digits, out, cli_params, at=300, then=fill, status=2)
    message = log.strip().splitlines()[-1]
    assert re.fullmatch(
        rf".* ERROR pipeline: cannot write {re.escape(str(out))}: no space left on device \([\d.]+ [KMG]?i?B free\); "
        rf"the work done so far is kept in {re.escape(str(temporary_sibling(out)))}: free some space and run the "
        rf"same command again to resume it", message,
    ), message
    assert temporary_sibling(out).exists() and not out.exists()
    filler.unlink()
    log = cli_extract(many_digits, out, cli_params)
    # an uncompressed file is allocated in full when it is created: the run stops at its first write outside it
    assert 300 <= int(re.search(r"resuming .*: (\d+) images done", log).group(1)) <= 1797
    assert_same_contents(contents(out), contents(uninterrupted))
    assert out.read_bytes() == uninterrupted.read_bytes()
    assert sorted(p.name for p in disk.iterdir()) == [".features.h5.reuse", "features.h5", "features.skipped.csv"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four real photos from scikit-image as JPEG files of different sizes, in an unlabelled folder."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).save(root / f"{name}.jpg", quality=90)
    return root


@pytest.mark.parametrize(
    ("backbone", "weights", "size", "layers"),
    [
        # genuine ImageNet weights
        ("mobilenet", "imagenet", (96, 96), {"conv_pw_3_relu": "none", "conv_pw_13_relu": "avg"}),
        # random weights (NOT pretrained): the equality holds whatever the weights, and VGG16 has no offline ImageNet copy
        ("vgg16", None, (64, 64), {"block3_pool": "none", "block5_pool": "avg"}),
    ],
)
def test_photos_match_keras_reference_for_two_backbones(photos, tmp_path, backbone, weights, size, layers):
    from pipeline.extraction.backbone import load_backbone

    if weights is None:  # one random draw, saved, so the pipeline and the reference use the same weights
        weights = str(tmp_path / f"{backbone}.weights.h5")
        load_backbone(backbone, None, size).model.save_weights(weights)
    config = ExtractConfig(
        backbone=backbone, weights=weights, input_size=size, batch_size=3, decode="exact",  # load_img decodes whole
        layers=tuple(LayerSpec(name, pooling) for name, pooling in layers.items()),
    )
    manifest = read_images(photos)
    out = extract_features(manifest, config, tmp_path / "f.h5").path
    model = load_backbone(backbone, weights, size).model
    reference = keras_reference_model(model, list(layers))
    module = {"mobilenet": keras.applications.mobilenet, "vgg16": keras.applications.vgg16}[backbone]
    batch = np.stack([
        keras.utils.img_to_array(keras.utils.load_img(photos / p, target_size=size, interpolation="bilinear"))
        for p in manifest.paths
    ])
    expected = reference.predict_on_batch(module.preprocess_input(batch))
    with h5py.File(out, "r") as f:
        assert f.attrs["backbone"] == backbone and f["split"].asstr()[0] == "unlabelled"
        for (name, pooling), values in zip(layers.items(), expected):
            want = values.mean(axis=(1, 2)) if pooling == "avg" else values
            np.testing.assert_allclose(f["features"][name][()], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def keras_reference_model(model, names):
    """Keras's own multi-output model on the backbone: Model(inputs, [layer.output, ...])."""
    return keras.Model(model.input, [model.get_layer(name).output for name in names])


def test_views_are_seeded_per_image_and_stored_beside_the_clean_features(views_file, manifest, extract_config, tmp_path):
    with h5py.File(views_file, "r") as f:
        train = f["split"].asstr()[()] == "train"
        views, clean = f["views/conv_pw_5_relu"][()], f["features/conv_pw_5_relu"][()]
        assert views.shape == (len(clean), 2, *clean.shape[1:])
        assert not np.isnan(views[train]).any() and np.isnan(views[~train]).all()  # views of train images only
        assert not np.isclose(views[train, 0], clean[train]).all(axis=1).any()  # every view differs from its image
        assert json.loads(f.attrs["augment"]) == {"flip": "none", "rotation": 15.0, "crop": 0.8, "seed": 5}
        assert f.attrs["augment_views"] == 2
        pixels = f["views/pixels"][()]
    # the same seed gives the same views, whatever the batch size; another seed other views
    config = dataclasses.replace(
        extract_config, augment_views=2, augment=AugmentConfig(rotation=15, crop=0.8, seed=5), batch_size=7
    )
    again = extract_features(manifest, config, tmp_path / "again.h5").path
    other = extract_features(
        manifest, dataclasses.replace(config, augment=AugmentConfig(rotation=15, crop=0.8, seed=6)), tmp_path / "o.h5"
    ).path
    with h5py.File(again, "r") as a, h5py.File(other, "r") as b:
        np.testing.assert_array_equal(a["views/pixels"][()], pixels)  # bit for bit (no float kernels involved)
        np.testing.assert_allclose(a["views/conv_pw_5_relu"][()], views, rtol=1e-5, atol=1e-5)
        assert not np.allclose(b["views/pixels"][train], pixels[train])
