"""A temporary copy of this repository as its own git + DVC project, and the commands the end-to-end tests run in it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(args, cwd):
    """Run a command with this interpreter's environment first on PATH and the copy's own code importable."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def dvc(*args, cwd):
    return run([sys.executable, "-m", "dvc", *args], cwd)


def edit_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_project(dest: Path, edit) -> Path:
    """A new git repository at ``dest`` holding the project's files as they are in the working tree (tracked ones and
    new ones git does not ignore: what `git add -A` would commit), with params.yaml changed by ``edit``, committed."""
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(listed, cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in files:
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    edit_params(dest, edit)
    run(["git", "init", "-q"], dest)
    run([*GIT, "add", "-A"], dest)
    run([*GIT, "commit", "-qm", "copy"], dest)
    return dest


def tiny_data(params):
    """100 digits at 16x16, features at 64x64."""
    params["prepare"].update(image_size=16, per_class_limit=10)
    params["extract"].update(input_size=[64, 64], batch_size=32)


def read_json(path: Path):
    return json.loads(path.read_text())


def stages_run(log: str) -> list[str]:
    return sorted(re.findall(r"Running stage '([^']+)'", log))
