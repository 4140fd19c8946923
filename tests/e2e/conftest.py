"""Fixtures of the pipeline e2e tests: one project copy and one loopback Prefect server per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipeline_project import Project, Server, make_project, start_server, stop_server


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return make_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, project: Project) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("prefect-server"), project.env)
    try:
        yield srv
    finally:
        stop_server(srv)
