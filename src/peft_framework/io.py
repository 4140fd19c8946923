"""Atomic output writing and content hashing, shared by every stage.

A stage writes into a temporary sibling directory and renames it into place only when complete, so a
killed run never leaves a half-written output that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from peft_framework.errors import UserError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


#: written into every directory `atomic_dir` creates: the proof that this framework wrote it, and so may
#: replace it (its content is fixed, so directory hashes stay reproducible)
OUTPUT_MARKER = ".peft-framework-output"
_MARKER_TEXT = '{"written_by": "peft-framework"}\n'
# files by which outputs written before OUTPUT_MARKER existed are recognised
_LEGACY_MANIFESTS = ("peft_framework_export.json", "base_model.json", "eval_comparison.json")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(path: Path, directory: bool) -> None:
    """mkdtemp/mkstemp create 0700/0600; a finished output gets the modes any new file would (umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _follow_umask_tree(top: Path) -> None:
    """`_follow_umask` for a whole output directory (some writers, e.g. safetensors, create files 0600), so
    the others in a team can read what the framework wrote when their umask lets them."""
    mask = _umask()
    os.chmod(top, 0o777 & ~mask)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o777 & ~mask)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _is_framework_output(path: Path) -> bool:
    if (path / OUTPUT_MARKER).is_file():
        return True
    if any((path / name).is_file() for name in _LEGACY_MANIFESTS):
        return True
    try:
        created = json.loads((path / "manifest.json").read_text(encoding="utf-8")).get("created_by", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(created, str) and created.startswith("peft_framework")


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or child.is_relative_to(parent)


def check_output_dir(
    final: str | os.PathLike[str],
    key: str,
    root: str | os.PathLike[str] | None = None,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """The one rule for what a stage may replace: a missing or empty directory, or one this framework
    wrote (it holds OUTPUT_MARKER); never the project root, the working directory, an ancestor of either,
    nor a directory holding one of the stage's inputs. UserError naming `key` otherwise. A path outside
    `root` is allowed with a warning."""
    final = Path(final)
    value = f"{key}: {str(final)!r}"
    if root is not None and not final.is_absolute():
        final = Path(root) / final
    target = final.resolve()
    protected = [("the working directory", Path.cwd().resolve())]
    if root is not None:
        protected.insert(0, ("the project root", Path(root).resolve()))
    for what, path in protected:
        if _inside(path, target):
            raise UserError(
                f"{value} is {what} or contains it ({path}); the output directory is replaced as a whole, "
                "so this would delete it. Allowed: a directory of its own, e.g. models/merged"
            )
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if _inside(source, target):
            raise UserError(
                f"{value} contains the input {str(item)!r}; the output directory is replaced as a whole, "
                "so this would delete it. Allowed: a directory that holds no input"
            )
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise UserError(f"{value} exists and is not a directory ({target}); allowed: a directory path")
        if any(target.iterdir()) and not _is_framework_output(target):
            raise UserError(
                f"{value} already exists, is not empty and was not written by peft-framework (no "
                f"{OUTPUT_MARKER} in {target}); refusing to replace it. Allowed: a new or empty directory, "
                "or one this framework wrote; move that directory away or choose another path"
            )
    if root is not None and not _inside(target, Path(root).resolve()):
        log.warning("%s is outside the project root %s", value, Path(root).resolve())
    return final


def clean_stale_temps(final: str | os.PathLike[str]) -> list[Path]:
    """Leftovers of killed runs beside `final`: `.X.tmp-PID-*`, `.X.base-PID-*` (removed) and `.X.old-PID`
    (put back as `final` when `final` is missing: it is the last good output, hidden by a killed swap).
    Only entries of processes that are no longer alive are touched. Returns what was removed."""
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        return []
    removed: list[Path] = []
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|base|old|stale)-(\d+)(-.*)?$")
    for entry in sorted(parent.iterdir()):
        match = pattern.match(entry.name)
        if not match or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not final.exists() and entry.is_dir():
            os.replace(entry, final)
            log.warning("restored %s from %s, left there by a run killed while replacing it", final, entry)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.warning(
            "removed %d leftover(s) of killed runs beside %s: %s",
            len(removed),
            final,
            ", ".join(p.name for p in removed),
        )
    return removed


def temp_prefix(final: str | os.PathLike[str], kind: str = "tmp") -> str:
    """`.NAME.KIND-PID-`: the prefix of a scratch directory beside `final` that `clean_stale_temps` knows."""
    return f".{Path(final).name}.{kind}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_dir(
    final: str | os.PathLike[str],
    *,
    key: str = "output_dir",
    root: str | os.PathLike[str] | None = None,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `final`; on success it replaces `final` atomically.

    `final` must pass `check_output_dir` (checked before and again at the swap): this never replaces a
    directory the framework did not write. On an exception the temporary directory is removed and any
    previous `final` is left untouched. Leftovers of killed runs are cleaned up first.
    """
    final = Path(final)
    clean_stale_temps(final)
    check_output_dir(final, key, root, inputs)
    fault_point(f"atomic_dir.begin:{key}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final), dir=final.parent))
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
        _follow_umask_tree(tmp)
        check_output_dir(final, key, root, inputs)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    fault_point(f"atomic_dir.swap:{key}")
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fault_point(name: str) -> None:
    """Test hook for the fault-injection suite: with PEFT_FRAMEWORK_FAULT=NAME in the environment the
    process SIGKILLs itself here, as a crash or `kill -9` at exactly this write boundary would."""
    if os.environ.get("PEFT_FRAMEWORK_FAULT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _follow_umask(Path(tmp), directory=False)
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
