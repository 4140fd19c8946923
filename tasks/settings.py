"""Project Prefect settings, applied before Prefect is imported.

`prefect.toml` at the project root holds them (analytics off, PREFECT_HOME inside the project, a startup
timeout that survives a first-run database migration on a slow machine). Prefect reads that file only
when the working directory is the project root; this module applies the same values as environment
defaults so they hold wherever the pipeline is started from. A value the user set in the environment
(e.g. their own PREFECT_HOME or PREFECT_API_URL) always wins.

Prefect keeps profiles in $PREFECT_HOME/profiles.toml, so a project-local home would hide the user's
usual profile (a `prefect cloud login`, a `prefect config set PREFECT_API_URL=...`): when that file
exists, it stays the profiles file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PREFECT_TOML = ROOT / "prefect.toml"
USER_PROFILES = Path("~/.prefect/profiles.toml").expanduser()


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib

        with open(path, "rb") as f:
            return tomllib.load(f)
    import toml  # a Prefect dependency

    return toml.load(path)


def env_defaults(table: dict[str, Any], prefix: str = "PREFECT") -> dict[str, str]:
    """prefect.toml keys as Prefect environment variable names: server.analytics_enabled ->
    PREFECT_SERVER_ANALYTICS_ENABLED. Relative paths (`home`, `*_path`) are made absolute from ROOT."""
    out: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}_{key.upper()}"
        if isinstance(value, dict):
            out.update(env_defaults(value, name))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif (key == "home" or key.endswith("_path")) and not Path(str(value)).is_absolute():
            out[name] = str(ROOT / str(value))
        else:
            out[name] = str(value)
    return out


def apply() -> None:
    """Set the project's Prefect settings as environment defaults (call before importing prefect)."""
    if not PREFECT_TOML.is_file():
        return
    defaults = env_defaults(_load_toml(PREFECT_TOML))
    if "PREFECT_HOME" not in os.environ and USER_PROFILES.is_file():
        defaults.setdefault("PREFECT_PROFILES_PATH", str(USER_PROFILES))
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
