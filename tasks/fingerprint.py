"""Content fingerprints of the files a stage reads and writes, for cache keys and cache validation.

Inputs are hashed by content (peft_framework.io.path_sha256). Outputs are recorded with their content
hash *and* a cheap stat signature (relative path, size, mtime of every file): a later cache check that
finds the same stat signature trusts the output without re-reading it, as DVC's stat cache does, and
re-hashes only when the signature differs (e.g. after `dvc checkout` rewrote identical files).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from peft_framework.io import canonical_json_sha256, file_sha256, path_sha256

MISSING = "missing"
GLOB_CHARS = frozenset("*?[")


def resolve(root: Path, rel: str) -> Path:
    """`rel` resolved against the project root (absolute paths stay as they are)."""
    path = Path(rel)
    return path if path.is_absolute() else root / path


def expand(root: Path, entry: str) -> list[str]:
    """A config path entry as the sorted list of paths it names; globs are expanded (root-relative)."""
    if not GLOB_CHARS.intersection(entry):
        return [entry]
    pattern = str(resolve(root, entry))
    matches = sorted(glob.glob(pattern, recursive=True))
    if Path(entry).is_absolute():
        return matches
    return [os.path.relpath(m, root) for m in matches]


def content_hashes(root: Path, paths: Iterable[str]) -> dict[str, str]:
    """{path: sha256 of its content, or 'missing'} for files and directories under `root`."""
    out: dict[str, str] = {}
    for rel in paths:
        path = resolve(root, rel)
        out[rel] = path_sha256(path) if path.exists() else MISSING
    return out


def stat_signature(path: Path) -> str:
    """Hash of (relative path, size, mtime_ns) of every file under `path` (or of the file itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    rows = []
    for file in files:
        st = file.stat()
        rows.append([file.relative_to(path).as_posix() if file != path else "", st.st_size, st.st_mtime_ns])
    return canonical_json_sha256(rows)


def record_outputs(root: Path, paths: Iterable[str]) -> dict[str, dict[str, str]]:
    """{path: {sha256, stat}} for each output that exists after a stage ran."""
    out: dict[str, dict[str, str]] = {}
    for rel in paths:
        path = resolve(root, rel)
        if path.exists():
            out[rel] = {"sha256": path_sha256(path), "stat": stat_signature(path)}
    return out


def stale_outputs(root: Path, recorded: dict[str, dict[str, Any]]) -> list[str]:
    """The recorded outputs that are now missing or whose content changed (empty: all intact)."""
    stale = []
    for rel, rec in recorded.items():
        path = resolve(root, rel)
        if not path.exists():
            stale.append(f"{rel} (missing)")
        elif stat_signature(path) != rec.get("stat") and path_sha256(path) != rec.get("sha256"):
            stale.append(f"{rel} (changed)")
    return stale


def source_sha256(base: Path, rels: Iterable[str]) -> str:
    """Hash of the code (sources, templates, package data) in the files/directories `rels` under `base`.

    Bytecode caches are left out: they appear on first import and must not change the hash (the same
    rule .dvcignore gives DVC).
    """
    h = hashlib.sha256()
    for rel in rels:
        top = base / rel
        files = (
            [top]
            if top.is_file()
            else sorted(p for p in top.rglob("*") if p.is_file() and not _is_bytecode(p))
        )
        if not files:
            raise FileNotFoundError(f"no code at {top}")
        for file in files:
            h.update(file.relative_to(base).as_posix().encode())
            h.update(b"\0")
            h.update(file_sha256(file).encode())
            h.update(b"\n")
    return h.hexdigest()


def _is_bytecode(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo")
