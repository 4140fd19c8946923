"""What an output path may replace: only a directory this framework wrote (case 1 of issue 18), leftovers of
killed runs (case 8), file modes, and paths outside the project root."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from faultkit import REPO, Run, new_project

from peft_framework.errors import UserError
from peft_framework.io import OUTPUT_MARKER, atomic_dir, check_output_dir, clean_stale_temps


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


@pytest.mark.parametrize(
    ("command", "key", "value", "victim"),
    [
        ("prepare", "data.output_dir", "data", "data/raw/instructions.jsonl"),  # the raw input inside
        ("export", "export.output_dir", ".", "notes.md"),  # the project root
        ("export", "export.output_dir", "models", "models/keep.txt"),  # an ancestor of train.output_dir
        ("evaluate", "eval.plots_dir", "reports", "reports/notes.md"),  # a directory of the user's
        ("train", "train.output_dir", "mine", "mine/notes.md"),
    ],
)
def test_an_output_path_never_replaces_what_the_framework_did_not_write(
    cli: Run, tmp_path: Path, command: str, key: str, value: str, victim: str
) -> None:
    root = new_project(tmp_path / "p")
    (root / victim).parent.mkdir(parents=True, exist_ok=True)
    (root / victim).write_text("precious")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    code, out, err = cli(command, root, f"{key}={value}")
    assert code == 2 and out == ""
    assert err.splitlines()[-1].startswith(f"error: {key}: {value!r}") and "Traceback" not in err
    assert (root / victim).read_text() == "precious"
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, "nothing was created or removed"


def test_a_framework_output_is_replaced_and_marked(tmp_path: Path) -> None:
    final = tmp_path / "out"
    for content in ("one", "two"):  # missing, then written by us: both fine
        with atomic_dir(final, key="export.output_dir") as tmp:
            (tmp / "file.txt").write_text(content)
        assert (final / "file.txt").read_text() == content and (final / OUTPUT_MARKER).is_file()
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "export.output_dir")  # an empty directory may be used
    (final / OUTPUT_MARKER).unlink()
    with pytest.raises(UserError, match="export.output_dir: .*not written by peft-framework"):
        with atomic_dir(final, key="export.output_dir"):
            pass
    assert (final / "file.txt").read_text() == "two"


def test_outputs_follow_the_umask_not_0700(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "private").write_text("x")
            os.chmod(tmp / "private", 0o600)  # as safetensors and mkstemp create files
            (tmp / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [tmp_path / "out", *(tmp_path / "out").iterdir()]}
    assert mode == {"out": 0o775, "private": 0o664, "sub": 0o775, OUTPUT_MARKER: 0o664}


def test_a_kill_inside_the_swap_hides_nothing(tmp_path: Path) -> None:
    final = tmp_path / "merged"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("good old output")
    script = (
        "import sys; from peft_framework.io import atomic_dir\n"
        "with atomic_dir(sys.argv[1], key='export.output_dir') as tmp:\n"
        "    (tmp / 'weights').write_text('new')\n"
    )
    env = {
        **os.environ,
        "PEFT_FRAMEWORK_FAULT": "atomic_dir.swap:export.output_dir",
        "PYTHONPATH": str(REPO / "src"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, str(final)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -9
    assert not final.exists(), "killed between moving the old output aside and moving the new one in"
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == [".merged.old", ".merged.tmp"]

    # the next run (of anything writing there) puts the good old output back and removes the half-done one
    clean_stale_temps(final)
    assert (final / "weights").read_text() == "good old output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_temp_dirs_of_killed_runs_are_removed_by_the_next_run(tmp_path: Path) -> None:
    dead = _dead_pid()
    for name in (f".merged.tmp-{dead}-abc", f".merged.base-{dead}-xyz", f".merged.old-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"0" * 1000)
        (tmp_path / name / OUTPUT_MARKER).write_text("{}")
    alive = tmp_path / f".merged.tmp-{os.getpid()}-mine"  # a running process's: left alone
    alive.mkdir()
    with atomic_dir(tmp_path / "merged") as tmp:
        (tmp / "new").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["merged", alive.name])
    assert (tmp_path / "merged" / "new").is_file()


def test_an_output_outside_the_project_root_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "root").mkdir()
    with caplog.at_level(logging.WARNING):
        check_output_dir(tmp_path / "elsewhere", "export.output_dir", tmp_path / "root")
    assert "export.output_dir" in caplog.text and "outside the project root" in caplog.text
