"""Resolved config -> YAML, and the JSON Schema of the config file (for editors)."""

from __future__ import annotations

from typing import Any

from peft_framework.config.hashing import section_dict
from peft_framework.config.loading import (
    DEFAULT_ADAPTER_TYPE,
    adapter_config_classes,
    config_with_adapter_union,
)
from peft_framework.config.problems import yaml_fields
from peft_framework.config.schema import SECTIONS, Config
from peft_framework.config.yamlio import dump_yaml

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def to_yaml(config: Config) -> str:
    """Every key with its resolved value, sections in pipeline order; `load_config` reads it back equal."""
    return dump_yaml({name: section_dict(config, name) for name in SECTIONS})


def json_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of a config file; `adapter` is a oneOf over the registered adapter types.

    Like the loader, each adapter type's branch tolerates the keys of the other registered types (they
    are ignored with a warning), so a params.yaml holding every type's keys is valid in an editor.
    """
    model = config_with_adapter_union()
    schema = model.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["title"] = "peft-framework config"
    classes = adapter_config_classes()
    all_keys: dict[str, list[str]] = {}
    for name, cls in classes.items():
        for key in yaml_fields(cls):
            all_keys.setdefault(key, []).append(name)
    defs = schema.get("$defs", {})
    for name, cls in classes.items():
        branch = defs.get(cls.__name__)
        if branch is None:
            continue
        props = branch.setdefault("properties", {})
        for key, owners in all_keys.items():
            if key not in props:
                props[key] = {
                    "description": f"a key of adapter type {'/'.join(owners)}: ignored (with a warning) "
                    f"when adapter.type is {name!r}"
                }
        if name != DEFAULT_ADAPTER_TYPE:  # without `type` the default type applies, so the others need it
            branch["required"] = sorted({*branch.get("required", []), "type"})
    return schema
