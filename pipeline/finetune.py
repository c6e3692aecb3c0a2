"""Fine-tuning: the backbone cut at a layer plus the head trained on its features, top layers unfrozen, on images."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_directory
from pipeline.classification.classifiers import encode_labels, epoch_logger, keras_verbosity
from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.evaluate import Predictions, spread_probabilities, trained_on, write_evaluation
from pipeline.classification.models import (
    KERAS_FILE,
    history_rows,
    model_metadata,
    read_metadata,
    write_metadata,
)
from pipeline.config import FINETUNE_HEAD, FINETUNED, AugmentConfig, ExtractConfig, FinetuneConfig, LayerSpec
from pipeline.extraction.augment import augment, view_rng
from pipeline.extraction.backbone import Backbone, load_backbone
from pipeline.extraction.hashing import hash_files
from pipeline.extraction.images import decode_image, iter_batches, pad_batch
from pipeline.store import row_images
from pipeline.validation import ConfigError, did_you_mean, invalid

log = logging.getLogger(__name__)

BACKBONE = "backbone"  # the name of the cut backbone inside the fine-tuned model


@dataclass(frozen=True)
class ImageRows:
    """One split's rows of a features file: their row numbers, image files and labels (class indices)."""

    rows: np.ndarray
    paths: tuple[Path, ...]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def image_rows(features: str | Path, images: str | Path, split: str) -> ImageRows:
    """The rows of ``split`` exactly as the features file lists them (paths under ``images``, labels), so fine-tuning
    and its evaluation use the same train/val/test images as the head; images skipped at extraction are not rows."""
    rows, paths, labels, _ = row_images(features, split)
    if not len(rows):
        raise ConfigError(f"{features} has no {split} rows to fine-tune or evaluate on")
    return ImageRows(rows, tuple(Path(images) / p for p in paths), np.asarray(labels, dtype=np.int64))


def check_images(features: str | Path, images: str | Path) -> None:
    """Refuse images that are not those the features file was extracted from: every row's file must exist under
    ``images`` with the content hash recorded at extraction (``/sha256``)."""
    _, paths, _, recorded = row_images(features)
    files = [Path(images) / p for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(files)} images of {features} are not under {images}, e.g. {missing[:3]}; pass the "
            "image folder it was extracted from"
        )
    if recorded is None or not any(recorded):
        log.warning("%s records no image content hashes (an older extraction): images not checked against it", features)
        return
    actual = hash_files(files, show_progress=False)
    changed = [str(p) for p, now, then in zip(files, actual, recorded) if then and now != then]
    if changed:
        raise ConfigError(
            f"{len(changed)} of {len(files)} images under {images} changed since {features} was extracted (content "
            f"hash differs), e.g. {changed[:3]}; extract the features and train the head again"
        )


def load_head(head_dir: str | Path, layer: str, name: str = "head"):
    """The trained Keras head in ``head_dir`` and its ``model.json``; refused unless it is a ``keras_head`` trained on
    ``layer`` alone, with no pool or PCA step before it (the head's own Normalization layer is part of it)."""
    import keras

    head_dir = Path(head_dir)
    if not head_dir.is_dir():
        raise ConfigError(f"finetune.{name}.head: no trained head at {head_dir}; train it first (dvc repro train)")
    metadata = read_metadata(head_dir)
    if metadata.get("kind") == FINETUNED or metadata.get("estimator") != FINETUNE_HEAD:
        raise ConfigError(
            f"finetune.{name}.head must be a {FINETUNE_HEAD} model; {head_dir} holds "
            f"{metadata.get('kind') or metadata.get('estimator')!r}"
        )
    if metadata.get("preprocess"):
        raise ConfigError(
            f"finetune.{name}.head: {head_dir} has steps before the Keras head (pool {metadata.get('pool')!r}, pca "
            f"{metadata.get('pca')!r}); fine-tuning needs a head trained on the layer's features as extracted"
        )
    if metadata.get("layers") != [layer]:
        raise ConfigError(f"finetune.{name}.layer is {layer!r}, but {head_dir} was trained on {metadata.get('layers')}")
    return keras.saving.load_model(head_dir / metadata["file"], safe_mode=True), metadata


def build_model(
    backbone: Backbone, layer: str, pooling: str, head, trainable_from: str | None = None,
    trainable_layers: int | None = None, name: str = "finetune", preprocessing: str | None = None,
):
    """``uint8 image -> preprocess_input -> backbone cut at layer (training=False) -> pooling -> head layers`` and its
    trainable layer names. The preprocessing and pooling are the extract stage's own on-device layers
    (``pipeline.extraction.graph``; ``preprocessing``: a ``.keras`` backbone's recorded mode).

    Every BatchNormalization layer, of the backbone and of the head, runs in inference mode (its moving statistics,
    as the Keras transfer-learning guide requires): the cut backbone and the head's BatchNormalization are called
    with ``training=False``, and those layers are also frozen (``trainable=False``), because Keras 3's functional
    models pass ``model.fit``'s ``training=True`` down to every layer, overriding a ``training=False`` given when the
    graph was built; a frozen BatchNormalization runs in inference mode whatever it is told (as keras.io's
    EfficientNet fine-tuning example leaves them). The head's Dropout stays active while training. Layers of the cut
    backbone before ``trainable_from`` (or all but its last ``trainable_layers``) are frozen; the rest (but
    BatchNormalization) and the head train. ``head`` is the trained head model (a chain of layers, its weights
    reused as they are) or a freshly built one. Returns the model and the names of its trainable backbone layers.
    """
    import keras

    from pipeline.extraction.graph import pooled_output, preprocess_layer  # imports Keras

    where = f"finetune.{name}"
    backbone.check_layers([layer], f"{where}.layer")
    cut = keras.Model(backbone.model.inputs, backbone.model.get_layer(layer).output, name=BACKBONE)
    cut.trainable = True  # load_backbone froze it all; now freeze per layer
    names = [item.name for item in cut.layers[1:]]  # without the input layer
    if trainable_from is not None:
        if trainable_from not in names:
            what = f"a layer of {backbone.name} up to {layer} (from the last: {', '.join(reversed(names[-12:]))}, ...)"
            raise invalid(f"{where}.trainable_from", trainable_from, what, did_you_mean(trainable_from, names))
        first = names.index(trainable_from)
    else:
        if trainable_layers > len(names):
            raise ConfigError(
                f"{where}.trainable_layers must be at most {len(names)}, the layers of {backbone.name} up to {layer}. "
                f"Received: {where}.trainable_layers={trainable_layers}"
            )
        first = len(names) - trainable_layers
    for index, item in enumerate(cut.layers[1:]):
        item.trainable = index >= first and not isinstance(item, keras.layers.BatchNormalization)

    inputs = keras.Input((*backbone.input_size, 3), dtype="uint8", name="image")
    x = cut(preprocess_layer(backbone, preprocessing)(inputs), training=False)
    x = pooled_output(x, LayerSpec(layer, pooling))
    if len(x.shape) > 2:  # unpooled maps were stored flattened in row-major (h, w, c) order, which is Flatten's
        x = keras.layers.Flatten(name="flatten")(x)
    width, expected = int(x.shape[-1]), int(head.input_shape[-1])
    if width != expected:
        raise ConfigError(
            f"{where}: {layer} with pooling {pooling!r} gives {width} features, but the head takes {expected}"
        )
    for item in _chain(head):
        if isinstance(item, keras.layers.BatchNormalization):
            item.trainable = False
            x = item(x, training=False)
        else:
            x = item(x)
    model = keras.Model(inputs, x, name=name)
    return model, [item.name for item in cut.layers[1:] if item.trainable]


def _chain(head) -> list:
    """The head's layers after its input, refused unless each takes the previous one's output (one path)."""
    layers = list(head.layers)
    if len(head.inputs) != 1 or len(head.outputs) != 1 or any(
        item.input is not previous.output for previous, item in itertools.pairwise(layers)
    ):
        raise ConfigError(f"head {head.name} is not a chain of layers; fine-tuning rebuilds it layer by layer")
    return layers[1:]


def image_batches(
    rows: ImageRows, targets: np.ndarray, size: tuple[int, int], interpolation: str, decode: str,
    batch_size: int, augmentation: AugmentConfig | None = None, shuffle_seed: int | None = None, workers: int = 4,
):
    """A ``keras.utils.PyDataset`` of ``(uint8 images, targets)`` batches, decoded from disk as they are asked
    for (``workers`` threads per batch), never holding more than a batch.

    Its ``epoch`` attribute (set by ``EpochSetter``) decides the epoch's order (``shuffle_seed``: a seeded
    permutation; None: file order) and the augmentation: image row ``r`` in epoch ``e`` gets
    ``augment(image, augmentation, view_rng(augmentation.seed, str(r), e))``, so a run is repeatable and a batch
    is the same whenever it is asked for.
    """
    import keras

    class ImageBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.n = len(rows)
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="finetune-decode")

        def __len__(self) -> int:
            return math.ceil(len(rows) / batch_size)

        def order(self) -> np.ndarray:
            if shuffle_seed is None:
                return np.arange(len(rows))
            return np.random.default_rng([shuffle_seed, self.epoch]).permutation(len(rows))

        def load(self, index: int) -> np.ndarray:
            image = decode_image(rows.paths[index], size, interpolation, decode)
            if augmentation is None:
                return image
            return augment(image, augmentation, view_rng(augmentation.seed, str(int(rows.rows[index])), self.epoch))

        def __getitem__(self, batch: int):
            chosen = self.order()[batch * batch_size : (batch + 1) * batch_size]
            images = np.stack(list(self.pool.map(self.load, chosen)))
            return images, targets[chosen]

    return ImageBatches()


def _epoch_setter(dataset):
    import keras

    class EpochSetter(keras.callbacks.Callback):
        """Tells the train dataset which epoch Keras starts, for its order and augmentation."""

        def on_epoch_begin(self, epoch, logs=None):
            dataset.epoch = epoch

    return EpochSetter()


@dataclass(frozen=True)
class Fitted:
    """What ``fit`` did: per-epoch history rows, the val loss and accuracy before training and of the kept weights,
    the kept epoch (0: the start, when no epoch lowered the val loss), and the seconds ``model.fit`` took."""

    history: list[dict[str, float]]
    initial_val_loss: float
    initial_val_accuracy: float
    val_loss: float
    val_accuracy: float
    best_epoch: int
    seconds: float


def fit(model, train, val, config: FinetuneConfig, verbose: int | str = "auto") -> Fitted:
    """Compile ``model`` (Adam at ``config.learning_rate``, sparse categorical cross-entropy, accuracy) and train it
    on ``train`` with early stopping on ``val``'s loss, keeping the best weights; the start counts as a candidate,
    so the result is never worse on val than where it started. One log line per epoch; ``verbose`` is Keras's, with
    ``"auto"`` as ``pipeline.classification.classifiers.keras_verbosity`` defines it."""
    import keras

    keras.utils.set_random_seed(config.seed)  # the train order's and augmentation's own seeds are in the dataset
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate), loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    initial = model.evaluate(val, verbose=0, return_dict=True)
    log.info("%s: before fine-tuning, val loss %.4f, val accuracy %.4f", config.name, initial["loss"], initial["accuracy"])
    start = model.get_weights()
    stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
    started = time.perf_counter()
    result = model.fit(
        train, validation_data=val, epochs=config.epochs, shuffle=False, verbose=keras_verbosity(verbose),
        callbacks=[_epoch_setter(train), stopping, epoch_logger(config.epochs, config.name, log)],
    )
    seconds = time.perf_counter() - started
    curves = {key: [float(value) for value in values] for key, values in result.history.items()}
    # Keras's accuracies are float32 fractions of the images; the exact ones tell equal models apart from better ones.
    curves["accuracy"] = [exact(value, train.n) for value in curves["accuracy"]]
    curves["val_accuracy"] = [exact(value, val.n) for value in curves["val_accuracy"]]
    initial["accuracy"] = exact(initial["accuracy"], val.n)
    history = history_rows(curves)
    best = min(history, key=lambda row: row["val_loss"])
    if best["val_loss"] < initial["loss"]:
        best_epoch, val_loss, val_accuracy = best["epoch"], best["val_loss"], best["val_accuracy"]
    else:
        model.set_weights(start)
        best_epoch, val_loss, val_accuracy = 0, initial["loss"], initial["accuracy"]
        log.warning(
            "%s: no epoch lowered the val loss below the start's %.4f; keeping the starting weights (try another "
            "learning_rate, more epochs or other trainable layers)", config.name, initial["loss"],
        )
    log.info(
        "%s: fine-tuned in %.1f s over %d epoch(s), kept epoch %d: val loss %.4f, val accuracy %.4f", config.name,
        seconds, len(history), best_epoch, val_loss, val_accuracy,
    )
    return Fitted(history, float(initial["loss"]), float(initial["accuracy"]), float(val_loss), float(val_accuracy),
                  best_epoch, seconds)


def exact(accuracy: float, n: int) -> float:
    """A float32 accuracy over ``n`` images as the exact fraction of them it stands for."""
    return round(float(accuracy) * n) / n


def finetune_model(
    features: str | Path, images: str | Path, head_dir: str | Path, config: FinetuneConfig, out_dir: str | Path,
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """Fine-tune ``config`` and save it to ``out_dir`` (``model.keras`` and ``model.json``, atomically).

    The backbone is loaded as the features file records it (name, weights, input size, preprocessing; its weights'
    sha256 must match), cut at ``config.layer``, pooled as extracted, and joined to the trained head in ``head_dir``
    (see ``build_model``). It is trained on the train split's images (augmented when ``config.augment`` is set) and
    stopped early on the val split's, both streamed from ``images`` in the features file's rows. Returns the
    ``model.json`` record: provenance, classes, trainable layers, the head it started from and that head's own val
    loss, the val loss before training, per-epoch history, kept epoch, val accuracy and fit seconds.
    """
    import keras

    keras.utils.set_random_seed(config.seed)  # before any layer exists: Dropout seeds its generator when it is built
    head, head_metadata = load_head(head_dir, config.layer, config.name)
    attrs = trained_on(head_dir, head_metadata, features)
    extract = ExtractConfig.from_recorded(attrs["extract_config"])
    specs = {spec.name: spec for spec in extract.layers}
    if config.layer not in specs:
        raise ConfigError(
            f"finetune.{config.name}.layer {config.layer!r} is not a backbone layer of {features}: {sorted(specs)}"
        )
    check_images(features, images)
    backbone = load_backbone(extract.backbone, extract.weights, extract.input_size, preprocessing=extract.preprocessing)
    if backbone.weights_sha256 != attrs["weights_sha256"]:
        raise ConfigError(
            f"{features} was extracted with {attrs['backbone']} weights sha256 {attrs['weights_sha256']}, but the "
            f"backbone now has {backbone.weights_sha256} ({backbone.weights_source}); extract the features again"
        )
    pooling = specs[config.layer].pooling
    model, trainable = build_model(
        backbone, config.layer, pooling, head, config.trainable_from, config.trainable_layers, config.name,
        extract.preprocessing,
    )
    classes = head_metadata["classes"]
    train_rows, val_rows = image_rows(features, images, "train"), image_rows(features, images, "val")

    def batches(rows: ImageRows, split: str, **options):
        return image_batches(
            rows, encode_labels(rows.labels, classes, f"the {split} split"), backbone.input_size, extract.interpolation,
            extract.decode, config.batch_size, **options,
        )

    train = batches(train_rows, "train", augmentation=config.augment, shuffle_seed=config.seed)
    val = batches(val_rows, "val")
    log.info(
        "fine-tuning %s: %s cut at %s (%s pooling) + head %s; %d of %d backbone layers trainable (from %s), %d "
        "trainable weights; %d train and %d val images, augmentation %s", config.name, backbone.name, config.layer,
        pooling, head_dir, len(trainable), len(model.get_layer(BACKBONE).layers) - 1, (trainable or ["none"])[0],
        sum(int(np.prod(w.shape)) for w in model.trainable_weights), len(train_rows), len(val_rows),
        config.augment.to_params() if config.augment else None,
    )
    fitted = fit(model, train, val, config, verbose)
    params = {
        "trainable_from": config.trainable_from, "trainable_layers": config.trainable_layers,
        "learning_rate": config.learning_rate, "epochs": config.epochs, "batch_size": config.batch_size,
        "patience": config.patience, "augment": config.augment.to_params() if config.augment else None,
        "seed": config.seed,
    }
    metadata = model_metadata(
        config.name, f"{FINETUNED} {FINETUNE_HEAD}", params, [config.layer], features, attrs, fitted.seconds,
        fitted.val_accuracy, fitted.history, kind=FINETUNED,
        head={
            "classifier": head_metadata["classifier"], "model": str(head_dir),
            "val_loss": head_val_loss(head_metadata), "val_accuracy": head_metadata["val_accuracy"],
        },
        pooling=pooling, input="decoded RGB images as uint8, resized to input_size (the model preprocesses them)",
        classes=list(classes), image_root=str(images), trainable_layer_names=trainable,
        initial_val_loss=fitted.initial_val_loss, initial_val_accuracy=fitted.initial_val_accuracy,
        best_epoch=fitted.best_epoch, val_loss=fitted.val_loss,
    )
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        # The same layers as an uncompiled model: the file holds no optimizer state (half its size), only what predicts.
        keras.Model(model.inputs, model.outputs, name=model.name).save(tmp / KERAS_FILE)
        record = write_metadata(tmp, KERAS_FILE, metadata)
    log.info("saved %s", out_dir)
    return record


def head_val_loss(metadata: dict[str, Any]) -> float | None:
    """The head's own val loss: the lowest of its epochs (early stopping kept those weights); None without a history."""
    losses = [row["val_loss"] for row in metadata.get("history", []) if "val_loss" in row]
    return min(losses) if losses else None


def load_finetuned(model_dir: str | Path):
    """A fine-tuned model saved by ``finetune_model`` and its ``model.json`` (``safe_mode=True``): uint8 images in."""
    import keras

    import pipeline.extraction.graph  # noqa: F401  registers the model's preprocessing and pooling layers

    metadata = read_metadata(model_dir)
    if metadata.get("kind") != FINETUNED:
        raise ConfigError(f"{model_dir} is not a fine-tuned model (model.json kind {metadata.get('kind')!r})")
    model = keras.saving.load_model(Path(model_dir) / metadata["file"], safe_mode=True)
    if model.inputs[0].dtype != "uint8":
        raise ConfigError(
            f"{model_dir} was fine-tuned by an earlier version (it takes preprocessed float images); fine-tune it "
            "again (dvc repro re-runs the stage)"
        )
    return model, metadata


def image_predictions(
    model, rows: ImageRows, extract: ExtractConfig, classes: Sequence[int], n_classes: int, batch_size: int,
) -> Predictions:
    """The model's outputs on ``rows``, streamed from disk ``batch_size`` images at a time (decoded in threads)."""
    size = tuple(model.input_shape[1:3])
    probas, seconds = [], 0.0
    for batch in iter_batches(rows.paths, size, extract.interpolation, extract.decode, batch_size, on_error="fail"):
        n = len(batch.images)  # a short last batch is padded: one input shape, one traced function
        started = time.perf_counter()
        probas.append(np.asarray(model.predict_on_batch(pad_batch(batch.images, batch_size)))[:n])
        seconds += time.perf_counter() - started
    proba = spread_probabilities(np.concatenate(probas), classes, n_classes)
    return Predictions(rows.labels, np.argmax(proba, axis=1), proba, seconds)


def evaluate_finetuned(
    model_dir: str | Path, features: str | Path, images: str | Path, files: EvalFiles, split: str = "test",
) -> dict[str, Any]:
    """Evaluate a fine-tuned model on ``split``'s images (the features file's rows, streamed from ``images``) and write
    the same ``files`` and metrics as ``pipeline.classification.evaluate.evaluate_model``; returns the metrics."""
    model, metadata = load_finetuned(model_dir)
    attrs = trained_on(model_dir, metadata, features)
    extract = ExtractConfig.from_recorded(metadata["features"]["extract_config"])
    rows = image_rows(features, images, split)
    data = image_predictions(
        model, rows, extract, metadata["classes"], len(attrs["class_names"]), metadata["params"]["batch_size"]
    )
    description = f"{metadata['classifier']} ({metadata['estimator']}) on {metadata['layer']}"
    return write_evaluation(files, data, attrs["class_names"], metadata, description, split)


def run_finetune(
    features: str | Path, images: str | Path, head_dir: str | Path, config: FinetuneConfig, out_dir: str | Path,
    eval_dir: str | Path, verbose: int | str = "auto",
) -> dict[str, Any]:
    """What the DVC stage runs: ``finetune_model`` into ``out_dir``, then ``evaluate_finetuned`` on the test split into
    ``EvalFiles(eval_dir, config.name)``; returns the test metrics."""
    finetune_model(features, images, head_dir, config, out_dir, verbose)
    return evaluate_finetuned(out_dir, features, images, EvalFiles(Path(eval_dir), config.name))
