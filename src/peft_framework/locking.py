"""One run per output: a lock file beside each stage output directory, held while the stage runs.

`models/adapter` is guarded by `models/.adapter.lock`. The lock is a kernel `flock` on that file, so it
goes away with its holder however that process ends (crash, `kill -9`): a lock whose holder is dead is
never in the way (the stale file is simply taken over). The file records who holds it (pid, host, start
time, stage) so a second run can say whom it waits for. A second run on the same output fails at once
with `error:` naming the holder, before it changes anything.

Under torchrun only the main process (RANK 0) takes the locks: the other processes of the same run
write nothing the lock protects.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from peft_framework.errors import UserError
from peft_framework.io import check_output_dir

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class LockedError(UserError):
    """Another run holds the lock on an output."""


def _resolve(root: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


#: stage -> the config keys of the output directories it replaces (and so locks)
STAGE_OUTPUTS: dict[str, Callable[[Any], dict[str, str]]] = {
    "prepare": lambda c: {"data.output_dir": c.data.output_dir},
    "train": lambda c: {
        "train.output_dir": c.train.output_dir,
        "train.checkpoint_dir": c.train.checkpoint_dir,
    },
    "evaluate": lambda c: {"eval.plots_dir": c.eval.plots_dir},
    "harness": lambda c: {"harness samples directory": "reports/harness"},
    "export": lambda c: {"export.output_dir": c.export.output_dir},
}


#: stage -> the directories it reads that its outputs must never contain
STAGE_INPUTS: dict[str, Callable[[Any], list[str]]] = {
    "prepare": lambda c: [],
    "train": lambda c: [c.data.output_dir],
    "evaluate": lambda c: [c.data.output_dir, c.train.output_dir],
    "harness": lambda c: [c.train.output_dir],
    "export": lambda c: [c.data.output_dir, c.train.output_dir],
}
#: outputs that are not replaced as a whole (so `check_output_dir` does not apply)
_NOT_REPLACED = {"train.checkpoint_dir"}


def lock_path(output: str | os.PathLike[str]) -> Path:
    output = Path(output)
    return output.parent / f".{output.name}.lock"


def _holder_text(stage: str) -> str:
    return json.dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "stage": stage,
        }
    )


def _describe_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8")[:4096])
        return f"pid {info.get('pid')} on host {info.get('host')}, {info.get('stage')} started {info.get('started')}"
    except (OSError, ValueError, AttributeError):
        return "a process that has not yet recorded itself"


def _acquire(output: Path, key: str, stage: str) -> int | None:
    """An open fd holding the lock on `output`; LockedError when another process holds it."""
    path = lock_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(
                    f"{key}: {str(output)!r} is in use by another run ({_describe_holder(path)}; lock file "
                    f"{path}); wait for it to finish, or give this run other output paths"
                ) from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                log.warning(
                    "%s: this filesystem has no file locks; running without the lock on %s", key, output
                )
                return None
            raise
        try:  # the previous holder may have removed the file between our open and our lock: retry
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, _holder_text(stage).encode())
        return fd


def _release(output: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        lock_path(output).unlink()  # while still held, so nobody locks a file that is going away
    os.close(fd)


@contextlib.contextmanager
def hold_locks(outputs: dict[str, Path], stage: str) -> Iterator[None]:
    """Hold the locks of every output (key -> directory) for the duration of the block."""
    held: list[tuple[Path, int | None]] = []
    try:
        for key, output in outputs.items():
            held.append((output, _acquire(output, key, stage)))
        yield
    finally:
        for output, fd in reversed(held):
            _release(output, fd)


def locked_stage(stage: str) -> Callable[[F], F]:
    """Decorator for a stage function `fn(config, root=".", ...)`: check its output paths, hold their locks
    while it runs, and resolve a relative local `model.name_or_path` against `root`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(config: Any, root: str | os.PathLike[str] = ".", *args: Any, **kwargs: Any) -> Any:
            from peft_framework.models.loading import resolve_model_path

            config = resolve_model_path(config, root)
            if os.environ.get("RANK", "0") != "0":
                return fn(config, root, *args, **kwargs)
            base = Path(root)
            outputs = {k: _resolve(base, v) for k, v in STAGE_OUTPUTS[stage](config).items()}
            inputs = [_resolve(base, v) for v in STAGE_INPUTS[stage](config)]
            for key, value in STAGE_OUTPUTS[stage](config).items():
                if key not in _NOT_REPLACED:
                    check_output_dir(value, key, base, inputs)
            with hold_locks(outputs, stage):
                return fn(config, root, *args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap
