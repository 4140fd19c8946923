"""Fixtures of the pipeline e2e tests: one project copy and one loopback Prefect server per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipeline_project import Project, Server, make_project, start_server, stop_server


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("project"))
    yield project
    # runs without PREFECT_API_URL started the project's local Prefect API (tasks/local_api.py): stop it
    project.run("python", "-m", "tasks.local_api", "stop", check=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, project: Project) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("prefect-server"), project.env, ui=True)  # test_browser
    try:
        yield srv
    finally:
        stop_server(srv)
