"""Frozen backbones: keras.applications by name, weights resolution, and the multi-layer feature sub-model."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import PREPROCESSING_MODES
from pipeline.extraction import weights as offline
from pipeline.extraction.hashing import file_sha256
from pipeline.validation import ConfigError, check_one_of, did_you_mean, invalid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    """A keras.applications constructor, the module holding its preprocess_input, and its native input size."""

    constructor: str
    module: str
    native_size: int


ARCHITECTURES = {
    "vgg16": Architecture("VGG16", "vgg16", 224),
    "vgg19": Architecture("VGG19", "vgg19", 224),
    "resnet50": Architecture("ResNet50", "resnet", 224),
    "resnet101": Architecture("ResNet101", "resnet", 224),
    "resnet152": Architecture("ResNet152", "resnet", 224),
    "resnet50v2": Architecture("ResNet50V2", "resnet_v2", 224),
    "resnet101v2": Architecture("ResNet101V2", "resnet_v2", 224),
    "resnet152v2": Architecture("ResNet152V2", "resnet_v2", 224),
    "inceptionv3": Architecture("InceptionV3", "inception_v3", 299),
    "inceptionresnetv2": Architecture("InceptionResNetV2", "inception_resnet_v2", 299),
    "xception": Architecture("Xception", "xception", 299),
    "mobilenet": Architecture("MobileNet", "mobilenet", 224),
    "mobilenetv2": Architecture("MobileNetV2", "mobilenet_v2", 224),
    "mobilenetv3small": Architecture("MobileNetV3Small", "mobilenet_v3", 224),
    "mobilenetv3large": Architecture("MobileNetV3Large", "mobilenet_v3", 224),
    "densenet121": Architecture("DenseNet121", "densenet", 224),
    "densenet169": Architecture("DenseNet169", "densenet", 224),
    "densenet201": Architecture("DenseNet201", "densenet", 224),
    "nasnetmobile": Architecture("NASNetMobile", "nasnet", 224),
    "efficientnetb0": Architecture("EfficientNetB0", "efficientnet", 224),
    "efficientnetb1": Architecture("EfficientNetB1", "efficientnet", 240),
    "efficientnetb2": Architecture("EfficientNetB2", "efficientnet", 260),
    "efficientnetb3": Architecture("EfficientNetB3", "efficientnet", 300),
    "efficientnetb4": Architecture("EfficientNetB4", "efficientnet", 380),
    "efficientnetv2b0": Architecture("EfficientNetV2B0", "efficientnet_v2", 224),
    "efficientnetv2s": Architecture("EfficientNetV2S", "efficientnet_v2", 384),
    "convnexttiny": Architecture("ConvNeXtTiny", "convnext", 224),
}

# Backbones whose ImageNet weights are obtained offline instead of through Keras's download.
OFFLINE_IMAGENET = {"mobilenet": offline.mobilenet_v1_imagenet}


@dataclass(frozen=True)
class Backbone:
    """A loaded, frozen backbone with the facts that go into the features file's provenance."""

    name: str
    model: object
    preprocess: Callable[[np.ndarray], np.ndarray]
    preprocessing: str
    input_size: tuple[int, int]
    weights_source: str
    weights_sha256: str

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.model.layers]

    def check_layers(self, names: Sequence[str], key: str) -> None:
        """Raise a ConfigError, under the parameter ``key`` that gave ``names``, if one is not a layer of this backbone."""
        valid = self.layer_names
        for name in names:
            if name not in valid:
                what = f"layer names of {self.name} (valid: {', '.join(valid)}); {name!r} is not one"
                raise invalid(key, list(names), what, did_you_mean(name, valid))

    def feature_model(self, names: Sequence[str], key: str = "extract.layers"):
        """One model with an output per named layer, so every layer comes from a single forward pass; ``key`` is the
        parameter that named them, for the error on an unknown one."""
        import keras

        self.check_layers(names, key)
        outputs = [self.model.get_layer(name).output for name in names]
        return keras.Model(self.model.inputs, outputs, name=f"{self.name}_features")


def preprocessor(name: str, preprocessing: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The input scaling of backbone ``name``, without building it: ``keras.applications.<module>.preprocess_input``,
    or for a ``.keras`` backbone ``imagenet_utils.preprocess_input`` in mode ``preprocessing`` (``none``: as is)."""
    import keras

    if name.endswith(".keras"):
        if preprocessing == "none":
            return lambda x: x
        return lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode=preprocessing)
    return getattr(keras.applications, ARCHITECTURES[name].module).preprocess_input


def weights_fingerprint(model) -> str:
    """sha256 over the model's weight arrays in order: identifies the weights whatever file they came from."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def load_keras_file(
    path: str | Path, weights: str | None, input_size: tuple[int, int] | None, preprocessing: str | None
) -> Backbone:
    """A user's own ``.keras`` model (loaded with ``safe_mode=True``) as a backbone; it carries its own weights."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"extract.backbone must be an existing .keras file or one of {sorted(ARCHITECTURES)}. "
            f"Received: extract.backbone={str(path)!r}"
        )
    if preprocessing is None:
        raise ConfigError(
            f"extract.preprocessing must be one of {sorted(PREPROCESSING_MODES)} for a .keras backbone "
            "(the input scaling it was trained with). Received: extract.preprocessing=None"
        )
    if weights == "imagenet":
        raise ConfigError(
            "extract.weights must be null (the model's own weights) or a weights file for a .keras backbone. "
            "Received: extract.weights='imagenet'"
        )
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as error:  # includes safe_mode refusing a Lambda layer's pickled code
        raise ConfigError(f"cannot load {path} as a Keras model with safe_mode=True: {error}") from error
    source = f"file {path} (sha256 {file_sha256(path)})"
    if weights is not None:
        model.load_weights(weights)
        source = f"{source}, weights from file {weights} (sha256 {file_sha256(weights)})"
    native = tuple(model.input_shape[1:3])
    if input_size is not None and tuple(input_size) != native and None not in native:
        raise ConfigError(f"extract.input_size must be null or {list(native)} for {path}. Received: extract.input_size={list(input_size)}")
    size = tuple(input_size) if None in native else native
    if None in size:
        raise ConfigError(f"{path} accepts any input size: set extract.input_size to [height, width]")
    model.trainable = False
    return Backbone(
        name=path.name,
        model=model,
        preprocess=preprocessor(str(path), preprocessing),
        preprocessing=f"keras.applications.imagenet_utils.preprocess_input(mode={preprocessing!r})"
        if preprocessing != "none" else "none",
        input_size=size,
        weights_source=source,
        weights_sha256=weights_fingerprint(model),
    )


def architecture(name: str, size: tuple[int, int], include_top: bool = False, weights: str | None = None):
    """``keras.applications.<constructor>`` at ``size``; ``weights`` is passed to Keras (None or 'imagenet')."""
    import keras

    constructor = getattr(keras.applications, ARCHITECTURES[name].constructor)
    return constructor(include_top=include_top, weights=weights, input_shape=(*size, 3))


def headless_model(backbone: str, input_size: tuple[int, int] | None = None, key: str = "backbone"):
    """The layers ``backbone`` offers, as a model without weights (names and output shapes do not depend on them):
    keras.applications ``backbone`` without its classifier at ``input_size`` (None: its native size), or a ``.keras``
    file. Built in a fresh Keras session, so that automatic names (mobilenetv3's ``activation_17``, numbered per
    session) are those a fresh process gives; ``key`` is the parameter that named the backbone, for its errors."""
    import keras

    keras.backend.clear_session()
    if backbone.endswith(".keras"):
        if not Path(backbone).is_file():
            raise ConfigError(f"{key} must be a keras.applications name or a .keras file. Received: {key}={backbone!r}")
        return keras.saving.load_model(backbone, safe_mode=True, compile=False)
    native = ARCHITECTURES[check_one_of(key, backbone, ARCHITECTURES)].native_size
    return architecture(backbone, tuple(input_size) if input_size else (native, native))


def load_backbone(
    name: str, weights: str | None = "imagenet", input_size: tuple[int, int] | None = None,
    include_top: bool = False, preprocessing: str | None = None,
) -> Backbone:
    """Build ``keras.applications.<name>`` (or load a ``.keras`` file) with the requested weights.

    A failure to get pretrained weights is an error, never a silent fall-back to random weights.
    """
    if name.endswith(".keras"):
        return load_keras_file(name, weights, input_size, preprocessing)
    if preprocessing is not None:
        raise ConfigError(
            f"extract.preprocessing applies only to a .keras backbone; {name} uses its own preprocess_input. "
            f"Received: extract.preprocessing={preprocessing!r}"
        )
    arch = ARCHITECTURES[check_one_of("extract.backbone", name, ARCHITECTURES)]
    size = tuple(input_size) if input_size else (arch.native_size, arch.native_size)
    if include_top and size != (arch.native_size, arch.native_size):
        raise invalid("extract.input_size", list(size), f"[{arch.native_size}, {arch.native_size}] (include_top needs the native input size)")

    def constructor(weights):
        return architecture(name, size, include_top, weights)

    if weights is None:
        model = constructor(None)
        source = "random initialisation (weights: null), NOT pretrained"
        log.warning("%s uses random weights (weights: null); features are not pretrained", name)
    elif weights == "imagenet" and name in OFFLINE_IMAGENET:
        model = constructor(None)
        offline.load_layer_weights(model, OFFLINE_IMAGENET[name]())
        source = offline.SOURCE
    elif weights == "imagenet":
        try:
            model = constructor("imagenet")
        except Exception as error:  # Keras raises several types for a failed download
            raise offline.WeightsError(
                f"could not get ImageNet weights for {name} through Keras ({error}). Without internet, set "
                "extract.weights to a local weights file, or use backbone 'mobilenet', whose ImageNet weights "
                "come from the package index."
            ) from error
        source = f"keras.applications.{arch.constructor}(weights='imagenet'), downloaded by Keras"
    else:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(
                f"extract.weights must be 'imagenet', null or an existing weights file. Received: extract.weights={weights!r}"
            )
        model = constructor(None)
        try:
            model.load_weights(path)
        except Exception as error:
            raise offline.WeightsError(f"weights file {path} does not fit {name} at input size {size}: {error}") from error
        source = f"file {path} (sha256 {file_sha256(path)})"

    model.trainable = False
    return Backbone(
        name=name,
        model=model,
        preprocess=preprocessor(name),
        preprocessing=f"keras.applications.{arch.module}.preprocess_input",
        input_size=size,
        weights_source=source,
        weights_sha256=weights_fingerprint(model),
    )
