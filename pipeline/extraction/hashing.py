"""Content hashes of files (sha256), computed in threads with a progress bar: what identifies an image or a weights file."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

UNREADABLE = ""  # the hash of a file that cannot be read: it matches nothing, and decoding reports why


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_or_unreadable(path: str | Path) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return UNREADABLE


def hash_files(paths: Sequence[str | Path], workers: int = 8, show_progress: bool = True) -> list[str]:
    """The sha256 of each file, in order (``UNREADABLE`` for a file that cannot be read), ``workers`` at a time."""
    with ThreadPoolExecutor(workers) as pool:
        hashes = list(
            tqdm(pool.map(_sha256_or_unreadable, paths, chunksize=64), total=len(paths), unit="file", desc="hash",
                 disable=not show_progress, leave=False)
        )
    log.info("hashed %d files", len(hashes))
    return hashes
