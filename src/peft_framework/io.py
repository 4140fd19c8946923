"""Atomic output writing and content hashing, shared by every stage.

A stage writes into a temporary sibling directory and renames it into place only when complete, so a
killed run never leaves a half-written output that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `final`; on success it replaces `final` atomically.

    On an exception the temporary directory is removed and any previous `final` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def dir_sha256(path: str | os.PathLike[str]) -> str:
    """Hash of a directory tree: relative paths and file contents, in sorted order (mtimes ignored)."""
    root = Path(path)
    h = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(file.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(file_sha256(file).encode())
        h.update(b"\n")
    return h.hexdigest()


def path_sha256(path: str | os.PathLike[str]) -> str:
    """file_sha256 for a file, dir_sha256 for a directory."""
    return dir_sha256(path) if Path(path).is_dir() else file_sha256(path)


def canonical_json_sha256(data: Any) -> str:
    """Hash of JSON-able data independent of key order and formatting."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def numbers_only(values: dict[str, Any]) -> dict[str, int | float]:
    """The numeric entries of a flat mapping, booleans as 0/1: what a metrics file (DVC) should hold.

    Paths, hashes, names and versions belong in a manifest beside the outputs, not in the metrics that
    `dvc metrics show/diff` and `dvc exp show` lay out as columns.
    """
    out: dict[str, int | float] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)):
            out[key] = value
    return out
