"""Where stage two's evaluation files go: one folder per kind, one file per run (a layer or a fine-tuning entry)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# An evaluation's files by kind: a folder each under the group's folder (a classifier, or finetune), one file per run
# (a layer, or a fine-tuning entry), so that DVC declares each kind once per stage, as a directory, with its template.
KINDS = ("metrics", "confusion", "per_class", "learning_curve")


@dataclass(frozen=True)
class EvalFiles:
    """Where one run's evaluation goes: ``<root>/<kind>/<run>.json`` for each of ``KINDS``, and the confusion image
    ``<root>/confusion/<run>.png`` (``root``: ``data/eval/<classifier>`` or ``data/eval/finetune``)."""

    root: Path
    run: str

    def path(self, kind: str, suffix: str = ".json") -> Path:
        return Path(self.root) / kind / f"{self.run}{suffix}"

    @property
    def metrics(self) -> Path:
        return self.path("metrics")

    @property
    def confusion_png(self) -> Path:
        return self.path("confusion", ".png")

    def named(self) -> dict[str, Path]:
        """Every file of the run, by a name of its own: ``metrics.json``, ..., ``confusion.png``."""
        return {**{f"{kind}.json": self.path(kind) for kind in KINDS}, "confusion.png": self.confusion_png}
