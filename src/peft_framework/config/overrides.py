"""Dotted `key=value` overrides (`adapter.r=32`, `adapter.target_modules=[q_proj,v_proj]`).

The value is parsed as YAML, so numbers, booleans, `null`, lists and mappings work as they do in the
file; quote it (`model.revision='1e3'`) to force a string.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from peft_framework.config.problems import show
from peft_framework.config.yamlio import parse_yaml
from peft_framework.errors import ConfigError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True)
class Override:
    text: str
    path: tuple[str, ...]
    value: Any

    @property
    def key(self) -> str:
        return ".".join(self.path)


def parse_override(text: str) -> Override:
    """`a.b.c=value` -> Override; a ConfigError (one problem line) when it is not of that form."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(
            "invalid override",
            [f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. adapter.r=32"],
        )
    if not _KEY.match(key):
        raise ConfigError(
            "invalid override",
            [
                f"override {text!r}: {key!r} is not a dotted key path; "
                "allowed: names joined by '.', e.g. train.epochs"
            ],
        )
    try:
        value = parse_yaml(raw, f"override {key}")
    except ConfigError as exc:
        raise ConfigError(
            "invalid override", [f"override {text!r}: value is not valid YAML ({exc})"]
        ) from None
    return Override(text, tuple(key.split(".")), value)


def apply_overrides(
    data: dict[str, Any], overrides: Iterable[str]
) -> tuple[dict[str, Any], list[Override], list[str]]:
    """A copy of `data` with the overrides set, the overrides applied, and one problem line per override
    that could not be applied (bad syntax, or a path through a non-mapping value)."""
    out = copy.deepcopy(data)
    applied: list[Override] = []
    problems: list[str] = []
    for text in overrides:
        try:
            ov = parse_override(text)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        node: Any = out
        for depth, part in enumerate(ov.path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(ov.path[: depth + 1])
                problems.append(
                    f"override {text!r}: {prefix} is {show(child)}, not a mapping, "
                    f"so it has no key {ov.path[depth + 1]!r}"
                )
                break
            node = child
        else:
            node[ov.path[-1]] = ov.value
            applied.append(ov)
    return out, applied, problems
