"""Foreseeable failures that are not bugs: the one place that turns them into `error: <path>: <what>`.

The CLI (and the Prefect stage tasks) call `describe_failure(exc)` on any exception a command raises:
a `UserError` prints as it is; I/O errors (disk full, permission denied, a missing file), corrupt or
truncated files (safetensors, torch zip archives, JSON, text that is not UTF-8) and input nested too deeply
become one line naming the file and what is wrong with it, exit 2. Anything else (TypeError, KeyError,
AttributeError, ...) is a bug of ours and keeps its traceback.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import zipfile
from pathlib import Path
from types import TracebackType

from peft_framework.errors import UserError

# locals that name the file being read or written, most specific first
_PATH_NAMES = (
    "filename",
    "file",
    "path",
    "weights",
    "checkpoint",
    "resume_from_checkpoint",
    "f",
    "pretrained_model_name_or_path",
    "tmp",
    "final",
)
_CORRUPT_TORCH = ("PytorchStreamReader", "failed finding central directory", "invalid header or archive")
_MAX_MESSAGE = 2000


def _path_in_traceback(tb: TracebackType | None) -> str | None:
    """The file the innermost frames were working on (a local variable naming an existing path)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in _PATH_NAMES:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and not isinstance(value, bytes):
                try:
                    if Path(value).exists():
                        return os.fspath(value)
                except (OSError, ValueError):
                    continue
    return None


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _what(exc: BaseException) -> str | None:
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on device; free some space and run again (nothing was replaced: outputs are written whole or not at all)"
        if exc.errno == errno.EDQUOT:
            return "disk quota exceeded; free some space and run again (nothing was replaced)"
        if exc.strerror:
            return exc.strerror
        return _short(str(exc)) or type(exc).__name__
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, RecursionError):
        return "nested too deeply to read (a hostile or corrupt file?)"
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, (zipfile.BadZipFile, pickle.UnpicklingError, EOFError)):
        return f"corrupt or truncated file ({_short(str(exc))})"
    if type(exc).__name__ == "SafetensorError":
        return f"not a readable safetensors file, corrupt or truncated ({_short(str(exc))})"
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _CORRUPT_TORCH):
        return f"corrupt or truncated torch file ({_short(str(exc))})"
    return None


def describe_failure(exc: BaseException) -> str | None:
    """`<path>: <what>` for a foreseeable failure, None for a bug (which should keep its traceback)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, (BrokenPipeError, KeyboardInterrupt)):
        return None
    what = _what(exc)
    if what is None:
        return None
    path = None
    if isinstance(exc, OSError):
        path = exc.filename
        if exc.filename2:
            path = f"{exc.filename} -> {exc.filename2}"
    if path is None:
        path = _path_in_traceback(exc.__traceback__)
    return f"{path}: {what}" if path else what


class FileProblem(UserError):
    """A file the run needs is unreadable, corrupt, or cannot be written (see `describe_failure`)."""


def as_user_error(exc: BaseException) -> UserError | None:
    """`exc` as a UserError when it is foreseeable (for callers that re-raise), else None."""
    if isinstance(exc, UserError):
        return exc
    message = describe_failure(exc)
    return FileProblem(message) if message is not None else None
