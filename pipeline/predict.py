"""Prediction: images -> the model's own decode, backbone, layer and pooling -> its classifier -> top-k labels."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_file
from pipeline.classification.models import load_model, read_metadata
from pipeline.config import FINETUNED, PIXELS, ExtractConfig, LayerSpec, config_hash
from pipeline.extraction import accelerate
from pipeline.extraction.backbone import Backbone, load_backbone
from pipeline.extraction.dataset import IMAGE_EXTENSIONS, image_files
from pipeline.extraction.images import iter_batches
from pipeline.extraction.model import stored_values
from pipeline.extraction.provenance import feature_identity
from pipeline.finetune import load_finetuned
from pipeline.validation import ConfigError, check_int

log = logging.getLogger(__name__)

PROBABILITY = "probability"
SCORE = "score"
CSV_COLUMNS = ("path", "rank", "label")  # then the measure (probability or score), then error


@dataclass(frozen=True)
class Prediction:
    """One input image: its top-k ``(label, value)`` pairs, best first, or why it could not be decoded.

    ``measure`` says what the values are: ``probability`` (``predict_proba``) or ``score`` (raw
    ``decision_function`` margins, for estimators without probabilities). ``error`` is None for a
    predicted image; for an undecodable one it is the decoder's message and ``top`` is empty.
    """

    path: Path
    top: tuple[tuple[str, float], ...]
    measure: str = PROBABILITY
    error: str | None = None

    @property
    def label(self) -> str | None:
        """The top-1 label, or None for an image that could not be decoded."""
        return self.top[0][0] if self.top else None


class ImagePredictor:
    """What every predictor shares: images decoded as recorded, in batches, to top-k labels. A subclass gives
    ``input_size``, ``interpolation``, ``batch_size``, ``labels`` (the label of each output column), ``measure`` and
    ``image_outputs(images)`` (decoded uint8 images to ``(n, columns)`` outputs), and holds the model's ``metadata``
    and the ``config`` its features were extracted with."""

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    def top(self, outputs: np.ndarray, k: int) -> list[tuple[tuple[str, float], ...]]:
        """The ``k`` best ``(label, value)`` pairs per row, highest first (ties in class order)."""
        labels = self.labels
        order = np.argsort(-outputs, axis=1, kind="stable")[:, :k]
        return [tuple((labels[j], float(row[j])) for j in best) for row, best in zip(outputs, order)]

    def predict(self, paths: Sequence[Path], top_k: int = 3) -> list[Prediction]:
        """One Prediction per path, in order; undecodable images are logged and returned with their error."""
        k = min(check_int("top_k", top_k, 1), len(self.labels))
        results: list[Prediction] = []
        for batch in iter_batches(paths, self.input_size, self.config.interpolation, self.config.decode, self.batch_size):
            done = {}
            if len(batch.indices):
                tops = self.top(self.image_outputs(batch.images), k)
                done = {int(i): Prediction(Path(paths[i]), top, self.measure) for i, top in zip(batch.indices, tops)}
            for position, message in batch.errors:
                log.warning("not predicted: %s", message)
                done[position] = Prediction(Path(paths[position]), (), self.measure, error=message)
            results.extend(done[i] for i in range(batch.start, batch.stop))
        failed = sum(p.error is not None for p in results)
        if failed:
            log.warning("%d of %d images could not be decoded and have no prediction", failed, len(results))
        return results


@dataclass(frozen=True)
class Predictor(ImagePredictor):
    """A saved model joined to the backbone sub-model that recomputes its features exactly as extraction did."""

    model_dir: Path
    estimator: Any
    metadata: dict[str, Any]
    config: ExtractConfig
    specs: tuple[LayerSpec, ...]  # the model's layers as extracted (name, pooling, storage dtype), concatenated in order
    backbone: Backbone
    feature_model: Any  # the feature_graph of the specs' backbone layers; None for a pixels-only model
    device: accelerate.DeviceBatch

    @property
    def batch_size(self) -> int:
        return self.device.size

    @property
    def labels(self) -> list[str]:
        return [self.class_names[int(c)] for c in self.estimator.classes_]

    @property
    def measure(self) -> str:
        return PROBABILITY if hasattr(self.estimator, "predict_proba") else SCORE

    @property
    def input_size(self) -> tuple[int, int]:
        return self.backbone.input_size

    def features(self, images: np.ndarray) -> np.ndarray:
        """Flat features of decoded uint8 images: the extract stage's feature function (preprocess, forward pass,
        pooling and dtype), and its downscale for the raw-pixel baseline."""
        values = stored_values(self.feature_model, self.device, self.specs, images, self.config.pixels)
        return np.hstack(
            [values[spec.name].astype(spec.dtype, copy=False).reshape(len(images), -1) for spec in self.specs]
        )

    def outputs(self, X: np.ndarray) -> np.ndarray:
        """``(n, n_classes)`` probabilities, or decision scores when the estimator has no ``predict_proba``."""
        if self.measure == PROBABILITY:
            return np.asarray(self.estimator.predict_proba(X), dtype=np.float64)
        scores = np.asarray(self.estimator.decision_function(X), dtype=np.float64)
        return np.column_stack([-scores, scores]) if scores.ndim == 1 else scores  # binary: margin of classes_[1]

    def image_outputs(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(self.features(images))


@dataclass(frozen=True)
class FinetunedPredictor(ImagePredictor):
    """A fine-tuned model (``pipeline.finetune``): preprocessing, backbone and head are one Keras model on uint8 images."""

    model_dir: Path
    model: Any
    metadata: dict[str, Any]
    config: ExtractConfig
    batch_size: int
    measure: str = PROBABILITY

    @property
    def labels(self) -> list[str]:
        return [self.class_names[int(c)] for c in self.metadata["classes"]]

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.model.input_shape[1:3])

    def image_outputs(self, images: np.ndarray) -> np.ndarray:
        """Softmax probabilities of decoded uint8 images."""
        return np.asarray(self.model.predict(images, batch_size=self.batch_size, verbose=0), dtype=np.float64)


def load_finetuned_predictor(model_dir: Path, batch_size: int | None = None) -> FinetunedPredictor:
    """Load a fine-tuned model with the recorded decode (input size, interpolation) and preprocessing."""
    model, metadata = load_finetuned(model_dir)
    config = ExtractConfig.from_recorded(metadata["features"]["extract_config"])
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    log.info(
        "model %s: %s, %s cut at %s at %s, %d classes", model_dir, metadata["estimator"],
        metadata["features"]["backbone"], metadata["layer"], tuple(model.input_shape[1:3]), len(metadata["class_names"]),
    )
    return FinetunedPredictor(
        model_dir, model, metadata, config,
        batch_size or accelerate.resolve(config.batch_size, False, False).batch_size,
    )


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; folders as their image files (recursive, sorted, extensions as in dataset.py)."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = image_files(item, item)
            if not files:
                raise ConfigError(f"no images with extensions {list(IMAGE_EXTENSIONS)} found under {item}")
            paths.extend(files)
        elif item.exists():
            paths.append(item)
        else:
            raise ConfigError(f"image or folder not found: {item}")
    if not paths:
        raise ConfigError("no images to predict: give image files or folders")
    return paths


def recorded_config(model_dir: Path, metadata: dict[str, Any]) -> tuple[ExtractConfig, tuple[LayerSpec, ...]]:
    """The extract config the model's features were made with, and the model's layers within it."""
    features = metadata.get("features")
    if not isinstance(features, dict) or "extract_config" not in features or "layers" not in metadata:
        raise ConfigError(
            f"model {model_dir} does not record the extract config of its features (saved by an older version "
            "of this pipeline); train it again to predict with it"
        )
    config = ExtractConfig.from_recorded(features["extract_config"])
    specs = {spec.name: spec for spec in config.stored_layers}
    for layer in metadata["layers"]:
        if layer not in specs:
            raise ConfigError(
                f"model {model_dir} was trained on layer {layer!r}, which its recorded extract config does not "
                f"extract (layers: {sorted(specs)})"
            )
    return config, tuple(specs[layer] for layer in metadata["layers"])


def check_weights(model_dir: Path, metadata: dict[str, Any], backbone: Backbone) -> None:
    """Refuse a backbone whose weights are not the ones the model's features came from."""
    recorded = metadata["features"].get("weights_sha256")
    if recorded != backbone.weights_sha256:
        raise ConfigError(
            f"model {model_dir} was trained on features from {metadata['features'].get('backbone', backbone.name)} "
            f"with weights sha256 {recorded}, but the backbone now has {backbone.weights_sha256} "
            f"({backbone.weights_source}); extract the features and train the model again"
        )
    recorded_size = metadata["features"].get("input_size")
    if recorded_size is not None and tuple(recorded_size) != tuple(backbone.input_size):
        raise ConfigError(
            f"model {model_dir} was trained on features at input size {list(recorded_size)}, but the backbone "
            f"now takes {list(backbone.input_size)}"
        )


def feature_model(model_dir: Path, backbone: Backbone, specs: Sequence[LayerSpec], config: ExtractConfig, xla: bool):
    """The extract stage's ``feature_graph`` for the outputs the model needs (None if it needs pixels only); an
    absent layer is a ConfigError."""
    from pipeline.extraction.graph import feature_graph  # imports Keras

    layers = [spec for spec in specs if spec.name != PIXELS]
    if not layers:
        return None
    return feature_graph(backbone, layers, config.preprocessing, xla, key=f"the layers of {model_dir / 'model.json'}")


def check_width(model_dir: Path, estimator: Any, specs: Sequence[LayerSpec], model, pixels: int | None) -> None:
    """Refuse when the layers' stored width differs from the number of features the classifier was fitted on."""
    outputs = iter(model.outputs if model is not None else ())
    shapes = [(pixels, pixels, 3) if spec.name == PIXELS else tuple(next(outputs).shape[1:]) for spec in specs]
    width = sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes)
    expected = getattr(estimator, "n_features_in_", None)
    if expected is not None and int(expected) != width:
        described = ", ".join(f"{spec.name!r} ({spec.pooling} pooling: {shape})" for spec, shape in zip(specs, shapes))
        raise ConfigError(f"model {model_dir} expects {expected} features, but {described} give {width}")


def check_compute(
    model_dir: Path, metadata: dict[str, Any], config: ExtractConfig, backbone: Backbone, compute: accelerate.Compute
) -> None:
    """Warn when the features' config hash differs from now's: only mixed precision or XLA can differ here."""
    if config_hash(feature_identity(config, backbone, compute)) != metadata["features"].get("config_hash"):
        log.warning(
            "model %s: its features were computed with other effective settings than now (mixed precision %s, "
            "XLA %s here, e.g. a GPU run before); predictions may differ in the last digits",
            model_dir, compute.mixed_precision, compute.xla,
        )


def load_predictor(model_dir: str | Path, batch_size: int | None = None) -> Predictor | FinetunedPredictor:
    """Load a saved model and build its backbone once, with every check that the features will match; a fine-tuned
    model (``pipeline.finetune``) carries its backbone and needs only the recorded decode and preprocessing."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"model directory not found: {model_dir}")
    if read_metadata(model_dir).get("kind") == FINETUNED:
        return load_finetuned_predictor(model_dir, batch_size)
    estimator, metadata = load_model(model_dir)
    config, specs = recorded_config(model_dir, metadata)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    compute = accelerate.resolve(batch_size or config.batch_size, config.mixed_precision, config.xla)
    with accelerate.precision(compute.mixed_precision):
        backbone = load_backbone(config.backbone, config.weights, config.input_size, preprocessing=config.preprocessing)
        check_weights(model_dir, metadata, backbone)
        model = feature_model(model_dir, backbone, specs, config, compute.xla)
    check_compute(model_dir, metadata, config, backbone, compute)
    check_width(model_dir, estimator, specs, model, config.pixels)
    log.info(
        "model %s: %s on %s of %s at %s, %d classes",
        model_dir, metadata.get("estimator"), " + ".join(f"{s.name} ({s.pooling}, {s.dtype})" for s in specs),
        backbone.name, backbone.input_size, len(metadata["class_names"]),
    )
    return Predictor(model_dir, estimator, metadata, config, specs, backbone, model, compute.device_batch())


def predict_images(
    model_dir: str | Path, inputs: Sequence[str | Path], top_k: int = 3, batch_size: int | None = None
) -> list[Prediction]:
    """Top-k labels for every image of ``inputs`` (files, or folders expanded to their image files).

    Runs what training's features came from, end to end: the recorded extract config's decode (interpolation,
    input size), backbone and weights, the model's layer, pooling and storage dtype, then the classifier; a
    fine-tuned model (``data/models/finetune/<name>``) is one Keras model from preprocessed images to probabilities.
    Values are ``predict_proba`` probabilities; an estimator without it (LinearSVC) gives its raw
    ``decision_function`` scores instead (``Prediction.measure == "score"``, not calibrated, not softmaxed).
    ``batch_size`` defaults to the recorded one (``auto``: 32 on CPU); it changes float rounding only.
    An undecodable image is logged and returned with ``error`` set, never dropped. Refused with a
    ConfigError: a missing input or model directory, a directory not saved by this pipeline, a backbone whose
    weights differ from the recorded sha256, a layer the backbone lacks, a feature width the classifier was
    not fitted on.
    """
    check_int("top_k", top_k, 1)
    paths = expand_inputs(inputs)
    predictor = load_predictor(model_dir, batch_size)
    log.info("predicting %d image(s) with %s", len(paths), predictor.model_dir)
    return predictor.predict(paths, top_k)


def write_csv(predictions: Sequence[Prediction], out: str | Path) -> Path:
    """Write ``out`` atomically: one row per (image, rank) with path, rank, label, probability|score, error.

    An image that could not be decoded has one row with an empty rank, label and value, and its error.
    """
    measure = predictions[0].measure if predictions else PROBABILITY
    with atomic_file(out) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*CSV_COLUMNS, measure, "error"])
        for prediction in predictions:
            if prediction.error is not None:
                writer.writerow([prediction.path, "", "", "", prediction.error])
            for rank, (label, value) in enumerate(prediction.top, start=1):
                writer.writerow([prediction.path, rank, label, f"{value:.6g}", ""])
    log.info("wrote %s (%d images)", out, len(predictions))
    return Path(out)


def format_line(prediction: Prediction) -> str:
    """``path: 7 (0.93), 1 (0.04)``; scores read ``7 (score 2.31)``; an undecodable image says why."""
    if prediction.error is not None:
        return f"{prediction.path}: ERROR {prediction.error}"
    prefix = "" if prediction.measure == PROBABILITY else "score "
    return f"{prediction.path}: " + ", ".join(f"{label} ({prefix}{value:.2f})" for label, value in prediction.top)
