"""Checks of the `data.source` entries, with one message per bad entry naming `data.source[i]`."""

from __future__ import annotations

import math
import posixpath
from typing import Any

#: bounds that keep a mix within memory: weights and counts are checked here (validate), the rows a
#: weight gives once the kept rows are known (`peft_framework.data.mixing`)
MAX_WEIGHT = 1000
MAX_MIXED_ROWS = 100_000_000
_KEYS = ("path", "weight", "count")
_ALLOWED = (
    f"allowed: a path string, or {{path: STR, weight: NUMBER > 0 and <= {MAX_WEIGHT}}} or "
    f"{{path: STR, count: INTEGER 1..{MAX_MIXED_ROWS}}} (weight and count exclusive)"
)


def _entry_problems(i: int, entry: Any) -> list[str]:
    where = f"data.source[{i}]"
    if isinstance(entry, str):
        return [] if entry else [f"{where}: empty path; {_ALLOWED}"]
    if not isinstance(entry, dict):
        return [f"{where}: {entry!r} is a {type(entry).__name__}; {_ALLOWED}"]
    problems = []
    unknown = sorted(str(k) for k in entry if k not in _KEYS)
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)} in {entry!r}; {_ALLOWED}")
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        problems.append(f"{where}.path: {path!r} is not a non-empty path string; {_ALLOWED}")
    weight, count = entry.get("weight"), entry.get("count")
    if weight is not None and (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or not 0 < weight <= MAX_WEIGHT
    ):
        problems.append(
            f"{where}.weight: {weight!r}; allowed: a number > 0 (finite, at most {MAX_WEIGHT}; e.g. 0.5 or 2)"
        )
    if count is not None and (
        isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_MIXED_ROWS
    ):
        problems.append(f"{where}.count: {count!r}; allowed: an integer >= 1 (at most {MAX_MIXED_ROWS})")
    if weight is not None and count is not None:
        problems.append(
            f"{where}: both weight ({weight!r}) and count ({count!r}) given; allowed: one of them"
        )
    return problems


def _repeated_paths(value: list) -> list[str]:
    """An entry naming the same path as an earlier one would get none of its rows (a file belongs to the
    first entry naming it): one problem per repeat, naming both entries."""
    first: dict[str, int] = {}
    problems = []
    for i, entry in enumerate(value):
        path = entry if isinstance(entry, str) else entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str) or not path:
            continue
        key = posixpath.normpath(path.strip())
        if key in first:
            j = first[key]
            problems.append(
                f"data.source[{i}]: {path!r} is already data.source[{j}]; allowed: each path once "
                "(to take its rows more often, give the one entry a weight or a count)"
            )
        else:
            first[key] = i
    return problems


def check_source_entries(value: Any) -> Any:
    """`value` unchanged when every list entry is a valid source entry; ValueError listing each bad one."""
    if not isinstance(value, list):
        return value
    problems = [p for i, entry in enumerate(value) for p in _entry_problems(i, entry)]
    problems += _repeated_paths(value)
    counts = [e["count"] for e in value if isinstance(e, dict) and isinstance(e.get("count"), int)]
    if not problems and sum(counts) > MAX_MIXED_ROWS:
        problems.append(
            f"data.source: the counts add up to {sum(counts)} rows; allowed: at most {MAX_MIXED_ROWS} in all"
        )
    if problems:
        raise ValueError("; ".join(problems))
    return value
