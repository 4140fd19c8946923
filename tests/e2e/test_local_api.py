"""Without PREFECT_API_URL, the pipeline's processes share one local Prefect API (tasks/local_api.py):
the first stage starts it, the next ones reuse it, `python -m tasks.local_api stop` ends it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pipeline_project import Project, make_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]


def test_stages_share_one_local_api_started_on_first_use(tmp_path):
    project: Project = make_project(tmp_path / "project")
    home = project.root / ".prefect"
    try:
        for _ in range(2):
            proc = project.run("python", "-m", "flows.stage", "sample_data")
            assert "Starting temporary server" not in proc.stdout + proc.stderr  # no per-process API
        log = (home / "local-api.log").read_text()
        assert log.count("local Prefect API on") == 1, log  # started once, reused by the second stage
        state = json.loads((home / "local-api.json").read_text())
        assert httpx.get(f"{state['api_url']}/health", timeout=5).status_code == 200
        status = project.run("python", "-m", "tasks.local_api", "status").stdout.strip()
        assert status == state["api_url"]
        # both stage runs are on that server
        runs = httpx.post(f"{state['api_url']}/flow_runs/filter", json={}, timeout=10).json()
        assert sorted(r["name"] for r in runs) == ["sample_data", "sample_data"]
    finally:
        project.run("python", "-m", "tasks.warm", "stop", check=False)  # the stages' warm runner
        stopped = project.run("python", "-m", "tasks.local_api", "stop").stdout
    assert "stopped" in stopped
    assert not (home / "local-api.json").exists()
    assert "stopped" in (home / "local-api.log").read_text().splitlines()[-1]


def test_a_fresh_project_database_starts_from_the_template_of_the_first(tmp_path):
    """The first start of the local API keeps its fresh (migrated) database as a template per Prefect
    version; a project without a database starts from a copy of it instead of migrating again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PEFT_LOCAL_API_IDLE_SECONDS="0")
    logs = []
    for name in ("first", "second"):
        home = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-m", "tasks.local_api", "serve", "--home", str(home)],
            cwd=ROOT,
            env={**env, "PREFECT_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        logs.append(proc.stdout)
    templates = sorted(p.name for p in (tmp_path / "cache" / "peft-framework" / "prefect-db").iterdir())
    assert templates == [f"prefect-{prefect_version()}.db", f"prefect-{prefect_version()}.memo_store.toml"]
    assert "seeded" not in logs[0] and "local Prefect API on" in logs[0]
    assert "Prefect database seeded from" in logs[1] and "local Prefect API on" in logs[1]  # and it served
    assert (tmp_path / "second" / "prefect.db").stat().st_size > 0


def prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def test_the_local_api_stops_without_recreating_a_deleted_project(tmp_path):
    """A queued `dvc exp run` starts the local API in its temporary copy, which DVC deletes when the run
    ends: the supervisor must stop then, and leave no `.prefect/local-api.lock` behind (issue 28)."""
    import shutil
    import time

    copy = tmp_path / "exps" / "tmpcopy"
    home = copy / ".prefect"
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), PREFECT_HOME=str(home))
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "tasks.local_api", "serve", "--home", str(home)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (home / "local-api.json").exists():
            assert supervisor.poll() is None and time.monotonic() < deadline, "the local API did not start"
            time.sleep(0.2)
        shutil.rmtree(copy)
        assert supervisor.wait(timeout=60) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert not copy.exists()
