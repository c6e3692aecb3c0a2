"""Atomic outputs: write beside the final path, rename into place only when complete."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.validation import UserError


def temporary_sibling(final: str | Path, suffix: str = ".partial") -> Path:
    """The temporary path beside ``final`` that work is written to before the rename."""
    final = Path(final)
    return final.with_name(f".{final.name}{suffix}")


def check_writable(path: str | Path) -> None:
    """Refuse, in one line naming it, an output ``path`` whose folder is missing or cannot be written. Tried by
    creating and removing a file there: permission bits prove nothing to root."""
    path = Path(path)
    folder, probe = path.parent, temporary_sibling(path, ".probe.partial")
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: its folder {folder} does not exist; create it first")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write {path}: no file can be created in {folder} ({error.strerror})") from None


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` reports a full disk (ENOSPC; HDF5 says so only in its message)."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


@contextlib.contextmanager
def disk_full_reported(path: str | Path) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into a one-line UserError naming it."""
    try:
        yield
    except (OSError, ValueError) as error:
        if not is_disk_full(error):
            raise
        raise UserError(f"cannot write {path}: no space left on device; free some space and run the same command "
                        "again") from error


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` on success and is removed on failure."""
    final = Path(final)
    tmp = temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``final`` on success and is removed on failure."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
