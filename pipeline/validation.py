"""Shared argument checks that raise errors naming the parameter, the allowed values and what was received."""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Mapping
from typing import Any


class UserError(Exception):
    """An error the user can fix (bad parameter, bad file, missing weights); entry points print it without a traceback."""


class ConfigError(UserError, ValueError):
    """A user-supplied parameter or input is invalid; the message says which and why."""


def check_one_of(name: str, value: Any, allowed: Collection[Any]) -> Any:
    """Return ``value`` if it is in ``allowed``, else raise a ConfigError listing the allowed values."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {sorted(allowed, key=str)}. Received: {name}={value!r}")
    return value


def check_keys(section: str, mapping: Any, allowed: Collection[str], required: Collection[str] = ()) -> Mapping:
    """Check that ``mapping`` is a mapping with only ``allowed`` keys and every ``required`` key."""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{section} must be a mapping. Received: {section}={mapping!r}")
    for key in mapping:
        if key not in allowed:
            raise ConfigError(
                f"unknown key {section}.{key}{did_you_mean(key, allowed) or '.'} "
                f"Keys of {section} must be one of {sorted(allowed)}."
            )
    missing = [key for key in required if key not in mapping]
    if missing:
        raise ConfigError(f"{section} is missing required key(s) {missing}.")
    return mapping


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) at or above ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(f"{name} must be an integer{bound}. Received: {name}={value!r}")
    return value


def check_fraction(name: str, value: Any) -> float:
    """Return ``value`` as a float if it lies in the open interval (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"{name} must be a number in (0, 1). Received: {name}={value!r}")
    return float(value)


BYTE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def check_bytes(name: str, value: Any, minimum: int = 1) -> int:
    """A size as bytes: an integer, or a string such as ``512MiB``, ``2 GiB`` or ``1.5GB``."""
    if isinstance(value, str):
        number, unit = value.strip().upper(), "B"
        for suffix in sorted(BYTE_UNITS, key=len, reverse=True):
            if number.endswith(suffix):
                number, unit = number[: -len(suffix)].strip(), suffix
                break
        try:
            value = int(float(number) * BYTE_UNITS[unit])
        except ValueError:
            raise ConfigError(
                f"{name} must be a number of bytes or a size like '512MiB' (units {list(BYTE_UNITS)}). "
                f"Received: {name}={value!r}"
            ) from None
    return check_int(name, value, minimum)


def format_bytes(n: int) -> str:
    """``3.1 GiB``, ``12.0 MiB``, ``512 B``: a size for log lines and messages."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# Where parallel work runs (pipeline.cluster): a LocalCluster of N processes, or a running scheduler's address.
LOCAL_CLUSTER = re.compile(r"local:([1-9][0-9]*)")
SCHEDULER_ADDRESS = re.compile(r"tcp://(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):[0-9]{1,5}")


def check_cluster(name: str, cluster: Any) -> str | None:
    """Return ``cluster`` if it is None, ``local:N`` (N >= 1) or a scheduler address ``tcp://host:port``."""
    if cluster is None or (
        isinstance(cluster, str) and (LOCAL_CLUSTER.fullmatch(cluster) or SCHEDULER_ADDRESS.fullmatch(cluster))
    ):
        return cluster
    raise ConfigError(
        f"{name} must be null, 'local:N' (N >= 1 worker processes) or a scheduler address 'tcp://host:port'. "
        f"Received: {name}={cluster!r}"
    )


def did_you_mean(word: str, candidates: Collection[str]) -> str:
    """Return "; did you mean 'x'?" for the closest candidate, or an empty string when none is close."""
    by_lower = {str(c).lower(): str(c) for c in candidates}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""
