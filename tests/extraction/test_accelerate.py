"""Tests for pipeline.extraction.accelerate: the effective settings on CPU, and the device batch with its
out-of-memory back-off (the error is TensorFlow's own; a real one needs a GPU, which this machine lacks)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf

from pipeline.extraction.accelerate import CPU_BATCH, DeviceBatch, resolve


def test_auto_on_cpu_is_the_fixed_cpu_batch_and_gpu_options_are_no_ops():
    compute = resolve("auto", mixed_precision=True, xla=True)
    assert (compute.gpus, compute.batch_size, compute.adaptive) == (0, CPU_BATCH, False)
    assert not compute.mixed_precision and not compute.xla
    assert resolve(7, False, False).device_batch().size == 7


class Device:
    """A function on batches that runs out of memory above ``fits`` images a call, recording each call's size."""

    def __init__(self, fits: int):
        self.fits, self.calls = fits, []

    def __call__(self, batch: np.ndarray):
        self.calls.append(len(batch))
        if len(batch) > self.fits:
            raise tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating a batch of {len(batch)}")
        return [batch * 2, batch.sum(axis=1)]


def test_a_batch_runs_padded_and_gives_back_exactly_its_rows():
    images = np.arange(20, dtype=np.float32).reshape(10, 2)
    device = Device(fits=100)
    doubled, sums = DeviceBatch(4).run(device, images)
    assert device.calls == [4, 4, 4]  # the last two images padded to a full batch: one input shape
    np.testing.assert_array_equal(doubled, images * 2)
    np.testing.assert_array_equal(sums, images.sum(axis=1))


def test_auto_halves_the_batch_on_out_of_memory_and_keeps_the_smaller_size(caplog):
    images = np.arange(40, dtype=np.float32).reshape(20, 2)
    device, batch = Device(fits=5), DeviceBatch(16, adaptive=True)
    with caplog.at_level(logging.WARNING, logger="pipeline.extraction.accelerate"):
        doubled, _ = batch.run(device, images)
    np.testing.assert_array_equal(doubled, images * 2)  # every image once, in order, after the back-off
    assert batch.size == 4 and device.calls[:3] == [16, 8, 4]
    assert [r.getMessage() for r in caplog.records] == [
        "out of device memory: batch size halved to 8", "out of device memory: batch size halved to 4",
    ]
    device.calls.clear()
    batch.run(device, images[:8])
    assert device.calls == [4, 4]  # the next batches start at the size that fitted


def test_a_fixed_batch_size_or_a_batch_of_one_reraises():
    images = np.zeros((8, 2), dtype=np.float32)
    with pytest.raises(tf.errors.ResourceExhaustedError):
        DeviceBatch(8).run(Device(fits=4), images)  # batch_size set by the user: no back-off
    with pytest.raises(tf.errors.ResourceExhaustedError):
        DeviceBatch(2, adaptive=True).run(Device(fits=0), images)
