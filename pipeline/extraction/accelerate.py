"""Accelerator settings: GPU detection, the automatic batch size, mixed precision and XLA (no-ops on CPU)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

CPU_BATCH = 32
GPU_BATCH = 256


@dataclass(frozen=True)
class Compute:
    """What the run will actually use, after checking for a GPU."""

    gpus: int
    batch_size: int
    mixed_precision: bool
    xla: bool


def resolve(batch_size: int | str, mixed_precision: bool, xla: bool) -> Compute:
    """Turn the requested settings into effective ones; GPU-only options are logged and ignored on CPU."""
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    if batch_size == "auto":
        batch_size = GPU_BATCH if gpus else CPU_BATCH
    if not gpus:
        for flag, value in (("mixed_precision", mixed_precision), ("xla", xla)):
            if value:
                log.info("%s applies only on a GPU; no GPU found, so it is ignored (no-op on CPU)", flag)
        mixed_precision = xla = False
    log.info(
        "compute: %s, batch size %d, mixed precision %s, XLA %s",
        f"{gpus} GPU(s)" if gpus else "CPU", batch_size, mixed_precision, xla,
    )
    return Compute(gpus=gpus, batch_size=batch_size, mixed_precision=mixed_precision, xla=xla)


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
