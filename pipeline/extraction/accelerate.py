"""Accelerator settings: GPU detection, the automatic batch size (backing off on out-of-memory errors on a GPU),
mixed precision and XLA (no-ops on CPU)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.extraction.images import pad_batch

log = logging.getLogger(__name__)

CPU_BATCH = 32
GPU_BATCH = 1024  # where batch_size: auto starts on a GPU; halved on each out-of-memory error until a batch fits


class DeviceBatch:
    """The batch the device runs: ``size`` images a call, a short rest padded to ``size`` (one input shape, one
    traced function). When ``adaptive`` (``batch_size: auto`` on a GPU), an out-of-memory error halves ``size`` and
    the same images run again, in the smaller batches, for the rest of the run; each halving is logged."""

    def __init__(self, size: int, adaptive: bool = False):
        self.size, self.adaptive = size, adaptive

    def run(self, function: Callable[[np.ndarray], object], images: np.ndarray) -> list[np.ndarray]:
        """``function`` (one output or a list of them per image) on ``images`` in batches of ``size``: its outputs
        for exactly these images, as numpy arrays."""
        from tensorflow.errors import ResourceExhaustedError

        parts, start = [], 0
        while start < len(images):
            chunk = images[start : start + self.size]
            try:
                outputs = function(pad_batch(chunk, self.size))
            except ResourceExhaustedError:
                if not self.adaptive or self.size == 1:
                    raise
                self.size //= 2
                log.warning("out of device memory: batch size halved to %d", self.size)
                continue
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            parts.append([np.asarray(o)[: len(chunk)] for o in outputs])
            start += len(chunk)
        return [np.concatenate(column) if len(column) > 1 else column[0] for column in zip(*parts)]



@dataclass(frozen=True)
class Compute:
    """What the run will actually use, after checking for a GPU."""

    gpus: int
    batch_size: int
    mixed_precision: bool
    xla: bool
    adaptive: bool = False  # batch_size: auto on a GPU: back off from batch_size on out-of-memory errors

    def device_batch(self) -> DeviceBatch:
        """A fresh ``DeviceBatch`` at this batch size (one per loaded model: it remembers a back-off)."""
        return DeviceBatch(self.batch_size, self.adaptive)


def resolve(batch_size: int | str, mixed_precision: bool, xla: bool) -> Compute:
    """Turn the requested settings into effective ones; GPU-only options are logged and ignored on CPU."""
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    adaptive = batch_size == "auto" and gpus > 0
    if batch_size == "auto":
        batch_size = GPU_BATCH if gpus else CPU_BATCH
    if not gpus:
        for flag, value in (("mixed_precision", mixed_precision), ("xla", xla)):
            if value:
                log.info("%s applies only on a GPU; no GPU found, so it is ignored (no-op on CPU)", flag)
        mixed_precision = xla = False
    log.info(
        "compute: %s, batch size %d%s, mixed precision %s, XLA %s", f"{gpus} GPU(s)" if gpus else "CPU", batch_size,
        " (auto: halved on out-of-memory errors)" if adaptive else "", mixed_precision, xla,
    )
    return Compute(gpus=gpus, batch_size=batch_size, mixed_precision=mixed_precision, xla=xla, adaptive=adaptive)


@contextlib.contextmanager
def precision(mixed_precision: bool) -> Iterator[None]:
    """Build models inside the block under mixed_float16 or float32, then restore Keras's global dtype policy."""
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision else "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(before)
