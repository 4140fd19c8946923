"""Two runs on the same outputs (case 3 of issue 18): the second fails at once naming the first, before it
changes anything; a lock whose holder died is no obstacle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from faultkit import REPO, Run, new_project

from peft_framework.locking import hold_locks, lock_path

HOLD = """
import sys, time
from pathlib import Path
from peft_framework.locking import hold_locks
with hold_locks({"train.output_dir": Path(sys.argv[1])}, "train"):
    print("held", flush=True)
    time.sleep(300)
"""


def test_a_second_run_fails_naming_the_holder_and_a_dead_holder_is_no_obstacle(
    cli: Run, tmp_path: Path
) -> None:
    root = new_project(tmp_path / "p")
    output = root / "models" / "adapter"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(output)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, out, err = cli("train", root)
        assert code == 2 and out == ""
        line = err.splitlines()[-1]
        assert line.startswith("error: train.output_dir: ") and "in use by another run" in line
        assert f"pid {holder.pid} on host {socket.gethostname()}, train started 20" in line
        assert not (root / "models" / "checkpoints").exists(), "the second run changed nothing"
    finally:
        holder.kill()
        holder.wait()
    assert lock_path(output).exists(), "killed: its lock file is left behind, stale"
    with hold_locks({"train.output_dir": output}, "train"):  # the dead holder does not block
        assert lock_path(output).is_file()
    assert not lock_path(output).exists(), "a lock file is removed on release"
