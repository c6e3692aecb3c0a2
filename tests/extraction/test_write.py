"""Tests for pipeline.extraction.write: rows are written on the writer thread while the model computes, in order."""

from __future__ import annotations

import dataclasses
import threading

import h5py
import numpy as np

from pipeline.extraction import write
from pipeline.extraction.extract import extract_features
from pipeline.store import FeatureWriter


def test_batches_are_written_on_the_writer_thread_in_manifest_order(tmp_path, manifest, extract_config, monkeypatch):
    """Batches of 8: the model runs on the calling thread and every row write on the writer thread, in order; the
    file equals one written by the default batch size (the rows are not moved by the overlap)."""
    calls, original_write, original_values = [], FeatureWriter.write, write.stored_values

    def recorded_write(self, position, features, paths, *args, **kwargs):
        calls.append(("write", threading.current_thread().name, list(paths)))
        return original_write(self, position, features, paths, *args, **kwargs)

    def recorded_values(*args, **kwargs):
        calls.append(("model", threading.current_thread().name, None))
        return original_values(*args, **kwargs)

    monkeypatch.setattr(FeatureWriter, "write", recorded_write)
    monkeypatch.setattr(write, "stored_values", recorded_values)
    config = dataclasses.replace(extract_config, batch_size=8, augment_views=0)
    out = extract_features(manifest, config, tmp_path / "features.h5").path
    monkeypatch.undo()
    reference = extract_features(manifest, dataclasses.replace(config, batch_size=32), tmp_path / "reference.h5").path

    assert {name for kind, name, _ in calls if kind == "model"} == {threading.current_thread().name}
    assert {name for kind, name, _ in calls if kind == "write"} == {"features-writer_0"}
    written = [path for kind, _, paths in calls if kind == "write" for path in paths]
    assert written == list(manifest.paths)
    assert sum(kind == "model" for kind, _, _ in calls) == -(-len(manifest) // 8)
    with h5py.File(out, "r") as f, h5py.File(reference, "r") as g:
        assert f.attrs["device_batch_size"] == 8 and g.attrs["device_batch_size"] == 32
        for name in g["features"]:
            # Another batch size runs other float32 kernels: ~1e-6 apart, which can flip the last bit of a float16
            # layer (a float16 step is 2^-10 of the value).
            rtol = 2e-3 if g["features"][name].dtype == np.float16 else 1e-4
            np.testing.assert_allclose(f["features"][name][()], g["features"][name][()], rtol=rtol, atol=1e-5)
