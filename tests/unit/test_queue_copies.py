"""Queued DVC experiments run in temporary copies of the project that DVC deletes afterwards (issue 28
item 7): what must outlive the run (the default MLflow store) goes to the original repository."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peft_framework.paths import lasting_root

ROOT = Path(__file__).resolve().parents[2]


def test_lasting_root_is_the_root_outside_experiment_copies(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert lasting_root(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # a plain `dvc repro`: DVC_ROOT is the root itself
    assert lasting_root(tmp_path) == tmp_path.resolve()


def test_lasting_root_of_an_experiment_copy_is_the_original_repository(tmp_path, monkeypatch):
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.delenv("DVC_ROOT", raising=False)  # found from the path alone
    assert lasting_root(copy) == (tmp_path / "repo").resolve()
    elsewhere = tmp_path / "exps-site" / "tmpxyz"  # DVC_ROOT wins wherever DVC put the copy
    elsewhere.mkdir(parents=True)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert lasting_root(elsewhere) == tmp_path.resolve()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "unrelated"))  # not above the root: ignored
    assert lasting_root(copy) == (tmp_path / "repo").resolve()


def _run(cwd: Path, *args: str) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_queued_experiment_puts_the_mlflow_store_in_the_original_repository(tmp_path):
    """A real `dvc exp run --queue` + `dvc queue start`: the stage runs in .dvc/tmp/exps/<tmp>, and the
    default MLflow store it resolves (the train stage's, `default_mlflow_store`) is the repository's."""
    repo = tmp_path / "repo"
    repo.mkdir()
    script = (
        "import os, pathlib; from peft_framework.training.callbacks import default_mlflow_store; "
        "store = default_mlflow_store('.'); store.mkdir(exist_ok=True); "
        "(store / os.environ['DVC_EXP_NAME']).write_text(os.getcwd()); pathlib.Path('out.txt').write_text('x')"
    )
    (repo / "params.yaml").write_text("n: 1\n")
    (repo / "dvc.yaml").write_text(
        f'stages:\n  train:\n    cmd: {sys.executable} -c "{script}"\n    params: [n]\n    outs: [out.txt]\n'
    )
    (repo / ".gitignore").write_text("/mlruns/\n")
    _run(repo, "git", "init", "-q", "-b", "main")
    _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "0")
    _run(repo, sys.executable, "-m", "dvc", "init", "-q")
    _run(repo, sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "project")
    _run(repo, sys.executable, "-m", "dvc", "exp", "run", "--queue", "-S", "n=2", "-n", "queued")
    _run(repo, sys.executable, "-m", "dvc", "queue", "start")
    deadline = time.monotonic() + 240
    while "Success" not in (status := _run(repo, sys.executable, "-m", "dvc", "queue", "status")):
        assert "Failed" not in status and time.monotonic() < deadline, status
        time.sleep(1)
    ran_in = Path((repo / "mlruns" / "queued").read_text())
    assert ran_in.parent == (repo / ".dvc" / "tmp" / "exps").resolve()  # it did run in DVC's copy
    assert not ran_in.exists()  # which DVC deleted; the store is the repository's and stayed
