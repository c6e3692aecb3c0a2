"""The on-device feature function: uint8 images in; the cast, preprocess_input, backbone, each layer's pooling and
its storage dtype in one Keras graph, run as one compiled function, shared by extraction, prediction and fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from pipeline.config import PYRAMID_GRIDS, LayerSpec
from pipeline.extraction.backbone import Backbone, preprocessor
from pipeline.validation import invalid

PACKAGE = "bottleneck"  # the Keras registration package of these layers, as saved in a fine-tuned model's config


def grid_cells(length: int, cells: int) -> list[tuple[int, int]]:
    """``cells`` spans over ``length`` positions, ``[floor(i*length/cells), ceil((i+1)*length/cells))`` as PyTorch's
    adaptive pooling takes them: they cover every position, overlap by at most one, and none is empty, even when
    ``length < cells``."""
    return [(i * length // cells, -(-(i + 1) * length // cells)) for i in range(cells)]


@keras.saving.register_keras_serializable(package=PACKAGE)
class Preprocess(keras.layers.Layer):
    """Decoded uint8 images to the backbone's input: a cast to float32, then its ``preprocess_input`` (on the device,
    in float32 whatever the global dtype policy, as the host did before)."""

    def __init__(self, backbone: str, preprocessing: str | None = None, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})
        self.backbone, self.preprocessing = backbone, preprocessing
        self.scale = preprocessor(backbone, preprocessing)

    def call(self, images):
        return self.scale(ops.cast(images, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone, "preprocessing": self.preprocessing}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpatialPool(keras.layers.Layer):
    """Spatial pooling of ``(batch, h, w, c)`` maps in float32: ``none`` keeps them, ``avg``/``max`` reduce h and w,
    ``pyramid`` averages over each cell of 1x1, 2x2 and 4x4 grids (``grid_cells``), concatenated grid by grid, cells
    in row-major order, channels last: ``(batch, 21 * c)``. An output without spatial axes passes as it is."""

    def __init__(self, pooling: str, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})
        self.pooling = pooling

    def call(self, maps):
        if self.pooling == "none" or len(maps.shape) < 3:
            return maps
        axes = tuple(range(1, len(maps.shape) - 1))
        if self.pooling == "avg":
            return ops.mean(maps, axis=axes)
        if self.pooling == "max":
            return ops.max(maps, axis=axes)
        height, width = maps.shape[1:3]
        cells = [
            ops.mean(maps[:, top:bottom, left:right], axis=(1, 2))
            for g in PYRAMID_GRIDS for top, bottom in grid_cells(height, g) for left, right in grid_cells(width, g)
        ]
        return ops.concatenate(cells, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pooling": self.pooling}


def preprocess_layer(backbone: Backbone, preprocessing: str | None) -> Preprocess:
    """The ``Preprocess`` layer of ``backbone``: its keras.applications name, or a ``.keras`` file's recorded mode."""
    return Preprocess(".keras" if backbone.name.endswith(".keras") else backbone.name, preprocessing)


def pooled_output(maps, spec: LayerSpec, dtype: str | None = None):
    """``maps`` (a symbolic layer output) pooled as ``spec`` says, then cast to ``dtype`` (None: float32)."""
    if spec.pooling == "pyramid" and len(maps.shape) != 4:
        raise invalid(f"extract.layers.{spec.name}.pooling", spec.pooling,
                      f"one of ['avg', 'max', 'none'] for a layer without (height, width, channels) maps: "
                      f"{spec.name} gives {tuple(maps.shape[1:])}")
    pooled = SpatialPool(spec.pooling, name=f"{spec.name}_{spec.pooling}")(maps)
    return pooled if dtype is None else ops.cast(pooled, dtype)


def feature_graph(
    backbone: Backbone, specs: Sequence[LayerSpec], preprocessing: str | None, xla: bool = False,
    key: str = "extract.layers",
):
    """One model from uint8 ``(batch, h, w, 3)`` images to every ``specs`` layer's pooled output in its storage
    dtype, from a single forward pass, so only these outputs leave the device; its predict function is compiled by
    XLA when ``xla`` (GPU only: XLA on CPU measured 7x slower here). ``preprocessing`` is a ``.keras`` backbone's
    recorded mode; ``key`` is the parameter that named the layers, for the error on an unknown one."""
    backbone.check_layers([spec.name for spec in specs], key)
    images = keras.Input((*backbone.input_size, 3), dtype="uint8", name="images")
    inner = keras.Model(
        backbone.model.inputs, [backbone.model.get_layer(spec.name).output for spec in specs], name=backbone.model.name
    )
    maps = inner(preprocess_layer(backbone, preprocessing)(images))
    maps = maps if isinstance(maps, list) else [maps]
    outputs = [pooled_output(m, spec, spec.dtype) for m, spec in zip(maps, specs)]
    model = keras.Model(images, outputs, name=f"{backbone.name}_features")
    if xla:
        model.compile(jit_compile=True)
    return model
