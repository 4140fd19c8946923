"""Faults in the newest code (issue 27, items 1-6, 8, 12-14): the warm runner as exact as a fresh process,
a local Prefect API that never costs a run, bounded config reads, safe sample-data / inspect-data /
promotion. Each test asserts what the user sees: the message, the exit code, the files on disk."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from faultkit import REPO


def _pythonpath() -> str:
    return os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])


def _limit_memory() -> None:  # the unfixed reader would take all memory: fail with MemoryError instead
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def _cli(*argv: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`peft-framework ARGV` in its own process (1 GiB of address space at most)."""
    return subprocess.run(
        [sys.executable, "-m", "peft_framework", *argv],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": _pythonpath()},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
    )


# ------------------------------------------------------------------------- 8: config from a device / FIFO


def test_a_config_from_dev_zero_is_refused_after_the_cap() -> None:
    proc = _cli("validate", "/dev/zero")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: /dev/zero: more than 4194304 bytes; a config file may be at most")
    assert "Traceback" not in proc.stderr


def test_a_config_from_an_endless_fifo_is_refused_after_the_cap(tmp_path: Path) -> None:
    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    stop = threading.Event()

    def write_forever() -> None:
        try:
            with open(fifo, "wb") as f:
                while not stop.is_set():
                    f.write(b"# " + b"x" * 65_000 + b"\n")
        except BrokenPipeError:
            pass  # the reader stopped reading: what we want

    writer = threading.Thread(target=write_forever, daemon=True)
    writer.start()
    try:
        proc = _cli("validate", str(fifo))
    finally:
        stop.set()
    writer.join(timeout=10)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {fifo}: more than 4194304 bytes")
