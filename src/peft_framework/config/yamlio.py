"""Reading and writing config files (YAML or JSON).

PyYAML speaks YAML 1.1, in which `2e-4` is a *string* (its float pattern wants a dot). DVC and most
editors use YAML 1.2, where it is a float; the loader and dumper here add the YAML 1.2 float pattern so
`learning_rate: 2e-4` means the same everywhere, and strings that look like such floats are quoted on
output (so `render` round-trips). Duplicate keys, which PyYAML silently collapses to the last one, are
errors with their line and column.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from peft_framework.errors import ConfigError

#: a config file larger than this is refused: at most this many bytes + 1 are read (real ones are a few KB)
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: the most values (mappings, lists and scalars, counted as expanded: YAML aliases repeat what they name)
#: a config may hold; a "billion laughs" alias bomb stops here instead of exhausting memory downstream
MAX_CONFIG_VALUES = 100_000

# YAML 1.2 core-schema floats without a dot (`1e-4`, `-3E5`); the ones with a dot PyYAML already knows.
_FLOAT_12 = re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$")


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader + YAML 1.2 exponent floats + duplicate-key errors."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base constructor reports unhashable keys itself
            if key in seen:
                first = seen[key].start_mark
                raise yaml.constructor.ConstructorError(
                    f"while constructing a mapping (key {key!r} first defined on line {first.line + 1})",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


class ConfigDumper(yaml.SafeDumper):
    """SafeDumper that quotes strings the ConfigLoader would read back as floats."""


for _cls in (ConfigLoader, ConfigDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789"))


def expanded_size(data: Any, limit: int = MAX_CONFIG_VALUES) -> int:
    """How many values `data` holds once every shared (aliased) part is counted each time it is used;
    stops counting past `limit`. Linear in the distinct containers (memoised by identity)."""
    memo: dict[int, int] = {}

    def count(value: Any, depth: int) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        if id(value) in memo:
            return memo[id(value)]
        if depth > 100:
            return limit + 1
        total = 1
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for _, child in items:
            total += count(child, depth + 1)
            if total > limit:
                break
        memo[id(value)] = total
        return total

    return count(data, 0)


def parse_yaml(text: str, origin: str = "<string>") -> Any:
    """Parse YAML text; syntax errors become a ConfigError naming `origin:line:column`. Documents that
    expand to more than MAX_CONFIG_VALUES values or nest more than 100 deep are refused."""
    try:
        data = yaml.load(text, Loader=ConfigLoader)
    except RecursionError:
        raise ConfigError(f"{origin}: invalid YAML: nested too deeply") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark is not None else origin
        what = ": ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: invalid YAML: {exc}") from None
    _check_size(data, origin)
    return data


def _check_size(data: Any, origin: str) -> None:
    if expanded_size(data) > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"{origin}: the document holds more than {MAX_CONFIG_VALUES} values once YAML aliases are "
            "expanded, or nests more than 100 deep; a config is a few hundred values (an alias bomb?)"
        )


def _reject_duplicate_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(text: str, origin: str = "<string>") -> Any:
    try:
        data = json.loads(text, object_pairs_hook=_reject_duplicate_json_keys)
    except RecursionError:
        raise ConfigError(f"{origin}: invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{origin}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None
    except ValueError as exc:
        raise ConfigError(f"{origin}: invalid JSON: {exc}") from None
    _check_size(data, origin)
    return data


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw mapping in a `.yaml`/`.yml`/`.json` file (any other extension is read as YAML)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {str(p)!r}")
    if p.is_dir():
        raise ConfigError(f"config path is a directory, expected a YAML or JSON file: {str(p)!r}")
    try:
        # at most one byte past the cap, whatever the file is: `stat` says 0 bytes for /dev/zero or a FIFO
        with open(p, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(p)!r}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{p}: more than {MAX_CONFIG_BYTES} bytes; a config file may be at most {MAX_CONFIG_BYTES} bytes "
            "(real ones are a few KB)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    data = parse_json(text, str(p)) if p.suffix.lower() == ".json" else parse_yaml(text, str(p))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of sections (model, data, adapter, train, eval, export), "
            f"got {type(data).__name__}"
        )
    return data


def dump_yaml(data: Any) -> str:
    """Block-style YAML in the given key order, readable back by `parse_yaml` to equal data."""
    return yaml.dump(
        data, Dumper=ConfigDumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100
    )
