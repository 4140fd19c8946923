"""Content hashes of a resolved config: per section and for the whole.

Hashes are taken over the validated model (defaults filled in, values coerced to their types), as
canonical JSON with sorted keys, so key order, comments, formatting, `1` vs `1.0` for a float, or YAML vs
JSON in the file never change them; any changed value does.
"""

from __future__ import annotations

from typing import Any

from peft_framework.config.schema import SECTIONS, Config
from peft_framework.io import canonical_json_sha256


def section_dict(config: Config, name: str) -> dict[str, Any]:
    """One section as a JSON-able dict with YAML key names (the adapter with its type's own keys)."""
    if name not in SECTIONS:
        raise KeyError(f"unknown config section {name!r}; allowed: {', '.join(SECTIONS)}")
    return getattr(config, name).model_dump(mode="json", by_alias=True)


def section_hash(config: Config, name: str) -> str:
    """sha256 (hex) of one section, e.g. `section_hash(config, "adapter")`, or of one key of it by its dotted
    path (`"train.rewards"`: a stage that reads only that key of the section, as DVC's params allow)."""
    section, _, path = name.partition(".")
    content: Any = section_dict(config, section)
    for key in path.split(".") if path else ():
        if not isinstance(content, dict) or key not in content:
            raise KeyError(f"unknown config key {name!r}")
        content = content[key]
    return canonical_json_sha256({"section": name, "content": content})


def config_hash(config: Config) -> str:
    """sha256 (hex) of the whole resolved config."""
    return canonical_json_sha256({name: section_dict(config, name) for name in SECTIONS})
