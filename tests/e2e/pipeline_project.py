"""Helpers for the pipeline's e2e tests and bench/pipeline_cache.py: a throwaway copy of the project as
its own git + DVC repo with tiny settings, and a loopback Prefect server.

Everything here runs real tools in subprocesses (dvc, prefect, python -m flows...), with the venv of
the running interpreter first on PATH and the Hub switched off.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# The smallest settings that still exercise every stage: a few optimizer steps, a handful of
# evaluation and parity samples, short generations.
TINY_PARAMS = {
    "train": {"max_steps": 2, "batch_size": 4, "logging_steps": 1, "save_steps": 1},
    "eval": {"max_samples": 4, "max_new_tokens": 4, "batch_size": 4},
    "export": {"parity_samples": 2},
}


@dataclass
class Project:
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, timeout: float = 600, check: bool = True, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the project; on failure the assertion shows its output."""
        proc = subprocess.run(
            args,
            cwd=self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, (
                f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc


def project_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a fresh clone plus the work in progress holds."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def deep_update(data: dict, updates: Mapping) -> dict:
    for key, value in updates.items():
        if isinstance(value, Mapping):
            deep_update(data.setdefault(key, {}), value)
        else:
            data[key] = value
    return data


def base_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DVC_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONHASHSEED="0",
        # pipeline commands share a warm runner (tasks/warm.py); a test's runners go soon after it
        PEFT_WARM_IDLE_SECONDS="60",
        # Hermetic Prefect: the project's own PREFECT_HOME (prefect.toml), never the user's profiles.
        PREFECT_PROFILES_PATH=str(root / ".prefect" / "profiles.toml"),
        GIT_AUTHOR_NAME="e2e",
        GIT_AUTHOR_EMAIL="e2e@example.invalid",
        GIT_COMMITTER_NAME="e2e",
        GIT_COMMITTER_EMAIL="e2e@example.invalid",
    )
    return env


def make_project(dest: Path, params: Mapping = TINY_PARAMS) -> Project:
    """Copy the project into `dest`, shrink params.yaml, and commit it as a new git repo."""
    for rel in project_files(ROOT):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    if params:
        # shrunk runs start from the built-in tiny Llama (causal LM: generate, QLoRA, no downloads), not
        # the MiniLM demo of params.yaml, which `params={}` keeps (bench/pipeline_cache.py without --tiny)
        shutil.copy2(ROOT / "params" / "tiny-llama.yaml", dest / "params.yaml")
        path = dest / "params.yaml"
        path.write_text(
            yaml.safe_dump(deep_update(yaml.safe_load(path.read_text()), params), sort_keys=False)
        )
    project = Project(dest, base_env(dest))
    project.run("git", "init", "-q", "-b", "main")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "project copy for e2e tests")
    return project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    api_url: str
    process: subprocess.Popen[bytes]
    log: Path


def start_server(home: Path, env: Mapping[str, str], timeout: float = 180, ui: bool = False) -> Server:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME (and the UI when `ui`);
    waits until healthy."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    server_env = {
        **env,
        "PREFECT_HOME": str(home),
        "PREFECT_PROFILES_PATH": str(home / "profiles.toml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",  # the UI defaults to port 4200
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home,
            env=server_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    server = Server(f"http://127.0.0.1:{port}/api", process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(
        f"prefect server did not become healthy in {timeout:.0f} s:\n{log.read_text()[-3000:]}"
    )


def stop_server(server: Server) -> None:
    """Terminate the server's process group; kill it if it does not exit promptly."""
    if server.process.poll() is not None:
        return
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    except ProcessLookupError:
        pass


def stages_run(output: str) -> list[str]:
    """Stage names DVC reports as run ("Running stage 'train':"), in order; a stage of another dvc.yaml by its
    name alone ("pipelines/sft/dvc.yaml:sft_train" -> "sft_train")."""
    return [name.rpartition(":")[2] for name in re.findall(r"Running stage '([^']+)'", output)]


def link_warm_start(project: Project, pipeline: str, adapter: str) -> None:
    """Switch on a demo's warm-start pipeline as its stages file says: pipelines/<pipeline>/stages.yaml copied to
    its dvc.yaml, and the commented `adapter` dep of the root train stage uncommented."""
    dep = f"# - {adapter}"
    dvc_yaml = project.root / "dvc.yaml"
    text = dvc_yaml.read_text()
    assert text.count(dep) == 1, dep
    dvc_yaml.write_text(text.replace(dep, dep[2:]))
    folder = project.root / "pipelines" / pipeline
    (folder / "dvc.yaml").write_text((folder / "stages.yaml").read_text())
