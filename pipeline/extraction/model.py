"""The feature model: a backbone's one-pass multi-layer ``feature_graph``, and the values a features file stores for
decoded images (pooled layer outputs, the raw-pixel downscale, augmented views). Shared by extraction and prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config import PIXELS, PYRAMID_GRIDS, ExtractConfig, LayerSpec
from pipeline.extraction import accelerate
from pipeline.extraction.augment import augment_views
from pipeline.extraction.backbone import Backbone, load_backbone


def pooled_shape(shape: tuple[int, ...], pooling: str) -> tuple[int, ...]:
    """The per-image shape ``pool`` leaves of a ``(h, w, c)`` map (or of an already flat vector)."""
    if pooling == "none" or len(shape) < 2:
        return shape
    return (sum(g * g for g in PYRAMID_GRIDS) * shape[-1],) if pooling == "pyramid" else shape[-1:]


def downscale(images: np.ndarray, side: int) -> np.ndarray:
    """The raw-pixel baseline: decoded ``(batch, h, w, 3)`` uint8 images box-filtered to ``side`` x ``side``, as
    float32 in [0, 255] (the same decoded images the backbone sees, before its preprocessing)."""
    from PIL import Image

    out = np.empty((len(images), side, side, images.shape[-1]), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((side, side), Image.BOX), dtype=np.float32)
    return out


def stored_values(
    model, device: accelerate.DeviceBatch, specs: Sequence[LayerSpec], images: np.ndarray, pixels: int | None
) -> dict[str, np.ndarray]:
    """What a features file stores for decoded uint8 ``images``, per spec name: the layer's pooled output in its
    storage dtype, or the raw-pixel downscale. ``model`` is the ``feature_graph`` of the specs other than ``pixels``,
    in order (None if there is none), run in ``device`` batches."""
    outputs = iter(device.run(model.predict_on_batch, images) if model is not None else ())
    return {spec.name: downscale(images, pixels) if spec.name == PIXELS else next(outputs) for spec in specs}


@dataclass(frozen=True)
class FeatureModel:
    """A loaded backbone, its one-pass multi-layer ``feature_graph``, the batches the device runs, and the datasets
    it fills: name -> (row shape, dtype)."""

    backbone: Backbone
    model: object
    device: accelerate.DeviceBatch
    layers: dict[str, tuple[tuple[int, ...], str]]


def load_feature_model(config: ExtractConfig, compute: accelerate.Compute) -> FeatureModel:
    """Load the backbone and build the model with an output per ``config`` layer, under ``compute``'s precision."""
    from pipeline.extraction.graph import feature_graph  # imports Keras

    with accelerate.precision(compute.mixed_precision):
        backbone = load_backbone(config.backbone, config.weights, config.input_size, preprocessing=config.preprocessing)
        model = feature_graph(backbone, config.layers, config.preprocessing, compute.xla)
    layers = {spec.name: (tuple(output.shape[1:]), spec.dtype) for spec, output in zip(config.layers, model.outputs)}
    if config.pixels is not None:
        layers[PIXELS] = ((config.pixels, config.pixels, 3), "float32")
    return FeatureModel(backbone, model, compute.device_batch(), layers)


def view_values(
    features: FeatureModel, config: ExtractConfig, images: np.ndarray, hashes: Sequence[str], train: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per stored layer, ``(len(images), K, ...)``: K augmented views of the ``train`` images (seeded by their
    content ``hashes``) through the same model; NaN rows for the others."""
    views = {
        name: np.full((len(images), config.augment_views, *shape), np.nan, dtype=np.float32)
        for name, (shape, _) in features.layers.items()
    }
    if train.any():
        chosen = np.flatnonzero(train)
        augmented = augment_views(images[chosen], [hashes[i] for i in chosen], config.augment_views, config.augment)
        for view, batch in enumerate(augmented):
            values = stored_values(features.model, features.device, config.stored_layers, batch, config.pixels)
            for name, value in values.items():
                views[name][chosen, view] = value
    return views
