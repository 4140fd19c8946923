"""Checks of the `data.source` entries, with one message per bad entry naming `data.source[i]`."""

from __future__ import annotations

from typing import Any

_KEYS = ("path", "weight", "count")
_ALLOWED = (
    "allowed: a path string, or {path: STR, weight: NUMBER > 0} or {path: STR, count: INTEGER >= 1} "
    "(weight and count exclusive)"
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
        isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0
    ):
        problems.append(f"{where}.weight: {weight!r}; allowed: a number > 0 (e.g. 0.5 or 2)")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        problems.append(f"{where}.count: {count!r}; allowed: an integer >= 1")
    if weight is not None and count is not None:
        problems.append(
            f"{where}: both weight ({weight!r}) and count ({count!r}) given; allowed: one of them"
        )
    return problems


def check_source_entries(value: Any) -> Any:
    """`value` unchanged when every list entry is a valid source entry; ValueError listing each bad one."""
    if not isinstance(value, list):
        return value
    problems = [p for i, entry in enumerate(value) for p in _entry_problems(i, entry)]
    if problems:
        raise ValueError("; ".join(problems))
    return value
