"""The feature model: a backbone's one-pass multi-layer model, and the values a features file stores for decoded
images (pooled layer outputs, the raw-pixel downscale, augmented views). Shared by extraction and prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config import PIXELS, PYRAMID_GRIDS, ExtractConfig, LayerSpec
from pipeline.extraction import accelerate
from pipeline.extraction.augment import augment_views
from pipeline.extraction.backbone import Backbone, load_backbone
from pipeline.extraction.images import pad_batch
from pipeline.validation import invalid


def pool(values: np.ndarray, pooling: str) -> np.ndarray:
    """Spatial pooling of ``(batch, h, w, c)`` maps: ``none`` keeps them, ``avg``/``max`` reduce h and w, ``pyramid``
    averages over each cell of 1x1, 2x2 and 4x4 grids (``pyramid_pool``)."""
    if pooling == "none" or values.ndim < 3:
        return values
    if pooling == "pyramid":
        return pyramid_pool(values)
    axes = tuple(range(1, values.ndim - 1))
    return values.mean(axis=axes) if pooling == "avg" else values.max(axis=axes)


def grid_cells(length: int, cells: int) -> list[tuple[int, int]]:
    """``cells`` spans over ``length`` positions, ``[floor(i*length/cells), ceil((i+1)*length/cells))`` as PyTorch's
    adaptive pooling takes them: they cover every position, overlap by at most one, and none is empty, even when
    ``length < cells``."""
    return [(i * length // cells, -(-(i + 1) * length // cells)) for i in range(cells)]


def pyramid_pool(maps: np.ndarray) -> np.ndarray:
    """Spatial pyramid pooling of ``(batch, h, w, c)`` maps: the mean over each cell of a g x g grid for g in
    ``PYRAMID_GRIDS``, concatenated grid by grid, cells in row-major order, channels last: ``(batch, 21 * c)``."""
    height, width = maps.shape[1:3]
    parts = []
    for g in PYRAMID_GRIDS:
        for top, bottom in grid_cells(height, g):
            for left, right in grid_cells(width, g):
                parts.append(maps[:, top:bottom, left:right].mean(axis=(1, 2)))
    return np.concatenate(parts, axis=1)


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


def run_batch(model, batch: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """One forward pass in float32 outputs; a short batch is padded to ``batch_size`` so every call has one shape."""
    n = len(batch)
    outputs = model.predict_on_batch(pad_batch(batch, batch_size))
    return [np.asarray(o[:n], dtype=np.float32) for o in (outputs if isinstance(outputs, list) else [outputs])]


def batch_features(model, backbone: Backbone, images: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The backbone's preprocess_input on decoded uint8 images, then one forward pass (outputs per layer)."""
    return run_batch(model, backbone.preprocess(images.astype(np.float32)), batch_size)


def stored_values(
    model, backbone: Backbone, specs: Sequence[LayerSpec], images: np.ndarray, batch_size: int, pixels: int | None
) -> dict[str, np.ndarray]:
    """What a features file stores for decoded uint8 ``images``, per spec name: the layer's pooled output, or the
    raw-pixel downscale. ``model`` has one output per spec other than ``pixels``, in order (None if there is none)."""
    outputs = iter(batch_features(model, backbone, images, batch_size) if model is not None else ())
    return {
        spec.name: downscale(images, pixels) if spec.name == PIXELS else pool(next(outputs), spec.pooling)
        for spec in specs
    }


@dataclass(frozen=True)
class FeatureModel:
    """A loaded backbone, its one-pass multi-layer model, and the datasets it fills: name -> (row shape, dtype)."""

    backbone: Backbone
    model: object
    layers: dict[str, tuple[tuple[int, ...], str]]


def load_feature_model(config: ExtractConfig, compute: accelerate.Compute) -> FeatureModel:
    """Load the backbone and build the model with an output per ``config`` layer, under ``compute``'s precision."""
    with accelerate.precision(compute.mixed_precision):
        backbone = load_backbone(config.backbone, config.weights, config.input_size, preprocessing=config.preprocessing)
        model = backbone.feature_model(config.layer_names)
    if compute.xla:
        model.compile(jit_compile=True)
    layers = {
        spec.name: (pooled_shape(tuple(output.shape[1:]), spec.pooling), spec.dtype)
        for spec, output in zip(config.layers, model.outputs)
    }
    for spec, output in zip(config.layers, model.outputs):
        if spec.pooling == "pyramid" and len(output.shape) != 4:
            raise invalid(f"extract.layers.{spec.name}.pooling", spec.pooling,
                          f"one of ['avg', 'max', 'none'] for a layer without (height, width, channels) maps: "
                          f"{spec.name} gives {tuple(output.shape[1:])}")
    if config.pixels is not None:
        layers[PIXELS] = ((config.pixels, config.pixels, 3), "float32")
    return FeatureModel(backbone, model, layers)


def view_values(
    features: FeatureModel, config: ExtractConfig, batch_size: int, images: np.ndarray, hashes: Sequence[str],
    train: np.ndarray,
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
            values = stored_values(
                features.model, features.backbone, config.stored_layers, batch, batch_size, config.pixels
            )
            for name, value in values.items():
                views[name][chosen, view] = value
    return views
