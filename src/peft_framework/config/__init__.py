"""The experiment config: typed schema, YAML/JSON loading with overrides, hashing, rendering.

from peft_framework.config import load_config, section_hash
config = load_config("params.yaml", ["adapter.r=32", "train.max_steps=10"])
section_hash(config, "adapter")
"""

from peft_framework.config.hashing import config_hash, section_dict, section_hash
from peft_framework.config.loading import (
    ConfigWarning,
    adapter_config_classes,
    load_config,
    load_config_with_warnings,
    resolve_config,
    resolve_config_with_warnings,
)
from peft_framework.config.render import json_schema, to_yaml
from peft_framework.config.schema import SECTIONS, Config
from peft_framework.errors import ConfigError

__all__ = [
    "SECTIONS",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "adapter_config_classes",
    "config_hash",
    "json_schema",
    "load_config",
    "load_config_with_warnings",
    "resolve_config",
    "resolve_config_with_warnings",
    "section_dict",
    "section_hash",
    "to_yaml",
]
