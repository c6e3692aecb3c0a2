"""Tests for dvc.yaml: every pipeline module a stage runs is one of its deps, so DVC never serves stale outputs."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Modules that cannot change what a stage writes: version string, logging set-up, error wording, file renames.
NEUTRAL = {
    "pipeline/__init__.py", "pipeline/extraction/__init__.py", "pipeline/classification/__init__.py",
    "pipeline/entry.py", "pipeline/validation.py", "pipeline/atomic.py",
}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def imported_pipeline_modules(script: str) -> set[str]:
    """The pipeline modules that importing a stage script loads, found by importing it in a fresh interpreter."""
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='not_main'); "
        "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'pipeline'))"
    )
    out = subprocess.run([sys.executable, "-c", code, script], cwd=REPO, capture_output=True, text=True, check=True)
    return {Path(line).resolve().relative_to(REPO).as_posix() for line in out.stdout.split()}


@pytest.mark.slow
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
    declared = {name.removeprefix("extract.") for name in STAGES["extract"]["params"] if name.startswith("extract.")}
    assert declared == keys - set(PLACEMENT)
    params = yaml.safe_load((REPO / "params.yaml").read_text())["extract"]
    assert declared | set(PLACEMENT) == set(params), "params.yaml's extract section names every key DVC tracks"


def test_the_image_source_is_one_params_key_read_by_every_stage_that_reads_images():
    # data.images is a dependency (the folder or CSV) and an argument; data.image_root is a params dependency.
    reading = {"extract": STAGES["extract"], "finetune": STAGES["finetune"]["do"]}
    for name, spec in reading.items():
        assert '--images "${data.images}"' in spec["cmd"], name
        assert "${data.images}" in spec["deps"], name
        assert "data.image_root" in spec["params"], name
    assert not any("data/demo" in str(spec) for name, spec in STAGES.items() if name != "prepare")


def test_no_stage_writes_where_users_keep_their_images():
    # The demo digits have a folder of their own; the folder the README once told users to fill is nobody's output.
    outs = [out for spec in STAGES.values() for out in spec.get("do", spec).get("outs", [])]
    assert STAGES["prepare"]["outs"] == ["data/demo"]
    assert "data/images" not in outs and not any(str(out).startswith("data/images") for out in outs)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["data"] == {"images": "data/demo", "image_root": None}


def test_the_probe_reads_the_features_file_and_the_leaderboard_names_its_best_block():
    probe = STAGES["probe"]
    assert probe["cmd"] == "python stages/probe.py --features data/features.h5 --out data/probe"
    assert "data/features.h5" in probe["deps"] and probe["params"] == ["probe"]  # memory bounds change no output
    assert probe["metrics"] == ["data/probe/metrics.json"]
    plot, image = probe["plots"]
    assert image == "data/probe/curve.png"
    assert plot["data/probe/curve.json"]["x"] == "depth" and plot["data/probe/curve.json"]["y"] == "val_accuracy"
    leaderboard = STAGES["leaderboard"]
    assert "--probe data/probe/metrics.json" in leaderboard["cmd"] and "data/probe/metrics.json" in leaderboard["deps"]


def test_every_plot_template_is_built_in_or_in_the_repository():
    from dvc_render.vega_templates import TEMPLATES

    builtin = {template.DEFAULT_NAME for template in TEMPLATES}
    used = {
        props["template"]
        for spec in STAGES.values() for plot in spec.get("do", spec).get("plots", []) if isinstance(plot, dict)
        for props in plot.values() if "template" in props
    }
    missing = [name for name in used - builtin if not (REPO / ".dvc" / "plots" / f"{name}.json").is_file()]
    assert not missing, f"dvc.yaml uses plot templates that are neither built in nor in .dvc/plots: {missing}"


def test_the_committed_lock_records_exactly_the_pipelines_stages():
    # DVC keeps the lock entry of a stage that left dvc.yaml, and re-reads and rewrites the whole file after every
    # stage it runs: stale entries slowed each stage of a classifier swap by about a second (ruamel parses it).
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        stages = {stage.addressing for stage in repo.index.stages}
    locked = set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"])
    assert locked == stages, f"stale in dvc.lock: {sorted(locked - stages)}; missing: {sorted(stages - locked)}"
