"""Config paths: relative ones are taken from the project root the stage runs in."""

from __future__ import annotations

import os
from pathlib import Path


def resolve(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """`path` as is when absolute, else under `root`."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p
