"""Without PREFECT_API_URL, the pipeline's processes share one local Prefect API (tasks/local_api.py):
the first stage starts it, the next ones reuse it, `python -m tasks.local_api stop` ends it."""

from __future__ import annotations

import json

import httpx
import pytest
from pipeline_project import Project, make_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


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
        stopped = project.run("python", "-m", "tasks.local_api", "stop").stdout
    assert "stopped" in stopped
    assert not (home / "local-api.json").exists()
    assert "stopped" in (home / "local-api.log").read_text().splitlines()[-1]
