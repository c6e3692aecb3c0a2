"""Tests for dvc.yaml: every pipeline module a stage runs is one of its deps, so DVC never serves stale outputs."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Modules that cannot change what a stage writes: version string, logging set-up, error wording, file renames.
NEUTRAL = {"pipeline/__init__.py", "pipeline/entry.py", "pipeline/validation.py", "pipeline/atomic.py"}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def imported_pipeline_modules(script: str) -> set[str]:
    """The pipeline modules that importing a stage script loads, found by importing it in a fresh interpreter."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='not_main'); "
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'pipeline'))"
    )
    out = subprocess.run([sys.executable, "-c", code, script], cwd=REPO, capture_output=True, text=True, check=True)
    return {Path(line).resolve().relative_to(REPO).as_posix() for line in out.stdout.split()}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_the_modules_it_imports(stage):
    spec = STAGES[stage].get("do", STAGES[stage])  # a foreach stage's template is under `do`
    script = spec["cmd"].split()[1]
    missing = imported_pipeline_modules(script) - set(spec["deps"]) - NEUTRAL
    assert not missing, f"dvc.yaml stage {stage} runs {sorted(missing)} without listing them in deps"
    assert script in spec["deps"]


def test_extract_depends_on_every_extract_key_but_where_it_runs():
    from pipeline.config import PLACEMENT, ExtractConfig

    keys = {field.name for field in dataclasses.fields(ExtractConfig)} | {"pooling", "dtype"}  # section defaults
    declared = {name.removeprefix("extract.") for name in STAGES["extract"]["params"]}
    assert declared == keys - set(PLACEMENT)
    params = yaml.safe_load((REPO / "params.yaml").read_text())["extract"]
    assert declared | set(PLACEMENT) == set(params), "params.yaml's extract section names every key DVC tracks"
