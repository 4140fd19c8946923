"""Config paths: relative ones are taken from the project root the stage runs in."""

from __future__ import annotations

import os
from pathlib import Path


def resolve(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """`path` as is when absolute, else under `root`."""
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


#: where DVC makes the temporary copies `dvc exp run --queue/--temp` run in: <repository>/.dvc/tmp/exps/<tmp>
_EXPERIMENT_COPIES = (".dvc", "tmp", "exps")


def lasting_root(root: str | os.PathLike[str]) -> Path:
    """Where a run keeps files that are no DVC output and must outlive it (the default MLflow store).

    `root` itself, except in the temporary copy of the project that a queued or `--temp` DVC experiment
    runs in: DVC deletes that copy afterwards, so such files go to the repository it was copied from.
    That is DVC_ROOT (DVC sets it for every stage command, to the original repository in those copies)
    when `root` lies inside it, else the repository above `.dvc/tmp/exps/` in `root`'s path.
    """
    here = Path(root).resolve()
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root:
        origin = Path(dvc_root).resolve()
        if origin != here and origin in here.parents and origin.is_dir():
            return origin
    parts = here.parts
    n = len(_EXPERIMENT_COPIES)
    for i in range(len(parts) - n - 1, 0, -1):
        if parts[i : i + n] == _EXPERIMENT_COPIES:
            return Path(*parts[:i])
    return here
