"""Fixtures of the fault-injection suite (helpers in faultkit.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from faultkit import TINY, Run, new_project

from peft_framework.cli import main


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]) -> Run:
    """`cli("train", root, *overrides)`: the CLI in process on ROOT/params.yaml with --root ROOT and TINY."""

    def run(command: str, root: Path | None = None, *overrides: str) -> tuple[int, str, str]:
        capsys.readouterr()
        if root is None:
            code = main([command, *overrides])
        else:
            code = main([command, str(root / "params.yaml"), "--root", str(root), *TINY, *overrides])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after prepare and train (checkpoints kept). Tests copy it (`project_copy`) before harming it."""
    root = new_project(tmp_path_factory.mktemp("faults") / "project")
    for command, extra in (("prepare", []), ("train", ["train.keep_checkpoints=true"])):
        code = main([command, str(root / "params.yaml"), "--root", str(root), *TINY, *extra])
        assert code == 0, command
    return root


@pytest.fixture()
def project_copy(trained: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "project"
    shutil.copytree(trained, dest, symlinks=True)
    return dest
