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


def invalid(name: str, value: Any, what: str, hint: str = "") -> ConfigError:
    """The one form of every parameter error, as Keras and scikit-learn write theirs:
    ``<name> must be <what>. Received: <name>=<value!r>``; ``name`` is the key as the user wrote it (its full path),
    ``hint`` follows (`` Did you mean 'x'?``)."""
    return ConfigError(f"{name} must be {what}. Received: {name}={value!r}{hint}")


def check_one_of(name: str, value: Any, allowed: Collection[Any]) -> Any:
    """Return ``value`` if it is in ``allowed``, else raise a ConfigError listing the allowed values."""
    if value not in allowed:
        raise invalid(name, value, f"one of {sorted(allowed, key=str)}")
    return value


def check_mapping(name: str, value: Any) -> Mapping:
    """Return ``value`` if it is a mapping (a YAML section or entry)."""
    if not isinstance(value, Mapping):
        raise invalid(name, value, "a mapping")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a boolean (YAML true or false; not 'yes', 0 or 1)."""
    if not isinstance(value, bool):
        raise invalid(name, value, "true or false")
    return value


def check_text(name: str, value: Any, what: str = "a non-empty string") -> str:
    """Return ``value`` if it is a non-empty string (a name or a path); ``what`` says which."""
    if not isinstance(value, str) or not value:
        raise invalid(name, value, what)
    return value


def interval(minimum: float | None, maximum: float | None, open_min: bool = False, open_max: bool = False) -> str:
    """``in (0, 1]``, ``>= 0``, ``< 1``: the range of a number, for messages."""
    if minimum is not None and maximum is not None:
        return f"in {'(' if open_min else '['}{minimum}, {maximum}{')' if open_max else ']'}"
    if minimum is not None:
        return f"{'>' if open_min else '>='} {minimum}"
    if maximum is not None:
        return f"{'<' if open_max else '<='} {maximum}"
    return ""


def check_number(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    open_min: bool = False,
    open_max: bool = False,
    what: str = "a number",
    hint: str = "",
) -> float:
    """Return ``value`` as a float if it is an int or float (not a bool, not NaN) within the bounds: ``minimum`` and
    ``maximum`` are included unless ``open_min`` / ``open_max``. ``what`` names the quantity (``a number of
    degrees``), ``hint`` is added to the message (`` (write 1.0e-5)``)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
    if ok and minimum is not None:
        ok = value > minimum if open_min else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if open_max else value <= maximum
    if not ok:
        bounds = interval(minimum, maximum, open_min, open_max)
        raise invalid(name, value, f"{what}{' ' + bounds if bounds else ''}{hint}")
    return float(value)


def check_keys(section: str, mapping: Any, allowed: Collection[str], required: Collection[str] = ()) -> Mapping:
    """Check that ``mapping`` is a mapping with only ``allowed`` keys and every ``required`` key."""
    check_mapping(section, mapping)
    for key in mapping:
        if key not in allowed:
            what = f"a key of {section}, one of {sorted(allowed)}"
            raise invalid(f"{section}.{key}", mapping[key], what, did_you_mean(key, allowed))
    missing = [key for key in required if key not in mapping]
    if missing:
        raise invalid(section, dict(mapping), f"a mapping with the required key(s) {missing}")
    return mapping


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) at or above ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise invalid(name, value, f"an integer{bound}")
    return value


def check_fraction(name: str, value: Any) -> float:
    """Return ``value`` as a float if it lies in the open interval (0, 1)."""
    return check_number(name, value, 0, 1, open_min=True, open_max=True)


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
            raise invalid(name, value, f"a number of bytes or a size like '512MiB' (units {list(BYTE_UNITS)})") from None
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
    raise invalid(name, cluster, "null, 'local:N' (N >= 1 worker processes) or a scheduler address 'tcp://host:port'")


def did_you_mean(word: str, candidates: Collection[str]) -> str:
    """Return " Did you mean 'x'?" for the closest candidate, or an empty string when none is close."""
    by_lower = {str(c).lower(): str(c) for c in candidates}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" Did you mean {by_lower[close[0]]!r}?" if close else ""
