"""Fixtures of the pipeline e2e tests: one project copy and one loopback Prefect server per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pipeline_project import (
    TINY_PARAMS,
    Project,
    Server,
    deep_update,
    make_project,
    start_server,
    stop_server,
)

# The module's pipeline trains packed rows formatted by a custom chat template (issue 15): one run covers
# both, and test_packing_and_the_custom_template_reach_every_output checks what they left in the outputs.
CHAT_TEMPLATE = "tests/e2e/e2e_chat.jinja"
PARAMS = deep_update(
    deep_update({}, TINY_PARAMS), {"train": {"packing": True}, "data": {"chat_template": CHAT_TEMPLATE}}
)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("project"), PARAMS)
    yield project
    # runs without PREFECT_API_URL started the project's local Prefect API (tasks/local_api.py): stop it
    project.run("python", "-m", "tasks.local_api", "stop", check=False)
    project.run("python", "-m", "tasks.warm", "stop", check=False)  # and its warm runners (tasks/warm.py)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, project: Project) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("prefect-server"), project.env, ui=True)  # test_browser
    try:
        yield srv
    finally:
        stop_server(srv)
