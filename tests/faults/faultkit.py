"""Helpers of the fault-injection suite: a tiny project (a few dozen instruction rows, the built-in
tiny Llama, three training steps) prepared and trained once per session, and a helper that runs the CLI in
process and returns what the user sees (exit code, stdout, stderr).

Kills happen at named write boundaries: `PEFT_FRAMEWORK_FAULT=<point>` makes the process SIGKILL itself
there (see `peft_framework.io.fault_point`); only those tests start a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: small enough for seconds per run: 3 optimizer steps of 4 rows, a checkpoint after each
TINY = [
    "train.max_steps=3",
    "train.batch_size=4",
    "train.save_steps=1",
    "train.save_total_limit=3",
    "train.logging_steps=1",
    "train.report_to=none",
    "train.learning_rate=0.01",
    "data.max_seq_len=256",
    "data.split.validation=0.0",
    "data.split.test=0.2",
    "eval.generate=false",
]
WORDS = ["red", "blue", "green", "cat", "dog", "bird", "fish", "tree", "house", "river", "stone", "cloud"]


def write_raw(path: Path, rows: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        word = WORDS[i % len(WORDS)]
        times = 1 + i % 3
        lines.append(
            json.dumps(
                {"instruction": f"Repeat {word} {times} times ({i}).", "output": " ".join([word] * times)}
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


Run = Callable[..., tuple[int, str, str]]


def new_project(root: Path) -> Path:
    """params.yaml (the tiny-Llama preset) and the raw data; nothing prepared or trained yet."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params" / "tiny-llama.yaml", root / "params.yaml")  # the built-in tiny Llama
    write_raw(root / "data" / "raw" / "instructions.jsonl")
    return root


def run_killed(root: Path, fault: str, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`peft-framework ARGV...` in a new process that SIGKILLs itself at fault point FAULT."""
    env = {
        **os.environ,
        "PEFT_FRAMEWORK_FAULT": fault,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "peft_framework", *argv],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary(stdout: str) -> dict:
    """The JSON summary a stage command prints (after anything transformers prints to stdout)."""
    return json.loads(stdout[stdout.index("{\n") :])
