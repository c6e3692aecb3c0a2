"""Frozen dataclasses for each params.yaml section, validated up front so bad keys fail before any model loads."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.validation import (
    ConfigError,
    check_bool,
    check_bytes,
    check_cluster,
    check_fraction,
    check_int,
    check_keys,
    check_mapping,
    check_number,
    check_one_of,
    check_text,
    invalid,
)

POOLINGS = ("none", "avg", "max", "pyramid")
PYRAMID_GRIDS = (1, 2, 4)  # pooling "pyramid": averages over 1x1, 2x2 and 4x4 grids, concatenated (21 x channels)
DTYPES = ("float32", "float16")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")
DECODE_MODES = ("fast", "exact")
PREPROCESSING_MODES = ("none", "tf", "torch", "caffe")
COMPRESSIONS = ("gzip", "lzf")
ON_ERROR = ("skip", "fail")
FLIPS = ("none", "horizontal", "vertical", "both")
# The raw-pixel baseline's dataset in a features file: the decoded images, downscaled (extract.pixels).
PIXELS = "pixels"
# extract.layers: blocks, the output of every block of a keras.applications backbone in depth order. The config holds
# it as one entry of that name, with the pooling and dtype of every block; stage one expands it to the layer names
# (pipeline.extraction.blocks.expand_blocks) before the config is hashed or recorded.
BLOCKS = "blocks"
# Where extraction runs, in what pieces, and how many earlier outputs it keeps for reuse: none changes the file's
# content, so none is hashed or recorded, or a DVC dependency.
PLACEMENT = ("cluster", "shard_size", "reuse")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read a params file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    with path.open() as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping of sections. Received: {type(params).__name__}")
    return params


def section(params: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """Return the section ``name`` of ``params``, or a ConfigError naming it when absent."""
    if name not in params:
        raise ConfigError(f"params.yaml has no '{name}' section; sections present: {sorted(params)}")
    return params[name]


def check_split(section: str, val_fraction: Any, test_fraction: Any, seed: Any) -> None:
    """Validation fractions in (0, 1) that leave a train split, and an integer seed."""
    check_fraction(f"{section}.val_fraction", val_fraction)
    check_fraction(f"{section}.test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"{section}.val_fraction + {section}.test_fraction must be below 1 (the rest is the train split). "
            f"Received: {section}.val_fraction={val_fraction!r}, {section}.test_fraction={test_fraction!r}"
        )
    check_int(f"{section}.seed", seed)


def _from_mapping(cls, name: str, mapping: Any, required: tuple[str, ...] = ()):
    allowed = [f.name for f in dataclasses.fields(cls)]
    return cls(**check_keys(name, mapping, allowed, required))


# The folder the built-in demo digits are written to (the prepare stage's only output), and data.images' default.
DEMO_IMAGES = "data/demo"


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section: where the images are, the one key a user changes to run everything on their own.

    ``images`` is a folder (split folders, class folders or loose images) or a ``.csv`` manifest, relative to the
    project folder or absolute. ``image_root`` is for a CSV source only: the folder its filenames are relative to
    (null: the CSV's own folder).
    """

    images: str = DEMO_IMAGES
    image_root: str | None = None

    def __post_init__(self):
        if not isinstance(self.images, str) or not self.images.strip():
            raise invalid("data.images", self.images, "the path of an image folder or a .csv manifest")
        if self.image_root is not None:
            if not isinstance(self.image_root, str) or not self.image_root.strip():
                raise invalid("data.image_root", self.image_root, "null or the folder a CSV manifest's filenames are relative to")
            if not self.is_csv:
                raise ConfigError(
                    "data.image_root applies to a .csv manifest only (a folder is its own image root): set it to null, "
                    f"or point data.images at a .csv file. Received: data.images={self.images!r}, "
                    f"data.image_root={self.image_root!r}"
                )

    @property
    def is_csv(self) -> bool:
        return Path(self.images).suffix.lower() == ".csv" and not Path(self.images).is_dir()

    @property
    def root(self) -> Path:
        """The folder every image path of this source is relative to."""
        if not self.is_csv:
            return Path(self.images)
        return Path(self.image_root) if self.image_root is not None else Path(self.images).parent

    @classmethod
    def from_params(cls, mapping: Any) -> DataConfig:
        return _from_mapping(cls, "data", mapping, required=("images",))


@dataclass(frozen=True)
class PrepareConfig:
    """How the built-in digits dataset is rendered and split."""

    image_size: int = 32
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    per_class_limit: int | None = None
    seed: int = 0

    def __post_init__(self):
        check_int("prepare.image_size", self.image_size, minimum=8)
        check_split("prepare", self.val_fraction, self.test_fraction, self.seed)
        if self.per_class_limit is not None:
            check_int("prepare.per_class_limit", self.per_class_limit, minimum=3)

    @classmethod
    def from_params(cls, mapping: Any) -> PrepareConfig:
        return _from_mapping(cls, "prepare", mapping)


def param_fields(cls) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are keys of its params section, in order, each described by
    ``metadata["help"]``; a field with ``metadata={"param": False}`` is not a key."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("param", True)]


def param_keys(cls, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """Every key a config dataclass's params section takes, as (dotted key, the field that describes it), in order.

    A nested config (a field whose ``default_factory`` is a config dataclass) gives its keys under its name
    (``split.seed``); a field with ``metadata["defaults"]`` (a config dataclass) is followed by that class's keys,
    which the section takes as defaults for every entry (``extract.pooling``: every layer's pooling).
    """
    keys = []
    for f in param_fields(cls):
        if dataclasses.is_dataclass(f.default_factory):
            keys += param_keys(f.default_factory, f"{prefix}{f.name}.")
        else:
            keys.append((f"{prefix}{f.name}", f))
        if "defaults" in f.metadata:
            keys += param_keys(f.metadata["defaults"], prefix)
    return keys


@dataclass(frozen=True)
class LayerSpec:
    """One layer to extract, with its spatial pooling and storage dtype."""

    name: str = field(metadata={"param": False})  # the key of its entry in extract.layers
    pooling: str = field(
        default="avg",
        metadata={"help": f"spatial pooling of each layer's output: {' | '.join(POOLINGS)} (pyramid: averages over "
                          "1x1, 2x2 and 4x4 grids, 21 x channels: an early block's layout, compact)"},
    )
    dtype: str = field(
        default="float32", metadata={"help": f"storage dtype of each layer's features: {' | '.join(DTYPES)}"}
    )

    def __post_init__(self):
        check_text("extract.layers entry", self.name, "a non-empty layer name")
        self.check_options(f"extract.layers.{self.name}", self.pooling, self.dtype)

    @staticmethod
    def check_options(section: str, pooling: Any, dtype: Any) -> None:
        """Check a pooling and dtype set under ``section``: ``extract`` (every layer's) or ``extract.layers.<name>``."""
        check_one_of(f"{section}.pooling", pooling, POOLINGS)
        check_one_of(f"{section}.dtype", dtype, DTYPES)


@dataclass(frozen=True)
class SplitConfig:
    """How images of a source without split folders or a split column are split: by a hash of each image's content
    keyed by ``seed`` (``pipeline.extraction.dataset.content_split``), so that no image ever moves as the dataset changes."""

    val_fraction: float = field(default=0.15, metadata={"help": "fraction of the images in the val split"})
    test_fraction: float = field(default=0.15, metadata={"help": "fraction of the images in the test split"})
    seed: int = field(default=0, metadata={"help": "keys the content hash that decides each image's split"})

    def __post_init__(self):
        check_split("extract.split", self.val_fraction, self.test_fraction, self.seed)

    @classmethod
    def from_params(cls, mapping: Any) -> SplitConfig:
        return _from_mapping(cls, "extract.split", mapping)


@dataclass(frozen=True)
class AugmentConfig:
    """Seeded augmentation of decoded images (``extract.augment``, ``finetune.<name>.augment``): a random flip,
    a rotation of up to ``rotation`` degrees either way, and a crop keeping at least ``crop`` of each side, resized
    back. ``flip`` none | horizontal | vertical | both; ``rotation`` 0 and ``crop`` 1 turn those off."""

    flip: str = field(default="none", metadata={"help": f"random flip: {' | '.join(FLIPS)}"})
    rotation: float = field(default=10.0, metadata={"help": "rotate by up to this many degrees either way; 0: off"})
    crop: float = field(
        default=0.9, metadata={"help": "crop keeping at least this fraction of each side, resized back; 1: off"}
    )
    seed: int = field(default=0, metadata={"help": "seeds the augmentation stream"})
    # where it was set, for error messages
    section: str = field(default="augment", compare=False, repr=False, metadata={"param": False})

    def __post_init__(self):
        check_one_of(f"{self.section}.flip", self.flip, FLIPS)
        rotation = check_number(f"{self.section}.rotation", self.rotation, 0, 180, what="a number of degrees")
        crop = check_number(
            f"{self.section}.crop", self.crop, 0, 1, open_min=True, what="the smallest kept fraction of a side,"
        )
        object.__setattr__(self, "rotation", rotation)
        object.__setattr__(self, "crop", crop)
        check_int(f"{self.section}.seed", self.seed)

    @classmethod
    def from_params(cls, mapping: Any, section: str = "augment") -> AugmentConfig:
        return cls(**check_keys(section, mapping, [f.name for f in param_fields(cls)]), section=section)

    def to_params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in param_fields(type(self))}


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides the features (backbone, weights, input size, resize, layers) and how they are written.

    ``cluster``: None extracts in this process; ``local:N`` or ``tcp://host:port`` extracts on a Dask cluster in
    shards of ``shard_size`` images (rounded up to a multiple of the batch size), merged into the same file as one
    process writes (see ``pipeline.extraction.shards``). ``augment_views`` K stores K seeded augmented views (``augment``) of
    each train image beside its features. ``reuse`` keeps the outputs of that many most recent configs, so that a
    later extraction with one of them computes only images it has not seen (see ``pipeline.extraction.reuse``; 0: off).
    """

    backbone: str = field(
        default="mobilenet",
        metadata={"help": "a keras.applications name (vgg16, resnet50, mobilenet, ...) or a .keras file"},
    )
    weights: str | None = field(
        default="imagenet", metadata={"help": "imagenet | null (random, NOT pretrained) | a weights file"}
    )
    input_size: tuple[int, int] | None = field(
        default=None,
        metadata={"help": "height and width the images are resized to; null: the backbone's native size",
                  "metavar": ("H", "W")},
    )
    interpolation: str = field(default="bilinear", metadata={"help": f"resize filter: {' | '.join(INTERPOLATIONS)}"})
    decode: str = field(
        default="fast",
        metadata={"help": "fast: a JPEG at least twice the input size is decoded reduced (by 2, 4 or 8, in the DCT "
                          "domain), then resized; exact: every image decoded whole, as keras.utils.load_img does"},
    )
    preprocessing: str | None = field(
        default=None,
        metadata={"help": f"for a .keras backbone only, the input scaling it was trained with: "
                          f"{' | '.join(PREPROCESSING_MODES)}"},
    )
    layers: tuple[LayerSpec, ...] = field(
        default=(),
        metadata={"help": "the layers to extract, all in one forward pass: names (comma-separated), a mapping "
                          f"name -> {{pooling, dtype}}, or {BLOCKS} (the output of every block, in depth order)",
                  "metavar": "NAME,...", "defaults": LayerSpec},
    )
    batch_size: int | str = field(
        default="auto", metadata={"help": "images per batch, or auto: on a GPU the largest that fits (from 1024, halved on out-of-memory errors), 32 on CPU"}
    )
    compression: str | None = field(
        default=None, metadata={"help": f"HDF5 compression (lossless): null | {' | '.join(COMPRESSIONS)}"}
    )
    on_error: str = field(
        default="skip",
        metadata={"help": "skip: undecodable images are left out and listed in <features>.skipped.csv | fail: stop at "
                          "the first"},
    )
    mixed_precision: bool = field(
        default=False,
        metadata={"help": "GPU only (a logged no-op on CPU): float16 compute, features stored in their dtype"},
    )
    xla: bool = field(default=False, metadata={"help": "GPU only (a logged no-op on CPU): XLA-compiled forward pass"})
    pixels: int | None = field(
        default=None,
        metadata={"help": f"also store the decoded images box-downscaled to this side length as layer {PIXELS!r} (the "
                          "raw-pixel baseline); null: none"},
    )
    split: SplitConfig = field(
        default_factory=SplitConfig,
        metadata={"help": "for sources without split folders or a split column: each image's split from a hash of its "
                          "content keyed by the seed"},
    )
    augment_views: int = field(
        default=0, metadata={"help": "also store this many seeded augmented views of each train image; 0: none"}
    )
    augment: AugmentConfig = field(
        default_factory=AugmentConfig,
        metadata={"help": "how the augmented views are made, from the decoded image before the backbone"},
    )
    cluster: str | None = field(
        default=None,
        metadata={"help": "null: one process | local:N: a Dask LocalCluster of N worker processes | tcp://host:port: "
                          "a running Dask scheduler"},
    )
    shard_size: int = field(
        default=1024, metadata={"help": "images per shard on a cluster (rounded up to a multiple of the batch size)"}
    )
    reuse: int = field(
        default=3,
        metadata={"help": "keep the outputs of this many most recent configs, so that a re-run with one of them "
                          "computes only new or changed images; 0: off"},
    )

    def __post_init__(self):
        check_text("extract.backbone", self.backbone, "a model name or a .keras path")
        if self.weights is not None:
            check_text("extract.weights", self.weights, "'imagenet', null or a weights file path")
        if self.input_size is not None:
            size = self.input_size
            if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 32 for s in size
            ):
                raise invalid("extract.input_size", size, "[height, width] (integers >= 32) or null")
            object.__setattr__(self, "input_size", tuple(size))
        check_one_of("extract.interpolation", self.interpolation, INTERPOLATIONS)
        check_one_of("extract.decode", self.decode, DECODE_MODES)
        if self.preprocessing is not None:
            check_one_of("extract.preprocessing", self.preprocessing, PREPROCESSING_MODES)
        if self.batch_size != "auto":
            check_int("extract.batch_size", self.batch_size, minimum=1)
        if self.compression is not None:
            check_one_of("extract.compression", self.compression, COMPRESSIONS)
        check_one_of("extract.on_error", self.on_error, ON_ERROR)
        for flag in ("mixed_precision", "xla"):
            check_bool(f"extract.{flag}", getattr(self, flag))
        if not isinstance(self.split, SplitConfig):
            object.__setattr__(self, "split", SplitConfig.from_params(self.split))
        if self.pixels is not None:
            check_int("extract.pixels", self.pixels, minimum=1)
        check_int("extract.augment_views", self.augment_views, minimum=0)
        if not isinstance(self.augment, AugmentConfig):
            object.__setattr__(self, "augment", AugmentConfig.from_params(self.augment, "extract.augment"))
        check_cluster("extract.cluster", self.cluster)
        check_int("extract.shard_size", self.shard_size, minimum=1)
        check_int("extract.reuse", self.reuse, minimum=0)
        names = [spec.name for spec in self.layers]
        if not names:
            raise invalid("extract.layers", names, "a non-empty list of layer names")
        if len(set(names)) != len(names):
            raise ConfigError(f"extract.layers must not repeat a layer. Received: extract.layers={names}")
        if BLOCKS in names and len(names) > 1:
            raise invalid("extract.layers", names, f"{BLOCKS!r} alone (the output of every block) or layer names without it")
        if PIXELS in names:
            raise ConfigError(
                f"extract.layers must not name {PIXELS!r}: it is the raw-pixel baseline, set by extract.pixels "
                f"(a side length, e.g. 16). Received: extract.layers={names}"
            )

    @classmethod
    def from_params(cls, mapping: Any) -> ExtractConfig:
        options = param_fields(LayerSpec)  # as section keys: the defaults of every layer
        allowed = [f.name for f in param_fields(cls) + options]
        mapping = dict(check_keys("extract", mapping, allowed, required=["layers"]))
        defaults = {f.name: mapping.pop(f.name, f.default) for f in options}
        LayerSpec.check_options("extract", **defaults)  # as written: extract.pooling, not each layer's
        mapping["layers"] = _layer_specs(mapping["layers"], defaults)
        return cls(**mapping)

    @classmethod
    def from_recorded(cls, mapping: Mapping[str, Any]) -> ExtractConfig:
        """The config a features file or model records (its ``extract_config``); one written before ``decode``
        existed decoded every image whole."""
        return cls.from_params({"decode": "exact", **mapping})

    @property
    def layer_names(self) -> list[str]:
        """The backbone layers, in order (the forward pass's outputs)."""
        return [spec.name for spec in self.layers]

    @property
    def blocks(self) -> bool:
        """Whether ``extract.layers`` is ``blocks``, not yet expanded to the backbone's layer names (stage one does)."""
        return self.layer_names == [BLOCKS]

    @property
    def stored_layers(self) -> tuple[LayerSpec, ...]:
        """Every dataset under ``/features``: the backbone layers, then ``pixels`` when ``extract.pixels`` is set."""
        pixels = (LayerSpec(PIXELS, pooling="none", dtype="float32"),) if self.pixels is not None else ()
        return (*self.layers, *pixels)

    def to_params(self) -> dict[str, Any]:
        """This config as a params.yaml ``extract`` section: ``ExtractConfig.from_params(c.to_params()) == c``."""
        params = dataclasses.asdict(self)
        params["input_size"] = list(self.input_size) if self.input_size else None
        params["layers"] = {spec.name: {"pooling": spec.pooling, "dtype": spec.dtype} for spec in self.layers}
        params["augment"] = self.augment.to_params()
        return params


LAYERS_FORM = f"a list of layer names, a mapping name -> {{pooling, dtype}}, or {BLOCKS!r}"


def _layer_specs(layers: Any, defaults: Mapping[str, str]) -> tuple[LayerSpec, ...]:
    """Accept a list of names (using the section's pooling/dtype) or a mapping name -> {pooling, dtype}."""
    written = layers
    if isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    if isinstance(layers, (Mapping, list, tuple)) and not all(isinstance(name, str) and name for name in layers):
        raise invalid("extract.layers", written, LAYERS_FORM)
    if isinstance(layers, Mapping):
        specs = []
        for name, options in layers.items():
            options = check_keys(f"extract.layers.{name}", options or {}, [f.name for f in param_fields(LayerSpec)])
            specs.append(LayerSpec(name=name, **{**defaults, **options}))
        return tuple(specs)
    if isinstance(layers, (list, tuple)):
        return tuple(LayerSpec(name=name, **defaults) for name in layers)
    raise invalid("extract.layers", written, LAYERS_FORM)


SEARCH_METHODS = ("grid", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")


@dataclass(frozen=True)
class SearchConfig:
    """A hyper-parameter search with cross-validation on the train split, declared in a classifier entry.

    ``space`` maps hyper-parameter names to a list of values, or (random search only) to a distribution
    ``{loguniform: [low, high]}``, ``{uniform: [low, high]}`` or ``{randint: [low, high]}``.
    """

    method: str = "grid"
    space: Mapping[str, Any] = field(default_factory=dict)
    cv: int = 3
    n_iter: int = 10
    scoring: str = "accuracy"
    n_jobs: int = 1
    seed: int = 0
    # where it was set (classifiers.<name>.search), for error messages
    section: str = field(default="search", compare=False, repr=False, metadata={"param": False})

    def __post_init__(self):
        where = self.section
        check_one_of(f"{where}.method", self.method, SEARCH_METHODS)
        check_mapping(f"{where}.space", self.space)
        if not self.space:
            raise invalid(f"{where}.space", self.space, "a mapping of at least one hyper-parameter to its values")
        for name, values in self.space.items():
            key = f"{where}.space.{name}"
            if isinstance(values, Mapping):
                if self.method == "grid" or len(values) != 1:
                    distribution = "" if self.method == "grid" else f" or {{one of {list(DISTRIBUTIONS)}: [low, high]}}"
                    raise invalid(key, values, f"a list of values{distribution}")
                (kind, bounds), = values.items()
                check_one_of(f"{key} distribution", kind, DISTRIBUTIONS)
                if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
                    raise invalid(f"{key}.{kind}", bounds, "[low, high]")
            elif not isinstance(values, (list, tuple)) or not values:
                raise invalid(key, values, "a non-empty list of values")
        check_int(f"{where}.cv", self.cv, minimum=2)
        check_int(f"{where}.n_iter", self.n_iter, minimum=1)
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs == 0 or self.n_jobs < -1:
            raise invalid(f"{where}.n_jobs", self.n_jobs, "-1 (all cores) or an integer >= 1")
        check_int(f"{where}.seed", self.seed)

    @classmethod
    def from_params(cls, mapping: Any, section: str = "search") -> SearchConfig:
        allowed = [f.name for f in param_fields(cls)]
        return cls(**check_keys(section, mapping, allowed, required=("space",)), section=section)


OUT_OF_CORE = ("auto", True, False)


@dataclass(frozen=True)
class ClassifierConfig:
    """One entry of the ``classifiers`` section (which estimator, with which hyper-parameters), on one layer.

    ``layer`` comes from the DVC matrix (``train.layers``), not from the entry: a name, or names joined by ``+``
    (or a list) whose features are concatenated. ``out_of_core``: ``auto`` streams from HDF5 when the train
    features exceed ``train.memory_budget``; ``true`` always, ``false`` never. ``passes`` is the number of passes
    over the train split when streaming into ``partial_fit`` (the Keras head uses its own ``epochs``).
    ``augmented`` trains on the clean train rows plus their stored augmented views (``extract.augment_views``);
    val and test always use the clean rows.
    """

    name: str
    estimator: str
    layer: str | tuple[str, ...]
    pool: str | None = None
    scale: bool = True
    pca: int | float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    search: SearchConfig | None = None
    out_of_core: str | bool = "auto"
    passes: int = 5
    augmented: bool = False

    def __post_init__(self):
        where = f"classifiers.{self.name}"
        if self.search is not None and not isinstance(self.search, SearchConfig):
            object.__setattr__(self, "search", SearchConfig.from_params(self.search, f"{where}.search"))
        layers = self.layer.split("+") if isinstance(self.layer, str) else self.layer
        if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) and n for n in layers):
            raise invalid(f"{where}.layer", self.layer, "a layer name, or names joined by '+' (concatenated)")
        check_one_of(f"{where}.out_of_core", self.out_of_core, OUT_OF_CORE)
        check_int(f"{where}.passes", self.passes, minimum=1)
        object.__setattr__(self, "layer", layers[0] if len(layers) == 1 else tuple(layers))
        for flag in ("scale", "augmented"):
            check_bool(f"{where}.{flag}", getattr(self, flag))
        if self.pool is not None and len(self.layers) > 1:
            raise invalid(
                f"{where}.pool", self.pool,
                f"null on a concatenation of layers ({'+'.join(self.layers)}): set extract.pooling instead",
            )
        if self.pool is not None:
            check_one_of(f"{where}.pool", self.pool, ["avg", "max"])  # of stored maps: extract.pooling has pyramid
        if self.pca is not None and not (
            (isinstance(self.pca, int) and not isinstance(self.pca, bool) and self.pca >= 1)
            or (isinstance(self.pca, float) and 0 < self.pca < 1)
        ):
            raise invalid(
                f"{where}.pca", self.pca, "null, a number of components >= 1, or a fraction of variance in (0, 1)"
            )
        check_mapping(f"{where}.params", self.params or {})
        object.__setattr__(self, "params", dict(self.params or {}))

    @property
    def layers(self) -> tuple[str, ...]:
        """The layer names whose features are concatenated, in order (one name for a single layer)."""
        return (self.layer,) if isinstance(self.layer, str) else self.layer

    @property
    def entry(self) -> str:
        """The ``train.layers`` entry: the layer names joined by ``+``, as its model and evaluation files are named."""
        return "+".join(self.layers)

    @property
    def run(self) -> str:
        """``classifier/layer``: this matrix cell's name, as in its model and evaluation folders."""
        return f"{self.name}/{self.entry}"

    @classmethod
    def from_params(cls, classifiers: Any, name: str, layer: str | Sequence[str]) -> ClassifierConfig:
        classifiers = check_mapping("classifiers", classifiers)
        check_one_of("classifier", name, list(classifiers))
        if isinstance(classifiers[name], Mapping) and "layer" in classifiers[name]:
            raise ConfigError(
                f"classifiers.{name}.layer is not a classifier setting: every classifier is trained on every "
                f"entry of train.layers (the DVC matrix); list layers there. "
                f"Received: classifiers.{name}.layer={classifiers[name]['layer']!r}"
            )
        allowed = [f.name for f in dataclasses.fields(cls) if f.name not in ("name", "layer")]
        entry = check_keys(f"classifiers.{name}", classifiers[name], allowed, required=["estimator"])
        return cls(name=name, layer=layer, **entry)


# Peak memory of out-of-core training in blocks of chunk_size bytes (measured: the block being learnt, the next one
# being read, and the float64 temporaries of scaling and the estimators), so chunk_size <= memory_budget / 4.
STREAM_BLOCKS = 4


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section: the layers every classifier is trained on (the matrix) and the memory bound.

    ``layers`` entries are a stored dataset name (a backbone layer, or ``pixels`` for the raw-pixel baseline) or
    names joined by ``+``, concatenated. Training streams from HDF5 in blocks of ``chunk_size`` bytes when a
    layer's train features exceed ``memory_budget`` (see ``ClassifierConfig.out_of_core``). Searches run on
    ``extract.cluster`` (the one configured cluster). ``reuse`` keeps that many most recent runs of each classifier
    x layer pair, so that a classifier's stage trains only the pairs whose inputs changed (see
    ``pipeline.classification.runstore``; 0: off); like ``extract.reuse`` it is not a DVC dependency.
    """

    layers: tuple[str, ...]
    memory_budget: int = 2 << 30
    chunk_size: int = 64 << 20
    reuse: int = 3

    def __post_init__(self):
        layers = self.layers
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(n, str) and n and all(part for part in n.split("+")) for n in layers
        ):
            raise invalid("train.layers", layers, "a non-empty list of layer names (a+b concatenates)")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"train.layers must not repeat an entry. Received: train.layers={list(layers)}")
        object.__setattr__(self, "layers", tuple(layers))
        check_int("train.reuse", self.reuse, minimum=0)
        written = {"chunk_size": self.chunk_size, "memory_budget": self.memory_budget}
        object.__setattr__(self, "memory_budget", check_bytes("train.memory_budget", self.memory_budget))
        object.__setattr__(self, "chunk_size", check_bytes("train.chunk_size", self.chunk_size))
        if self.chunk_size * STREAM_BLOCKS > self.memory_budget:
            raise ConfigError(
                f"train.chunk_size must be at most train.memory_budget / {STREAM_BLOCKS} (streaming holds about "
                f"{STREAM_BLOCKS} blocks' worth at its peak). "
                + "Received: " + ", ".join(f"train.{key}={value!r}" for key, value in written.items())
            )

    @classmethod
    def from_params(cls, mapping: Any) -> TrainConfig:
        return _from_mapping(cls, "train", mapping, required=("layers",))


PROBE_ESTIMATORS = ("logistic_regression",)


@dataclass(frozen=True)
class ProbeConfig:
    """The ``probe`` section: a cheap linear probe on every stored layer (``pipeline.classification.probe``).

    Each layer's rows are standardized on the train split and ``estimator`` is fitted once per ``C`` (in ascending
    order, each fit warm-started from the one before: a regularization path), for at most ``max_iter`` iterations
    to tolerance ``tol``. The ``C`` with the best val accuracy (ties: the smaller, more regularized one) gives the
    layer's test accuracy. ``pixels``: also probe the raw-pixel baseline (layer ``pixels``, when stored) as depth 0.
    """

    estimator: str = "logistic_regression"
    C: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    max_iter: int = 300
    tol: float = 1e-4
    pixels: bool = True

    def __post_init__(self):
        check_one_of("probe.estimator", self.estimator, PROBE_ESTIMATORS)
        grid = self.C
        if not isinstance(grid, (list, tuple)) or not grid or not all(
            isinstance(c, (int, float)) and not isinstance(c, bool) and 0 < c < float("inf") for c in grid
        ):
            raise invalid("probe.C", grid, "a non-empty list of positive numbers (the regularization grid)")
        if len(set(grid)) != len(grid):
            raise invalid("probe.C", grid, "a list of positive numbers without repeats")
        object.__setattr__(self, "C", tuple(sorted(float(c) for c in grid)))
        check_int("probe.max_iter", self.max_iter, minimum=1)
        hint = " (YAML reads a number like 1e-4 without a decimal point as a string: write 1.0e-4)" if isinstance(
            self.tol, str) else ""
        object.__setattr__(self, "tol", check_number("probe.tol", self.tol, 0, open_min=True, hint=hint))
        check_bool("probe.pixels", self.pixels)

    @classmethod
    def from_params(cls, mapping: Any) -> ProbeConfig:
        return _from_mapping(cls, "probe", mapping)


def config_hash(identity: Mapping[str, Any]) -> str:
    """A stable sha256 over JSON-able config data (sorted keys), used to tell feature files apart."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


# The classifiers estimator that fine-tuning continues training: a Keras head, whose .keras layers join the backbone.
FINETUNE_HEAD = "keras_head"
# The folder under data/models and data/eval holding the fine-tuned runs, so no classifier may take this name.
FINETUNE_FOLDER = "finetune"
# The fine-tuned marker: model.json's "kind" of a fine-tuned model (pipeline.finetune: images in, not features), and
# how the leaderboard labels one.
FINETUNED = "fine-tuned"


@dataclass(frozen=True)
class FinetuneConfig:
    """One entry of the ``finetune`` section: the backbone's top layers fine-tuned together with a trained Keras head.

    It starts from ``head`` (a ``classifiers`` entry with estimator ``keras_head``, no ``pool`` or ``pca``) as trained
    on ``layer`` (an ``extract.layers`` entry that is in ``train.layers``; the model ``data/models/<head>/<layer>``).
    The backbone is cut at ``layer``; its layers before ``trainable_from`` are frozen (or all but the last
    ``trainable_layers``: exactly one of the two is set), the rest and the head are trained with Adam at
    ``learning_rate`` for up to ``epochs`` epochs on images streamed from disk (``augment``: seeded flip, rotation and
    crop of train images; null: none), stopping after ``patience`` epochs without a lower val loss and keeping the
    best weights. ``seed`` decides the order of the train images, dropout and the augmentation stream.
    """

    name: str
    head: str
    layer: str
    trainable_from: str | None = None
    trainable_layers: int | None = None
    learning_rate: float = 1e-5
    epochs: int = 3
    batch_size: int = 32
    patience: int = 2
    augment: AugmentConfig | None = None
    seed: int = 0

    def __post_init__(self):
        where = f"finetune.{self.name}"
        if not isinstance(self.name, str) or not self.name or "/" in self.name or self.name in (".", ".."):
            raise invalid("finetune entry", self.name, "named by a folder name (no '/')")
        for key in ("head", "layer"):
            check_text(f"{where}.{key}", getattr(self, key))
        if "+" in self.layer or self.layer == PIXELS:
            raise invalid(
                f"{where}.layer", self.layer,
                f"one backbone layer (the one the backbone is cut at), not {PIXELS!r} or a concatenation",
            )
        if (self.trainable_from is None) == (self.trainable_layers is None):
            raise ConfigError(
                f"{where} must set exactly one of trainable_from (the first trainable layer's name) and "
                f"trainable_layers (train the last k layers). Received: {where}.trainable_from={self.trainable_from!r}, "
                f"{where}.trainable_layers={self.trainable_layers!r}"
            )
        if self.trainable_from is not None:
            check_text(f"{where}.trainable_from", self.trainable_from, "a layer name")
        if self.trainable_layers is not None:
            check_int(f"{where}.trainable_layers", self.trainable_layers, minimum=1)
        hint = ""
        if isinstance(self.learning_rate, str):
            hint = " (YAML reads a number like 1e-5 without a decimal point as a string: write 1.0e-5)"
        rate = check_number(f"{where}.learning_rate", self.learning_rate, 0, 1, open_min=True, open_max=True, hint=hint)
        object.__setattr__(self, "learning_rate", rate)
        check_int(f"{where}.epochs", self.epochs, minimum=1)
        check_int(f"{where}.batch_size", self.batch_size, minimum=1)
        check_int(f"{where}.patience", self.patience, minimum=0)
        check_int(f"{where}.seed", self.seed)
        if self.augment is not None and not isinstance(self.augment, AugmentConfig):
            object.__setattr__(self, "augment", AugmentConfig.from_params(self.augment, f"{where}.augment"))

    @classmethod
    def from_params(cls, finetune: Any, name: str) -> FinetuneConfig:
        """The entry ``name`` of a ``finetune`` section."""
        finetune = check_mapping("finetune", finetune)
        check_one_of("finetune entry", name, list(finetune))
        allowed = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
        return cls(name=name, **check_keys(f"finetune.{name}", finetune[name], allowed, required=["head", "layer"]))

    @classmethod
    def all_from_params(cls, finetune: Any) -> dict[str, FinetuneConfig]:
        """Every entry of a ``finetune`` section, by name; ``{}`` (or null) configures none."""
        finetune = check_mapping("finetune", {} if finetune is None else finetune)
        return {name: cls.from_params(finetune, name) for name in finetune}

    def check_params(self, classifiers: Mapping[str, Any], train: TrainConfig, extract: ExtractConfig) -> None:
        """Check this entry against the other sections: the head is a pool- and PCA-free ``keras_head`` entry of
        ``classifiers``, trained (``train.layers``) on ``layer``, a backbone layer that is extracted."""
        where = f"finetune.{self.name}"
        if FINETUNE_FOLDER in classifiers:
            raise ConfigError(
                f"classifiers.{FINETUNE_FOLDER} would share data/models/{FINETUNE_FOLDER} and data/eval/{FINETUNE_FOLDER} "
                "with the fine-tuned models; rename that classifier. "
                f"Received: classifiers.{FINETUNE_FOLDER}={classifiers[FINETUNE_FOLDER]!r}"
            )
        check_one_of(f"{where}.head", self.head, list(classifiers))
        entry = classifiers[self.head] if isinstance(classifiers[self.head], Mapping) else {}
        if entry.get("estimator") != FINETUNE_HEAD:
            raise ConfigError(
                f"{where}.head must name a classifiers entry with estimator {FINETUNE_HEAD} (its Keras layers are what "
                f"fine-tuning continues training). Received: {where}.head={self.head!r}, whose "
                f"classifiers.{self.head}.estimator={entry.get('estimator')!r}"
            )
        for step in ("pool", "pca"):
            if entry.get(step) is not None:
                raise ConfigError(
                    f"{where}.head must name a classifiers entry without pool or pca: fine-tuning needs a head trained "
                    f"on the layer's features as extracted. Received: {where}.head={self.head!r}, whose "
                    f"classifiers.{self.head}.{step}={entry[step]!r}"
                )
        # extract.layers: blocks names its layers once stage one expands it: fine-tuning checks the features file's
        trained = [layer for layer in train.layers if extract.blocks or layer in extract.layer_names]
        check_one_of(f"{where}.layer", self.layer, trained)
