"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``, so this folder is on sys.path)."""

from __future__ import annotations

import argparse


def positive(text: str) -> int:
    """An argparse type: a positive integer, or an error saying what was received."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text}")
    return value
