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
    check_bytes,
    check_cluster,
    check_fraction,
    check_int,
    check_keys,
    check_one_of,
)

POOLINGS = ("none", "avg", "max")
DTYPES = ("float32", "float16")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "hamming", "box", "lanczos")
PREPROCESSING_MODES = ("none", "tf", "torch", "caffe")
COMPRESSIONS = ("gzip", "lzf")
ON_ERROR = ("skip", "fail")
# The raw-pixel baseline's dataset in a features file: the decoded images, downscaled (extract.pixels).
PIXELS = "pixels"
# Where extraction runs and in what pieces: neither changes the file's content, so neither is hashed or recorded.
PLACEMENT = ("cluster", "shard_size")


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
            f"{section}.val_fraction + {section}.test_fraction must be below 1. Received: {val_fraction} + {test_fraction}"
        )
    check_int(f"{section}.seed", seed)


def _from_mapping(cls, name: str, mapping: Any, required: tuple[str, ...] = ()):
    allowed = [f.name for f in dataclasses.fields(cls)]
    return cls(**check_keys(name, mapping, allowed, required))


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


@dataclass(frozen=True)
class LayerSpec:
    """One layer to extract, with its spatial pooling and storage dtype."""

    name: str
    pooling: str = "avg"
    dtype: str = "float32"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"layer names must be non-empty strings. Received: {self.name!r}")
        check_one_of(f"extract.layers.{self.name}.pooling", self.pooling, POOLINGS)
        check_one_of(f"extract.layers.{self.name}.dtype", self.dtype, DTYPES)


@dataclass(frozen=True)
class SplitConfig:
    """How images of a source without split folders or a split column are split: stratified, seeded."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self):
        check_split("extract.split", self.val_fraction, self.test_fraction, self.seed)

    @classmethod
    def from_params(cls, mapping: Any) -> SplitConfig:
        return _from_mapping(cls, "extract.split", mapping)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides the features (backbone, weights, input size, resize, layers) and how they are written.

    ``cluster``: None extracts in this process; ``local:N`` or ``tcp://host:port`` extracts on a Dask cluster in
    shards of ``shard_size`` images (rounded up to a multiple of the batch size), merged into the same file as one
    process writes (see ``pipeline.shards``).
    """

    backbone: str = "mobilenet"
    weights: str | None = "imagenet"
    input_size: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    preprocessing: str | None = None
    layers: tuple[LayerSpec, ...] = ()
    batch_size: int | str = "auto"
    compression: str | None = None
    on_error: str = "skip"
    mixed_precision: bool = False
    xla: bool = False
    pixels: int | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    cluster: str | None = None
    shard_size: int = 1024

    def __post_init__(self):
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError(f"extract.backbone must be a model name or a .keras path. Received: {self.backbone!r}")
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            raise ConfigError(
                f"extract.weights must be 'imagenet', null or a weights file path. Received: {self.weights!r}"
            )
        if self.input_size is not None:
            size = self.input_size
            if not isinstance(size, (list, tuple)) or len(size) != 2:
                raise ConfigError(f"extract.input_size must be [height, width] or null. Received: {size!r}")
            object.__setattr__(self, "input_size", tuple(check_int("extract.input_size", s, 32) for s in size))
        check_one_of("extract.interpolation", self.interpolation, INTERPOLATIONS)
        if self.preprocessing is not None:
            check_one_of("extract.preprocessing", self.preprocessing, PREPROCESSING_MODES)
        if self.batch_size != "auto":
            check_int("extract.batch_size", self.batch_size, minimum=1)
        if self.compression is not None:
            check_one_of("extract.compression", self.compression, COMPRESSIONS)
        check_one_of("extract.on_error", self.on_error, ON_ERROR)
        for flag in ("mixed_precision", "xla"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"extract.{flag} must be true or false. Received: {getattr(self, flag)!r}")
        if isinstance(self.split, Mapping):
            object.__setattr__(self, "split", SplitConfig.from_params(self.split))
        if self.pixels is not None:
            check_int("extract.pixels", self.pixels, minimum=1)
        check_cluster("extract.cluster", self.cluster)
        check_int("extract.shard_size", self.shard_size, minimum=1)
        if not self.layers:
            raise ConfigError("extract.layers must name at least one layer.")
        names = [spec.name for spec in self.layers]
        if len(set(names)) != len(names):
            raise ConfigError(f"extract.layers must not repeat a layer. Received: {names}")
        if PIXELS in names:
            raise ConfigError(
                f"extract.layers must not name {PIXELS!r}: it is the raw-pixel baseline, set by extract.pixels "
                "(a side length, e.g. 16)"
            )

    @classmethod
    def from_params(cls, mapping: Any) -> ExtractConfig:
        allowed = [f.name for f in dataclasses.fields(cls)] + ["pooling", "dtype"]
        mapping = dict(check_keys("extract", mapping, allowed, required=["layers"]))
        defaults = {"pooling": mapping.pop("pooling", "avg"), "dtype": mapping.pop("dtype", "float32")}
        mapping["layers"] = _layer_specs(mapping["layers"], defaults)
        return cls(**mapping)

    @property
    def layer_names(self) -> list[str]:
        """The backbone layers, in order (the forward pass's outputs)."""
        return [spec.name for spec in self.layers]

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
        return params

    def feature_identity(self) -> dict[str, Any]:
        """The fields that change feature values, as plain JSON-able data.

        Left out: batch size (float rounding only), compression (lossless), on_error and the split (they decide
        which rows and which split labels the file has, not the values; the manifest hash covers those), and
        where extraction runs (``PLACEMENT``: a cluster gives the same file).
        """
        identity = dataclasses.asdict(self)
        for key in ("batch_size", "compression", "on_error", "split", *PLACEMENT):
            identity.pop(key)
        return identity


def _layer_specs(layers: Any, defaults: Mapping[str, str]) -> tuple[LayerSpec, ...]:
    """Accept a list of names (using the section's pooling/dtype) or a mapping name -> {pooling, dtype}."""
    if isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    if isinstance(layers, Mapping):
        specs = []
        for name, options in layers.items():
            options = check_keys(f"extract.layers.{name}", options or {}, ["pooling", "dtype"])
            specs.append(LayerSpec(name=name, **{**defaults, **options}))
        return tuple(specs)
    if isinstance(layers, (list, tuple)):
        return tuple(LayerSpec(name=name, **defaults) for name in layers)
    raise ConfigError(f"extract.layers must be a list of layer names or a mapping. Received: {layers!r}")


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

    def __post_init__(self):
        check_one_of("search.method", self.method, SEARCH_METHODS)
        check_keys("search.space", self.space, list(self.space) if isinstance(self.space, Mapping) else [])
        if not self.space:
            raise ConfigError("search.space must name at least one hyper-parameter with its values")
        for name, values in self.space.items():
            if isinstance(values, Mapping):
                if self.method == "grid" or len(values) != 1:
                    raise ConfigError(
                        f"search.space.{name} must be a list of values"
                        + ("" if self.method == "grid" else f" or one of {list(DISTRIBUTIONS)}: [low, high]")
                        + f". Received: {values!r}"
                    )
                (kind, bounds), = values.items()
                check_one_of(f"search.space.{name} distribution", kind, DISTRIBUTIONS)
                if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
                    raise ConfigError(f"search.space.{name}.{kind} must be [low, high]. Received: {bounds!r}")
            elif not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(f"search.space.{name} must be a non-empty list of values. Received: {values!r}")
        check_int("search.cv", self.cv, minimum=2)
        check_int("search.n_iter", self.n_iter, minimum=1)
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs == 0 or self.n_jobs < -1:
            raise ConfigError(f"search.n_jobs must be -1 (all cores) or an integer >= 1. Received: {self.n_jobs!r}")
        check_int("search.seed", self.seed)

    @classmethod
    def from_params(cls, mapping: Any) -> SearchConfig:
        return _from_mapping(cls, "search", mapping, required=("space",))


OUT_OF_CORE = ("auto", True, False)


@dataclass(frozen=True)
class ClassifierConfig:
    """One entry of the ``classifiers`` section (which estimator, with which hyper-parameters), on one layer.

    ``layer`` comes from the DVC matrix (``train.layers``), not from the entry: a name, or names joined by ``+``
    (or a list) whose features are concatenated. ``out_of_core``: ``auto`` streams from HDF5 when the train
    features exceed ``train.memory_budget``; ``true`` always, ``false`` never. ``passes`` is the number of passes
    over the train split when streaming into ``partial_fit`` (the Keras head uses its own ``epochs``).
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

    def __post_init__(self):
        if isinstance(self.search, Mapping):
            object.__setattr__(self, "search", SearchConfig.from_params(self.search))
        layers = self.layer.split("+") if isinstance(self.layer, str) else self.layer
        if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(n, str) and n for n in layers):
            raise ConfigError(
                f"classifiers.{self.name}.layer must be a layer name, or names joined by '+' (concatenated). "
                f"Received: layer={self.layer!r}"
            )
        check_one_of(f"classifiers.{self.name}.out_of_core", self.out_of_core, OUT_OF_CORE)
        check_int(f"classifiers.{self.name}.passes", self.passes, minimum=1)
        object.__setattr__(self, "layer", layers[0] if len(layers) == 1 else tuple(layers))
        if not isinstance(self.scale, bool):
            raise ConfigError(f"classifiers.{self.name}.scale must be true or false. Received: {self.scale!r}")
        if self.pool is not None and len(self.layers) > 1:
            raise ConfigError(f"classifiers.{self.name}.pool works on one layer; pool when extracting to concatenate")
        if self.pool is not None:
            check_one_of(f"classifiers.{self.name}.pool", self.pool, [p for p in POOLINGS if p != "none"])
        if self.pca is not None and not (
            (isinstance(self.pca, int) and not isinstance(self.pca, bool) and self.pca >= 1)
            or (isinstance(self.pca, float) and 0 < self.pca < 1)
        ):
            raise ConfigError(
                f"classifiers.{self.name}.pca must be null, a number of components >= 1, or a fraction of variance "
                f"in (0, 1). Received: pca={self.pca!r}"
            )
        params = self.params or {}
        check_keys(f"classifiers.{self.name}.params", params, list(params) if isinstance(params, Mapping) else [])
        object.__setattr__(self, "params", dict(self.params or {}))

    @property
    def layers(self) -> tuple[str, ...]:
        """The layer names whose features are concatenated, in order (one name for a single layer)."""
        return (self.layer,) if isinstance(self.layer, str) else self.layer

    @property
    def run(self) -> str:
        """``classifier/layer``: this matrix cell's name, as in its model and evaluation folders."""
        return f"{self.name}/{'+'.join(self.layers)}"

    @classmethod
    def from_params(cls, classifiers: Any, name: str, layer: str | Sequence[str]) -> ClassifierConfig:
        classifiers = check_keys("classifiers", classifiers, list(classifiers or {}) if isinstance(classifiers, Mapping) else [])
        check_one_of("classifier", name, list(classifiers))
        if isinstance(classifiers[name], Mapping) and "layer" in classifiers[name]:
            raise ConfigError(
                f"classifiers.{name}.layer is not a classifier setting: every classifier is trained on every "
                "entry of train.layers (the DVC matrix); list layers there"
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
    ``extract.cluster`` (the one configured cluster).
    """

    layers: tuple[str, ...]
    memory_budget: int = 2 << 30
    chunk_size: int = 64 << 20

    def __post_init__(self):
        layers = self.layers
        if isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(n, str) and n and all(part for part in n.split("+")) for n in layers
        ):
            raise ConfigError(
                f"train.layers must be a non-empty list of layer names (a+b concatenates). Received: layers={layers!r}"
            )
        if len(set(layers)) != len(layers):
            raise ConfigError(f"train.layers must not repeat an entry. Received: layers={list(layers)}")
        object.__setattr__(self, "layers", tuple(layers))
        object.__setattr__(self, "memory_budget", check_bytes("train.memory_budget", self.memory_budget))
        object.__setattr__(self, "chunk_size", check_bytes("train.chunk_size", self.chunk_size))
        if self.chunk_size * STREAM_BLOCKS > self.memory_budget:
            raise ConfigError(
                f"train.chunk_size must be at most train.memory_budget / {STREAM_BLOCKS} (streaming holds about "
                f"{STREAM_BLOCKS} blocks' worth at its peak). Received: chunk_size={self.chunk_size}, "
                f"memory_budget={self.memory_budget}"
            )

    @classmethod
    def from_params(cls, mapping: Any) -> TrainConfig:
        return _from_mapping(cls, "train", mapping, required=("layers",))


def config_hash(identity: Mapping[str, Any]) -> str:
    """A stable sha256 over JSON-able config data (sorted keys), used to tell feature files apart."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
