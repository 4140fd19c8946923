"""A warm runner for the pipeline commands: Python, Prefect and the ML stack imported once, reused by
every `python -m flows.stage` / `python -m flows.pipeline` that follows.

A stage's own work on the demo takes seconds; starting the process that does it took as long again:
Python, importing Prefect (~2.5 s CPU) and torch/transformers/datasets (~5-8 s), once per `dvc repro`
stage. Here the first pipeline command spawns a small detached runner that imports Prefect and the flows
(~4 s), starts serving on a Unix socket, and imports the library, torch, transformers and datasets between
commands, plus whatever a finished command imported that it had not (it learns the lazy imports). Each pipeline command becomes a thin client (standard library only): it
sends its arguments, working directory and environment and passes its own stdin/stdout/stderr (the file
descriptors themselves, `SCM_RIGHTS`); the runner forks, and the forked child (a fresh process with
everything already imported, copy-on-write) runs the command as `python -m` would, writing straight to
the client's terminal or pipes. The client forwards SIGINT/SIGTERM/SIGHUP to the child and ends as it
did: with its exit code, or by the same signal when a signal ended it (an uncaught KeyboardInterrupt
counts as SIGINT, as in Python itself), so a shell script stops on Ctrl-C as without the runner; a child
whose client dies is terminated. Like a fork server (multiprocessing's
`forkserver`, Android's zygote), with one runner per code version and environment.

What cannot go stale: the runner is keyed on the interpreter, the working directory, `sys.path` (with the
modification times of its site-packages directories, which change when packages are installed), every
`.py` file of peft_framework, tasks and flows (size and mtime), and the environment (less DVC's per-stage
variables): change any of them and the next command gets a new runner. Before each fork the runner also
checks the file of every module it has imported (size and mtime, the check Python's import cache makes):
a plug-in, an editable install or a module on PYTHONPATH edited since then retires the runner, and that
command runs in its own process (bench/warm_check.py measures the check: milliseconds per command). A
project path that is not valid UTF-8 runs every command in its own process. An old runner exits when
idle (`PEFT_WARM_IDLE_SECONDS`, default 300), or at once when its working directory is deleted (the
temporary copies of `dvc exp run --temp/--queue`). The runner imports modules but never runs a stage
itself, so no thread, CUDA context or RNG draw is inherited by the children (each child reseeds `random`
and numpy's global generator, as a fresh process would have); an import that starts a thread or
initialises CUDA retires the runner (the next command starts a new one).

`PEFT_WARM=off`: every command runs in its own process, as before. Not used where `fork` or
`socket.send_fds` is missing (non-Linux), or for the children's own subprocesses.

    python -m tasks.warm status|stop      # the runners of this project (PREFECT_HOME/warm/)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peft_framework.models.optional_imports import gate_bitsandbytes, is_gated
from tasks import local_api

_LOADED_NS = time.time_ns()
"""About when this process started importing (the few modules before this one load within milliseconds)."""
SWITCH_ENV = "PEFT_WARM"
IDLE_ENV = "PEFT_WARM_IDLE_SECONDS"
CHILD_ENV = "PEFT_WARM_CHILD"
DEFAULT_IDLE_S = 300.0
CONNECT_TIMEOUT_S = 20.0
"""How long a client waits for a runner it spawned to bind its socket (binding comes before the imports)."""
FIRST = ("flows.stage", "flows.pipeline")
"""Imported before the runner serves: Prefect and the flows, what every pipeline command needs."""
THEN = ("data", "models", "adapters", "training", "evaluation", "export", "")
"""Then, between commands (a command that arrives meanwhile waits at most for the module being imported),
every module of these peft_framework packages, in the order of the stages that use them: torch,
transformers, datasets and the Trainer come with them. A command forked before they are imported imports
what it needs itself, as a fresh process would."""
_KEY_IGNORED_ENV = ("DVC_", "DVCLIVE_")
_KEY_IGNORED_NAMES = {"PWD", "OLDPWD", "SHLVL", "_", "TERM", "COLUMNS", "LINES", "PS1", "PS2", "PS4"}
"""Variables that differ between a shell and DVC's `sh -c` (or per stage) and that no import reads."""


# --------------------------------------------------------------------------------------------- client


def wanted() -> bool:
    return (
        os.environ.get(SWITCH_ENV, "").lower() not in ("off", "0", "false", "no")
        and not os.environ.get(CHILD_ENV)
        and hasattr(os, "fork")
        and hasattr(socket, "send_fds")
    )


def forward(module: str) -> None:
    """Run `python -m <module> <args>` in this project's warm runner and exit with its exit code.

    Returns (and the caller runs the command itself) when the runner is switched off or cannot be
    reached or started; never after the command has started there."""
    if not wanted():
        return
    try:
        digest = runner_key()
        sock = _connect_or_spawn(digest)
    except (OSError, UnicodeError):  # e.g. a project path that is not valid UTF-8: run here instead
        return
    if sock is None:
        return
    with sock:
        try:
            _send_request(sock, module)
            replies = sock.makefile("rb")
            first = replies.readline()  # the runner may still be importing (its first command)
        except OSError:
            return
        except KeyboardInterrupt:  # nothing started yet; the runner drops the request with the socket
            _die_of(signal.SIGINT)
        if not first:  # the runner went away before it started the command: run it here instead
            return
        pid = json.loads(first)["pid"]
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda s, _f: _kill(pid, s))
        last = replies.readline()
    if not last:
        print(
            f"error: the warm runner stopped while it ran {module} (pid {pid}); see {log_path()}",
            file=sys.stderr,
        )
        sys.exit(1)
    result = json.loads(last)
    if result.get("signal"):
        _die_of(int(result["signal"]))
    sys.exit(int(result["rc"]))


def _die_of(signum: int) -> None:
    """End this process by `signum`, as the command did (or, for SIGINT, as Python does on an uncaught
    KeyboardInterrupt): a shell script running it then stops too instead of carrying on after an exit
    code of 130 (bash's wait-and-cooperative-exit looks at how the child ended, not at the number)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1)  # delivered at once; should it be blocked, the exit code says the same
    sys.exit(128 + signum)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def runner_key() -> str:
    """Digest of everything the runner's imports depend on (see the module docstring)."""
    import importlib.util

    h = hashlib.sha256()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_KEY_IGNORED_ENV) and k not in _KEY_IGNORED_NAMES
    }
    h.update(
        json.dumps([sys.executable, sys.version, os.getcwd(), os.getuid(), sorted(env.items())]).encode()
    )
    h.update(json.dumps(sys.path).encode())
    for entry in sys.path:  # installing or removing a package changes its directory's mtime
        if entry.endswith(("site-packages", "dist-packages")):
            with contextlib.suppress(OSError):
                h.update(f"{entry}\0{os.stat(entry).st_mtime_ns}\n".encode())
    for package in ("peft_framework", "tasks", "flows"):
        spec = importlib.util.find_spec(package)
        for directory in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(directory).rglob("*.py")):
                st = path.stat()
                h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def run_dir() -> Path:
    """Private (0700) directory of this user's runner sockets: short paths (a socket path is ≤ 107 bytes)."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp")
    directory = base / f"peft-framework-warm-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    st = directory.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{directory} is not private to this user")
    return directory


def state_dir() -> Path:
    return local_api.prefect_home() / "warm"


def log_path() -> Path:
    return local_api.prefect_home() / "warm-runner.log"


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _connect_or_spawn(digest: str) -> socket.socket | None:
    path = run_dir() / f"{digest}.sock"
    sock = _connect(path)
    if sock is not None:
        return sock
    local_api.prestart()  # the Prefect API boots beside the runner's imports
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "tasks.warm", "serve", digest],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; not in dvc's process group
        )
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while time.monotonic() < deadline:
        sock = _connect(path)
        if sock is not None:
            return sock
        if runner.poll() is not None:  # lost a start race (the winner binds soon) or failed to start
            deadline = min(deadline, time.monotonic() + 2.0)
        time.sleep(0.05)
    return None


def _send_request(sock: socket.socket, module: str) -> None:
    payload = json.dumps(
        {"module": module, "argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ)}
    ).encode()
    message = struct.pack("!I", len(payload)) + payload
    sent = socket.send_fds(sock, [message], [0, 1, 2])
    if sent < len(message):
        sock.sendall(message[sent:])


# --------------------------------------------------------------------------------------------- runner


def serve(digest: str) -> int:
    """The runner: bind, import, then fork one child per request until idle or stopped."""
    directory = run_dir()
    lock = open(directory / f"{digest}.lock", "ab")  # noqa: SIM115 - held for the runner's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another runner with this key serves already
    path = directory / f"{digest}.sock"
    path.unlink(missing_ok=True)  # left by a runner that was killed; we hold its lock now
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    state = state_dir() / f"{digest}-{os.getpid()}.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    identity = local_api._home_identity(state.parent)  # a copied project's copy of this file is not its own
    record = {"pid": os.getpid(), "socket": str(path), "cwd": os.getcwd(), "home": identity}
    state.write_text(json.dumps(record) + "\n")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def retire() -> None:
        """Take no new commands: the socket and the lock go now, so the next command starts a new
        runner while this one finishes what it runs."""
        if listener.fileno() != -1:
            listener.close()
            path.unlink(missing_ok=True)
            lock.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = time.perf_counter()
    files = ModuleFiles()
    gate_bitsandbytes(False)  # the children of quantized runs lift it (tasks/stages.py: Stage.loaded)
    for name in FIRST:
        _import(name)
    files.record(since_ns=_LOADED_NS)
    _log(f"runner {digest} (pid {os.getpid()}) ready in {time.perf_counter() - started:.1f} s")
    imports = deque(_library_modules())

    running: dict[int, socket.socket] = {}
    home = os.getcwd()
    idle_since = time.monotonic()
    try:
        while True:
            imports.extend(_reap(running))
            unsafe = None if stopping else _fork_unsafe()
            if unsafe:
                _log(f"{unsafe} after imports: retiring (the next command starts a new runner)")
                stopping = True
            if not os.path.isdir(home):  # its project went (a `dvc exp run --temp` copy): stop
                stopping = True
            if not running and (stopping or time.monotonic() - idle_since > _idle_seconds()):
                break
            if running:
                idle_since = time.monotonic()
            if stopping:
                retire()
                time.sleep(0.2)
                continue
            with contextlib.suppress(InterruptedError):
                ready, _, _ = select.select([listener], [], [], 0 if imports else 0.2)
                if ready:
                    conn, _ = listener.accept()
                    changed = files.changed()
                    if (
                        changed is not None
                    ):  # this command runs in its own process; the next gets a new runner
                        _log(f"{changed} changed since it was imported: retiring")
                        conn.close()
                        stopping = True
                        continue
                    pid = _start(conn, listener, lock, running)
                    if pid is not None:
                        running[pid] = conn
                    continue
            while imports:  # one module per turn, then look for a command again
                name = imports.popleft()
                if name not in sys.modules:
                    since = time.time_ns()
                    _import(name)
                    files.record(since_ns=since)
                    break
    finally:
        retire()
        state.unlink(missing_ok=True)
        _log(f"runner {digest} stopped")
    return 0


class ModuleFiles:
    """The file of every module this process has imported, with its size and mtime when first seen: the
    check Python's own import cache makes (a `.pyc` is reused while its source's size and mtime match).
    A runner whose imported file changed (a plug-in, an editable install, a module on PYTHONPATH) would
    run old code in its children: it retires instead (see bench/README.md for what the check costs)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.stats: dict[str, tuple[int, int] | None] = {}

    @staticmethod
    def _stat(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def record(self, since_ns: int) -> None:
        """Note the files of the modules imported since the last call, which began at `since_ns` (time.time_ns).
        A file modified after that may have changed after it was read: it counts as changed at once."""
        for name, module in list(sys.modules.items()):
            if name in self.seen:
                continue
            self.seen.add(name)
            path = getattr(module, "__file__", None)
            if isinstance(path, str) and path not in self.stats:
                stat = self._stat(path)
                self.stats[path] = (-1, -1) if stat is not None and stat[1] >= since_ns else stat

    def changed(self) -> str | None:
        """The first recorded file whose size or mtime is not what it was (or that is gone), if any."""
        for path, before in self.stats.items():
            if self._stat(path) != before:
                return path
        return None


def _fork_unsafe() -> str | None:
    """Why forking this process is no longer safe, if an import made it so: a thread (a fork copies
    the locks it may hold mid-use) or an initialised CUDA context (unusable in a forked child)."""
    if threading.active_count() > 1:
        return f"threads {[t.name for t in threading.enumerate()]}"
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():
        return "CUDA initialised"
    return None


def _library_modules() -> list[str]:
    """Module names of the THEN packages, found on disk (importing a package to list it would import it)."""
    import importlib.util

    spec = importlib.util.find_spec("peft_framework")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(next(iter(spec.submodule_search_locations)))
    names: list[str] = []
    for package in THEN:
        for path in sorted((root / package).rglob("*.py")):
            parts = ("peft_framework", *path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts[-1] != "__main__":
                names.append(".".join(parts))
        if package == "training":
            names.append("tasks.progress")  # train's progress artifact (imports transformers' Trainer)
    return list(dict.fromkeys(names))


def _reap(running: dict[int, socket.socket]) -> list[str]:
    """Send each finished child's exit code to its client (128 + N when a signal N ended it; a child
    that ran to its end has sent it already, and the client reads only the first); returns
    the modules those children imported that the runner has not (see _learned)."""
    learned: list[str] = []
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        code = os.waitstatus_to_exitcode(status)
        conn = running.pop(pid, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                reply = {"rc": 128 - code, "signal": -code} if code < 0 else {"rc": code}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            conn.close()
        learned += _learned(pid)
    return learned


def _imports_file(pid: int) -> Path:
    return run_dir() / f"imports-{pid}.txt"


def _learned(pid: int) -> list[str]:
    """What the finished child imported lazily (Prefect's flow engine, fastapi's encoders, a model's
    modeling module...): the runner imports it too, so the next command finds it imported."""
    path = _imports_file(pid)
    try:
        names = path.read_text().split()
    except OSError:
        return []
    path.unlink(missing_ok=True)
    return [n for n in names if n not in sys.modules and "__main__" not in n and not is_gated(n)]


def _import(name: str) -> Any:
    import importlib
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001 - the command itself reports it, in its own process
        _log(f"import {name}: {type(exc).__name__}: {exc}")
        return None


def _start(
    conn: socket.socket, listener: socket.socket, lock: Any, running: dict[int, socket.socket]
) -> int | None:
    """Read one request and fork its child; the child never returns."""
    try:
        conn.settimeout(10)
        request, fds = _read_request(conn)
        conn.settimeout(None)
        if len(fds) != 3 or _peer_uid(conn) != os.getuid():
            raise OSError("bad request")
    except (OSError, ValueError):
        conn.close()
        return None
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            listener.close()
            lock.close()
            for other in running.values():
                other.close()
            code = _child(conn, request, fds)
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    except OSError:
        _kill(pid, signal.SIGTERM)
    return pid


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 20, 3)
    if len(data) < 4:
        raise ValueError("short request")
    (size,) = struct.unpack("!I", data[:4])
    body = bytearray(data[4:])
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    return json.loads(bytes(body)), fds


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> int:
    """In the forked child: become the client's process (stdio, cwd, env, argv) and run the module."""
    import atexit
    import random
    import runpy
    import traceback

    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[CHILD_ENV] = "1"
    sys.argv = list(request["argv"])
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    sys.stdout.reconfigure(line_buffering=os.isatty(1))
    finished = threading.Event()

    def watch_client() -> None:
        """The client's end closing before we finish means it was killed (a signal it could catch would
        have been forwarded): this command and its subprocesses die with it, as they would have."""
        with contextlib.suppress(OSError):
            while conn.recv(64):
                pass
        if not finished.is_set():
            os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch_client, name="warm-client", daemon=True).start()
    code, died_of = 0, 0
    imported_before = set(sys.modules)
    sys.modules.pop(request["module"], None)  # preloaded as a module; runs afresh as __main__
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:  # Python ends a process by SIGINT itself then; the client does (see _die_of)
        traceback.print_exc()
        code, died_of = 130, signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, exit 1
        traceback.print_exc()
        code = 1
    with contextlib.suppress(OSError):  # what the runner imports before the next command (see _learned)
        _imports_file(os.getpid()).write_text("\n".join(sorted(set(sys.modules) - imported_before)))
    # what interpreter shutdown does before exiting: wait for non-daemon threads, run atexit handlers
    # (Prefect drains its log and event workers there)
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    finished.set()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    # the exit code straight to the client: the runner may be busy importing a module for seconds before
    # it reaps this process (it still reports the exit of a child that died before getting here)
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps({"rc": code, "signal": int(died_of)}).encode() + b"\n")
    return code


def _idle_seconds() -> float:
    return float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


# --------------------------------------------------------------------------------------------- commands


def _runners() -> Iterator[tuple[Path, dict[str, Any]]]:
    """This PREFECT_HOME's runners (not those named by state files copied with the project)."""
    home = local_api._home_identity(state_dir())
    for path in sorted(state_dir().glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
            if state.get("home") == home:
                yield path, state


def _is_runner(pid: int) -> bool:
    try:
        return b"tasks.warm" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop(timeout: float = 60) -> int:
    """Stop this project's runners (each finishes the commands it is running first); how many."""
    pids = []
    for path, state in _runners():
        pid = int(state.get("pid", 0))
        if pid and _is_runner(pid):
            _kill(pid, signal.SIGTERM)
            pids.append(pid)
        else:
            path.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    while any(_is_runner(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return len(pids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.warm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="list this project's warm runners")
    sub.add_parser("stop", help="stop them (each finishes what it runs)")
    serve_parser = sub.add_parser("serve", help="(internal) run a runner for the given key")
    serve_parser.add_argument("digest")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.digest)
    if args.command == "stop":
        print(f"stopped {stop()} warm runner(s)")
        return 0
    found = [(p, s) for p, s in _runners() if _is_runner(int(s.get("pid", 0)))]
    for path, state in found:
        print(f"{path.stem}: pid {state['pid']}, socket {state['socket']}")
    if not found:
        print("no warm runner")
    return 0


if __name__ == "__main__":
    sys.exit(main())
