"""Stage manifests and the provenance that goes into them.

Every stage that writes a directory (prepare, train, export) puts a JSON manifest in it saying what
made it and from what; the stages downstream read it back. One writer and one reader, so every
manifest is written the same way (atomically, sorted keys) and a broken one is the same error anywhere.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from peft_framework.errors import DataError
from peft_framework.io import write_json_atomic

MANIFEST = "manifest.json"
#: distributions whose versions a trained adapter records
VERSIONED = (
    "peft-framework",
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "safetensors",
    "tokenizers",
    "numpy",
)


def write_manifest(directory: str | os.PathLike[str], manifest: dict[str, Any], name: str = MANIFEST) -> Path:
    """Write `manifest` as `directory/name` (atomically, keys sorted: re-runs are byte-identical)."""
    return write_json_atomic(Path(directory) / name, manifest)


def read_manifest(directory: str | os.PathLike[str], name: str = MANIFEST) -> dict[str, Any]:
    """The manifest in `directory`; {} when there is none, DataError when it is not valid JSON."""
    path = Path(directory) / name
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc


def made_by(directory: str | os.PathLike[str], created_by: str, name: str = MANIFEST) -> bool:
    """Whether `directory` holds a readable manifest whose `created_by` is `created_by`."""
    path = Path(directory) / name
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("created_by") == created_by
    except (OSError, ValueError):
        return False


def library_versions() -> dict[str, str | None]:
    """Python's version and those of the libraries that decide what a run computes (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """HEAD of the repository containing `root` and whether tracked files differ from it; None if no git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)} if head else None
