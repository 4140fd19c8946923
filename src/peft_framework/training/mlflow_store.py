"""`train.report_to: mlflow`: the tracking store is checked before training starts.

An unreachable `MLFLOW_TRACKING_URI`, an unknown scheme or a store that cannot be written used to fail
inside the Trainer after MLflow's retries (minutes), with the run lost. `check_tracking_store` asks the
store once with a short timeout and no retries, and a local store (sqlite, file) must also be writable:
anything else is an `error:` naming the variable and the URI, before any output is touched.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from peft_framework.errors import StageFailed

#: seconds the check waits for an MLflow server (MLflow's own default is 120 s, with 7 retries)
CHECK_TIMEOUT_S = 10


def default_store(root: str | os.PathLike[str]) -> Path:
    """The local store used when MLFLOW_TRACKING_URI is unset: <root>/mlruns/mlflow.db (SQLite)."""
    return Path(root).resolve() / "mlruns"


@contextmanager
def _short_requests() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(CHECK_TIMEOUT_S)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _probe_write(uri: str) -> None:
    """Raise OSError / sqlite3.Error when a local store cannot be written (as any user, root included)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri.split("///", 1)[1] if "///" in uri else parsed.path
        if path and path != ":memory:":
            con = sqlite3.connect(path, timeout=CHECK_TIMEOUT_S)
            try:
                con.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only file or disk
                con.execute("ROLLBACK")
            finally:
                con.close()
    elif parsed.scheme in ("", "file"):
        directory = Path(parsed.path if parsed.scheme else uri)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".peft-framework-probe-"):
            pass


def check_tracking_store(root: str | os.PathLike[str]) -> None:
    """StageFailed (exit 2) when the MLflow store train would log to cannot be reached or written."""
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        what = f"MLFLOW_TRACKING_URI: {uri!r}"
        allowed = (
            "allowed: an MLflow server (http/https) that answers, a database URI (sqlite:///PATH, "
            "postgresql://...) you can write, or MLFLOW_TRACKING_URI unset (the store <root>/mlruns); "
            "or train.report_to: none"
        )
    else:
        store = default_store(root)
        uri = f"sqlite:///{store / 'mlflow.db'}"
        what = f"train.report_to: 'mlflow': the default store {store}"
        allowed = "allowed: a writable project directory, MLFLOW_TRACKING_URI naming another store, or train.report_to: none"
    try:
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            default_store(root).mkdir(parents=True, exist_ok=True)
        with _short_requests():
            _probe_write(uri)
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MLflow, HTTP, SQL and OS errors all mean: cannot log there
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
        raise StageFailed(f"{what}: the MLflow tracking store cannot be used ({detail}); {allowed}") from None
