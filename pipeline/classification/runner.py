"""Stage two's runner: one classifier trained and evaluated on every ``train.layers`` entry, in one process."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.classification.classifiers import configured_estimator
from pipeline.classification.evalfiles import EvalFiles
from pipeline.classification.evaluate import evaluate_model
from pipeline.classification.runstore import RunStore, run_key
from pipeline.classification.train import train_classifier
from pipeline.config import ClassifierConfig, TrainConfig
from pipeline.store import read_attrs
from pipeline.validation import check_one_of, invalid

log = logging.getLogger(__name__)


def run_classifier(
    features: str | Path,
    classifiers: Mapping[str, Any],
    name: str,
    train: TrainConfig,
    models_dir: str | Path,
    eval_dir: str | Path,
    reuse_dir: str | Path | None = None,
    cluster: str | None = None,
) -> dict[str, dict[str, Any]]:
    """What the DVC stage ``train@<name>`` runs: the ``classifiers`` entry ``name`` trained on every ``train.layers``
    entry (``pipeline.classification.train``) into ``models_dir/<entry>`` and evaluated on the test split into
    ``EvalFiles(eval_dir, <entry>)``; returns the test metrics per entry.

    Every entry is checked before anything trains. With ``reuse_dir`` (``data/.train.reuse``), an entry whose inputs
    are those of one of its last ``train.reuse`` runs is copied back from ``reuse_dir/<name>`` instead of trained
    (``pipeline.classification.runstore``), so a stage re-run for a new layer trains that layer only.
    """
    configs = [ClassifierConfig.from_params(classifiers, name, layer) for layer in train.layers]
    stored = sorted(read_attrs(features)["layers"])
    for config in configs:
        configured_estimator(config)  # a wrong estimator or hyper-parameter fails before anything trains
        missing = [layer for layer in config.layers if layer not in stored]
        if len(config.layers) == 1:
            check_one_of("train.layers", config.layer, stored)
        elif missing:
            raise invalid(
                "train.layers", config.entry, f"layers of {features} joined by '+' ({missing[0]!r} is not "
                f"one of {stored})",
            )
    store = RunStore(Path(reuse_dir) / name, train.reuse) if reuse_dir is not None else None
    results, reused = {}, []
    for config in configs:
        run = config.entry
        model_dir, files = Path(models_dir) / run, EvalFiles(Path(eval_dir), run)
        key = run_key(features, config, train) if store is not None else None
        if store is not None and store.restore(run, key, model_dir, files):
            log.info("%s on %s: its inputs are those of a kept run; model and evaluation copied back", name, run)
            results[run] = json.loads(files.metrics.read_text())
            reused.append(run)
            continue
        train_classifier(
            features, config, model_dir, cluster=cluster, memory_budget=train.memory_budget, chunk_size=train.chunk_size
        )
        results[run] = evaluate_model(model_dir, features, files)
        if store is not None:
            store.save(run, key, model_dir, files)
    log.info("%s: %d layer(s) trained, %d copied back unchanged (%s)", name, len(configs) - len(reused), len(reused),
             ", ".join(reused) or "none")
    return results
