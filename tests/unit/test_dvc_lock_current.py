"""The committed dvc.lock matches the committed code and params (issue 28 item 8).

A stale lock makes a fresh clone's first `dvc repro` rerun every stage and rewrite it. The check runs DVC
itself (`dvc status --json`) on a copy of the project's files (tracked, plus new files git does not ignore:
what the next commit holds), so no output, cache or state of the working tree takes part. Outputs are
not in that copy's cache, so only dependencies are judged: params values, and deps that are project
files (code); deps produced by other stages (data/raw, data/prepared, models/...) are outputs, not code.
After changing code or params, `dvc repro` and commit the new dvc.lock.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _project_files() -> list[str]:
    try:
        proc = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing to compare dvc.lock with")
    return [p for p in proc.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


def _copy(files: list[str], dest: Path) -> None:
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    # the copy is not a git repository; DVC needs no git to compare deps with the lock
    (dest / ".dvc" / "config.local").write_text("[core]\n    no_scm = true\n")


def stale_dependencies(status: dict[str, list], project_files: set[str]) -> list[str]:
    """What `dvc status --json` says is out of date in a stage's code, params or command."""
    problems: list[str] = []
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, str):  # "changed command", "always changed", ...
                problems.append(f"{stage}: {entry}")
                continue
            for path, state in entry.get("changed deps", {}).items():
                if isinstance(state, dict):  # a params file: {key: "modified" | "new" | "deleted"}
                    problems += [f"{stage}: param {path}:{key} {what}" for key, what in state.items()]
                elif path in project_files or any(
                    f.startswith(path.rstrip("/") + "/") for f in project_files
                ):
                    problems.append(f"{stage}: {path} {state}")
    return problems


def test_stale_dependencies_reads_dvc_status() -> None:
    status = {
        "train": [
            {
                "changed deps": {
                    "data/prepared": "deleted",
                    "src/lib": "modified",
                    "params.yaml": {"a.b": "modified"},
                }
            },
            {"changed outs": {"models/adapter": "not in cache"}},
        ],
        "new_stage": ["changed command"],
    }
    assert stale_dependencies(status, {"src/lib/x.py", "params.yaml"}) == [
        "train: src/lib modified",
        "train: param params.yaml:a.b modified",
        "new_stage: changed command",
    ]


def test_dvc_lock_matches_the_code_and_params(tmp_path: Path) -> None:
    files = _project_files()
    _copy(files, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    problems = stale_dependencies(json.loads(proc.stdout or "{}"), set(files))
    assert not problems, (
        "dvc.lock is stale against the tree (run `dvc repro` and commit dvc.lock):\n" + "\n".join(problems)
    )
