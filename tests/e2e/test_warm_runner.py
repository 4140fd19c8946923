"""The warm runner (tasks/warm.py): pipeline commands after the first run in one long-lived process's forked
children, with the client's stdio, exit code and signals, and a new runner when the code changes."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from pipeline_project import Project, make_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

SLEEPER = """\
import os
import time

import flows  # noqa: F401
from tasks import warm

if __name__ == "__main__":
    warm.forward("sleeper")
    print(os.getpid(), os.environ.get("PEFT_WARM_CHILD"), flush=True)
    time.sleep(300)
"""


def ready_lines(project: Project) -> int:
    log = project.root / ".prefect" / "warm-runner.log"
    return log.read_text().count(" ready in ") if log.is_file() else 0


def gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return True
        if state == "Z":  # exited, not yet reaped by the runner
            return True
        time.sleep(0.1)
    return False


def start_sleeper(project: Project) -> tuple[subprocess.Popen[str], int]:
    client = subprocess.Popen(
        ["python", "sleeper.py"], cwd=project.root, env=project.env, stdout=subprocess.PIPE, text=True
    )
    pid, marker = client.stdout.readline().split()  # printed by the forked child, through the client's pipe
    assert marker == "1" and int(pid) != client.pid
    return client, int(pid)


def test_commands_share_a_warm_runner_until_the_code_changes(tmp_path: Path):
    project = make_project(tmp_path / "project")
    (project.root / "sleeper.py").write_text(SLEEPER)
    try:
        first = project.run("python", "-m", "flows.stage", "sample_data")
        assert "sample_data: ran" in first.stdout
        second = project.run("python", "-m", "flows.stage", "sample_data")
        assert "sample_data: cache hit" in second.stdout  # the child's stdout reached the client's pipe
        assert ready_lines(project) == 1  # one runner served both
        assert project.run("python", "-m", "tasks.warm", "status").stdout.count("pid ") == 1

        # a user mistake: the same one-line error and exit code as without the runner
        bad = project.run("python", "-m", "flows.stage", "prepare", "data.max_seq_len=-3", check=False)
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.startswith("error: ") and "data.max_seq_len" in bad.stderr
        assert "Traceback" not in bad.stderr

        # a caught signal is forwarded to the command; a killed client takes its command with it
        client, pid = start_sleeper(project)
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=20) == -signal.SIGTERM  # it died of the signal, as the command did
        assert gone(pid)
        client, pid = start_sleeper(project)
        client.kill()
        client.wait(timeout=20)
        assert gone(pid)
        assert ready_lines(project) == 1

        # changed code: the next command gets a new runner, importing the new code
        settings = project.root / "tasks" / "settings.py"
        settings.write_text(settings.read_text() + "\n# changed\n")
        project.run("python", "-m", "flows.stage", "sample_data")
        assert ready_lines(project) == 2

        # switched off: no runner is asked, none is started
        off = project.run("python", "sleeper.py", env={"PEFT_WARM": "off"}, check=False, timeout=5)
    except subprocess.TimeoutExpired as exc:  # the sleeper ran in this process: its pid is the client's
        off = exc
    finally:
        stopped = project.run("python", "-m", "tasks.warm", "stop").stdout
        project.run("python", "-m", "tasks.local_api", "stop", check=False)
    assert isinstance(off, subprocess.TimeoutExpired)
    assert off.output.split()[1] == b"None"  # not run as a warm child (TimeoutExpired keeps bytes)
    assert ready_lines(project) == 2
    assert "stopped 2 warm runner(s)" in stopped
    assert not list((project.root / ".prefect" / "warm").glob("*.json"))
