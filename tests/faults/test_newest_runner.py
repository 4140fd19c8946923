"""Faults in the newest code (issue 27, items 1-6, 8, 12-14): the warm runner as exact as a fresh process,
a local Prefect API that never costs a run, bounded config reads, safe sample-data / inspect-data /
promotion. Each test asserts what the user sees: the message, the exit code, the files on disk."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import REPO, TINY, Run, new_project


def _pythonpath() -> str:
    return os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])


def _limit_memory() -> None:  # the unfixed reader would take all memory: fail with MemoryError instead
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def _cli(*argv: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`peft-framework ARGV` in its own process (1 GiB of address space at most)."""
    return subprocess.run(
        [sys.executable, "-m", "peft_framework", *argv],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": _pythonpath()},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
    )


# ------------------------------------------------------------------------- 8: config from a device / FIFO


def test_a_config_from_dev_zero_is_refused_after_the_cap() -> None:
    proc = _cli("validate", "/dev/zero")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: /dev/zero: more than 4194304 bytes; a config file may be at most")
    assert "Traceback" not in proc.stderr


def test_a_config_from_an_endless_fifo_is_refused_after_the_cap(tmp_path: Path) -> None:
    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    stop = threading.Event()

    def write_forever() -> None:
        try:
            with open(fifo, "wb") as f:
                while not stop.is_set():
                    f.write(b"# " + b"x" * 65_000 + b"\n")
        except BrokenPipeError:
            pass  # the reader stopped reading: what we want

    writer = threading.Thread(target=write_forever, daemon=True)
    writer.start()
    try:
        proc = _cli("validate", str(fifo))
    finally:
        stop.set()
    writer.join(timeout=10)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {fifo}: more than 4194304 bytes")


# ------------------------------------------------------------------ 14: promotion on broken committed files


def _git_project(root: Path, files: dict[str, bytes]) -> str:
    root.mkdir(parents=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x.invalid"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "results"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def _promote(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.promote", "--root", str(root)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": _pythonpath()},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_promote_on_a_committed_eval_report_that_is_not_json_is_a_user_error(tmp_path: Path) -> None:
    params = (REPO / "params" / "tiny-llama.yaml").read_bytes()
    sha = _git_project(tmp_path / "p", {"params.yaml": params, "reports/eval.json": b"{not json"})
    proc = _promote(tmp_path / "p")
    assert proc.returncode == 2, proc.stderr[-2000:]  # 1 would mean "the rules failed"
    assert proc.stderr.startswith(f"error: eval.report_path: 'reports/eval.json' at commit {sha[:10]} is not")
    assert "Traceback" not in proc.stderr


def test_promote_on_a_committed_params_file_that_is_not_utf8_is_a_user_error(tmp_path: Path) -> None:
    params = (REPO / "params" / "tiny-llama.yaml").read_bytes() + b"\n# caf\xe9\n"
    sha = _git_project(tmp_path / "p", {"params.yaml": params, "reports/eval.json": b"{}"})
    proc = _promote(tmp_path / "p")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: params: 'params.yaml' at commit {sha[:10]} is not UTF-8 text")
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------- 12: sample-data over a user's own file


def test_sample_data_never_overwrites_a_users_own_file(cli: Run, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    mine = out / "instructions.jsonl"
    mine.write_text('{"instruction": "my own row", "output": "keep me"}\n')
    code, _, err = cli("sample-data", None, "--out", str(out))
    assert code == 2
    assert err.startswith(f"error: --out: '{mine}' already exists and is not this sample")
    assert mine.read_text() == '{"instruction": "my own row", "output": "keep me"}\n'
    assert sorted(p.name for p in out.iterdir()) == ["instructions.jsonl"]  # nothing else written either

    fresh = tmp_path / "fresh"
    assert cli("sample-data", None, "--out", str(fresh))[0] == 0
    written = {p: p.read_bytes() for p in fresh.rglob("*") if p.is_file()}  # vision/: drawn images too
    assert cli("sample-data", None, "--out", str(fresh))[0] == 0  # its own samples: written again
    assert {p: p.read_bytes() for p in fresh.rglob("*") if p.is_file()} == written


# --------------------------------------------------------- 13: inspect-data on the shipped, hostile data


def test_inspect_data_shows_lone_surrogates_and_terminal_escapes_escaped(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft_framework.cli import main
    from peft_framework.data.samples import write_samples

    root = new_project(tmp_path / "project")
    raw = root / "data" / "raw" / "instructions.jsonl"
    write_samples(raw.parent)  # the shipped sample: line 165 holds a lone surrogate, "hi \ud83d"
    hostile = '{"instruction": "title \x1b]0;pwned\x07 clear \x1b[2J\x9b1m", "output": "x"}\n'
    with open(raw, "a", encoding="utf-8") as f:
        f.write(hostile)  # raw control characters: not valid JSON, rejected, its raw text shown
    assert cli("prepare", root)[0] == 0

    terminal = io.BytesIO()  # a UTF-8 terminal: what cannot be encoded there fails, as it did for users
    stdout = io.TextIOWrapper(terminal, encoding="utf-8", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    code = main(["inspect-data", str(root / "params.yaml"), "--root", str(root), "--rows", "1000"])
    text = terminal.getvalue().decode("utf-8")
    assert code == 0
    assert "\\ud83d" in text  # the lone surrogate, escaped
    assert "title \\x1b]0;pwned\\x07 clear \\x1b[2J\\x9b1m" in text
    assert not any(c in text for c in "\x1b\x07\x9b")  # nothing reaches the terminal raw


# ------------------------------------------------------------------ 1-3: the warm runner (tasks/warm.py)

CLIENT = """\
import runpy
import sys

import flows  # noqa: F401
from tasks import warm

if __name__ == "__main__":  # a pipeline command: in the warm runner if one serves, else here
    warm.forward(sys.argv[1])
    runpy.run_module(sys.argv[1], run_name="__main__", alter_sys=True)
"""
PROBE = """\
import os

import plugin

print(plugin.VALUE, os.environ.get("PEFT_WARM_CHILD"), flush=True)
"""
SLEEPER = """\
import time

print("sleeping", flush=True)
time.sleep(120)
"""


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A project directory with CLIENT, and the environment of its commands: a plug-in module on
    PYTHONPATH that every process imports at start-up (sitecustomize), no local Prefect API."""
    root = tmp_path_factory.mktemp("warm")
    plugins = root / "plugins"
    plugins.mkdir()
    (plugins / "plugin.py").write_text("VALUE = 1\n")
    (plugins / "sitecustomize.py").write_text("import plugin  # noqa: F401\n")
    (plugins / "probe.py").write_text(PROBE)
    (plugins / "sleeper.py").write_text(SLEEPER)
    (root / "client.py").write_text(CLIENT)
    runtime = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))  # socket paths must stay short
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEFT_", "PREFECT_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(plugins), str(REPO / "src"), str(REPO)]),
        PREFECT_HOME=str(root / ".prefect"),
        PEFT_LOCAL_API="off",
        PEFT_WARM_IDLE_SECONDS="60",
        XDG_RUNTIME_DIR=str(runtime),
        OMP_NUM_THREADS="1",
    )
    yield root, env
    for state in (root / ".prefect" / "warm").glob("*.json"):  # the runners these tests started
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(json.loads(state.read_text())["pid"], signal.SIGKILL)  # not stop: it waits out an import
    shutil.rmtree(runtime, ignore_errors=True)


def _client(root: Path, env: dict[str, str], module: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "client.py", module], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.split()


def _shell_interrupted(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A shell script running the command, Ctrl-C'd (SIGINT to its whole process group) mid-command."""
    script = subprocess.Popen(
        ["bash", "-c", f"{sys.executable} client.py sleeper; echo carried on"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    assert script.stdout.readline() == "sleeping\n"
    os.killpg(script.pid, signal.SIGINT)
    out, err = script.communicate(timeout=60)
    return subprocess.CompletedProcess(script.args, script.returncode, out, err)


def test_ctrl_c_stops_a_shell_script_under_the_warm_runner_as_without_it(warm: tuple[Path, dict[str, str]]):
    root, env = warm
    assert _client(root, env, "probe") == ["1", "1"]  # served by a warm runner (a forked child)
    for switch in ("off", "on"):
        script = _shell_interrupted(root, {**env, "PEFT_WARM": switch})
        assert script.returncode == -signal.SIGINT, (switch, script.stderr[-3000:])  # the script died of it
        assert "carried on" not in script.stdout
        assert "KeyboardInterrupt" in script.stderr


def test_the_warm_runner_never_runs_the_old_code_of_an_edited_module(warm: tuple[Path, dict[str, str]]):
    root, env = warm
    assert _client(root, env, "probe") == ["1", "1"]  # the runner holds plugin.py imported
    (root / "plugins" / "plugin.py").write_text("VALUE = 22\n")  # edited: other size and mtime
    assert _client(root, env, "probe")[0] == "22"  # as PEFT_WARM=off would: the new code
    assert _client(root, env, "probe") == ["22", "1"]  # and a new runner serves the new code
    log = (root / ".prefect" / "warm-runner.log").read_text()
    assert f"{root / 'plugins' / 'plugin.py'} changed since it was imported: retiring" in log

    copy = root.parent / "copy" / ".prefect"  # a copied project: its state files name the original's runners
    shutil.copytree(root / ".prefect", copy)
    status = subprocess.run(
        [sys.executable, "-m", "tasks.warm", "status"],
        env={**env, "PREFECT_HOME": str(copy)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.stdout.strip() == "no warm runner"


def test_a_project_path_that_is_not_utf8_runs_the_command_without_the_runner(
    warm: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    _, env = warm
    project = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    project.mkdir()
    for name in ("src", "tasks", "flows"):
        (project / name).symlink_to(REPO / name)  # the code, found through the non-UTF-8 path
    (project / "client.py").write_text(CLIENT)
    plugins = env["PYTHONPATH"].split(os.pathsep)[0]
    env = {**env, "PYTHONPATH": os.pathsep.join([plugins, str(project / "src"), str(project)])}
    proc = subprocess.run(
        [sys.executable, "client.py", "probe"], cwd=project, env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.decode(errors="replace")
    assert proc.stdout.split()[1] == b"None"  # ran here, in its own process


# ------------------------------------------------------- 4: the Prefect API gone while a stage is training


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_training_outlives_the_prefect_api_it_reports_progress_to(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from tasks.progress import PrefectProgressCallback

    from peft_framework.config import load_config
    from peft_framework.training import train

    root = new_project(tmp_path / "project")
    assert cli("prepare", root)[0] == 0
    config = load_config(root / "params.yaml", [*TINY, "train.save_steps=100"])
    progress = PrefectProgressCallback(min_interval_s=0)
    # inside a flow run (as the train task is), whose API server is gone: every report is refused
    monkeypatch.setattr(PrefectProgressCallback, "_in_run", staticmethod(lambda: True))
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{_closed_port()}/api"}):
        summary = train(config, root=str(root), callbacks=[progress])
    err = capsys.readouterr().err
    assert summary["global_step"] == 3
    assert (root / "models" / "adapter" / "adapter_model.safetensors").is_file()  # the run is kept
    assert err.count("warning: training progress is no longer reported to the Prefect API") == 1
    assert "ConnectError" in err


# --------------------------------------------- 5, 6: the local Prefect API (tasks/local_api.py) and its home


def _api_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEFT_", "PREFECT_"))}
    return {
        **env,
        "PYTHONPATH": _pythonpath(),
        "PREFECT_HOME": str(home),
        "PEFT_LOCAL_API_IDLE_SECONDS": "60",
        "OMP_NUM_THREADS": "1",
    }


def _local_api(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tasks.local_api", *argv],
        cwd=REPO,
        env=_api_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def corrupt_db_api(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, subprocess.CompletedProcess]]:
    """A project's PREFECT_HOME whose prefect.db is garbage, and what a stage's start of the local API
    (`ensure()`) printed there; the server it started serves until the module's tests end."""
    home = tmp_path_factory.mktemp("api") / ".prefect"
    home.mkdir()
    (home / "prefect.db").write_bytes(b"this is no SQLite database\n" * 100)
    ensure = "from tasks import local_api; print(local_api.ensure())"
    proc = subprocess.run(
        [sys.executable, "-c", ensure],
        cwd=REPO,
        env=_api_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    yield home, proc
    with contextlib.suppress(OSError, ValueError, KeyError, ProcessLookupError):  # the supervisor it started
        os.kill(
            json.loads((home / "local-api.json").read_text())["pid"], signal.SIGKILL
        )  # stop waits seconds


def test_a_corrupt_prefect_database_is_moved_aside_with_a_warning(corrupt_db_api) -> None:
    home, proc = corrupt_db_api
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("http://127.0.0.1:")  # the local API serves, with a fresh database
    aside = [p for p in home.iterdir() if p.name.startswith("prefect.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"this is no SQLite database\n" * 100  # kept
    assert proc.stderr.startswith(f"warning: the Prefect database {home / 'prefect.db'} is corrupt (")
    assert f"moved aside to {aside[0]}" in proc.stderr
    assert (home / "prefect.db").read_bytes()[:16] == b"SQLite format 3\0"


def test_a_copied_project_never_uses_the_originals_local_api(corrupt_db_api, tmp_path: Path) -> None:
    home, proc = corrupt_db_api
    original = proc.stdout.strip()
    copy = tmp_path / "copy" / ".prefect"
    shutil.copytree(home, copy)  # `cp -r project copy`: local-api.json comes along
    assert _local_api(home, "status").stdout.strip() == original
    assert _local_api(copy, "status").stdout.strip() == "no local Prefect API running"
    assert _local_api(copy, "stop").stdout.strip() == "no local Prefect API running"  # nor stops it
    assert _local_api(home, "status").stdout.strip() == original


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not a url", "error: PREFECT_API_URL: 'not a url' is not an http(s) URL"),
        (
            "http://127.0.0.1:{port}/api",
            "error: PREFECT_API_URL: no Prefect server answers at 'http://127.0.0.1:",
        ),
    ],
)
def test_a_prefect_api_url_that_is_unusable_is_named_before_any_run(
    value: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flows.stage import main

    root = new_project(tmp_path / "project")
    monkeypatch.setenv("PREFECT_API_URL", value.format(port=_closed_port()))
    code = main(["sample_data", "--root", str(root), "--config", str(root / "params.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message), err[-3000:]
    assert "unset PREFECT_API_URL to use the project's local API" in err
    assert not (root / "data" / "raw" / "classification.jsonl").exists()  # nothing ran


def test_prefect_home_on_a_full_disk_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.stage import main
    from tasks import local_api

    root = new_project(tmp_path / "project")
    home = tmp_path / "home"

    @contextlib.contextmanager
    def full(path: Path, mode: int) -> Iterator[None]:  # the first file the local API creates there
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
        yield

    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("PEFT_LOCAL_API", raising=False)
    monkeypatch.setattr(local_api, "_locked", full)
    code = main(["sample_data", "--root", str(root), "--config", str(root / "params.yaml")])
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert err.startswith(f"error: PREFECT_HOME: {home / 'local-api.lock'}: no space left on device")
    assert "Traceback" not in err
