"""One local Prefect API per project, shared by the pipeline's processes: started on first use, stopped
when idle.

Without `PREFECT_API_URL`, Prefect starts a temporary API server inside every process that runs a flow
(its "ephemeral" mode) and stops it when the process exits. `dvc repro` runs every stage in its own
process, so a five-stage pipeline started five servers (7-15 s each on a small machine). Here the first
stage starts one Prefect server (Prefect's ephemeral API app, `create_app(ephemeral=True)`: no UI, no
background services, served by uvicorn in the supervisor process itself, as `prefect server start` does,
on a free loopback port) in a small detached supervisor process, records its address in
`$PREFECT_HOME/local-api.json`, and the following stages (and `python -m flows.pipeline`) reuse it.

Start-up cost: the server imports Prefect's whole server stack (about 8 s of CPU on a small machine), so
the pipeline commands call `prestart()` before they import Prefect themselves: the supervisor then boots
while the stage process imports Prefect and loads its config, and `ensure()` only waits for what is left.

Lifetime: every process using the server holds a shared `flock` on `$PREFECT_HOME/local-api.clients`
for as long as it runs (the kernel drops the lock when the process ends, however it ends). The supervisor
stops the server once nobody has held that lock for `PEFT_LOCAL_API_IDLE_SECONDS` (default 300 s), or on
`python -m tasks.local_api stop`. Starting and stopping are serialised by `$PREFECT_HOME/local-api.lock`,
so two processes never start two servers and a server never stops under a process that just found it.

The state file names the PREFECT_HOME it belongs to (its path and inode): a copy of the project (`cp -r`,
its `.prefect/` included) does not use the original's server, it starts its own. A corrupt `prefect.db`
is moved aside (`prefect.db.corrupt-<time>`, with a warning) and the server starts with a fresh one. A
server that cannot start, or a PREFECT_HOME that cannot be written (a full disk), is an `error:`.

`PREFECT_API_URL` set (your own server or Prefect Cloud): nothing is started; a value that is not an
http(s) URL, or names a server that does not answer, is an `error:` naming the variable, before any run. `PEFT_LOCAL_API=off`:
Prefect's per-process ephemeral API, as before.

    python -m tasks.local_api status|stop
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import tasks  # noqa: F401  -- the project's Prefect settings (PREFECT_HOME) before anything reads them
from peft_framework.errors import UserError
from peft_framework.failures import describe_failure

STATE_FILE = "local-api.json"
STARTING_FILE = "local-api.starting"
LOCK_FILE = "local-api.lock"
CLIENTS_FILE = "local-api.clients"
LOG_FILE = "local-api.log"
IDLE_ENV = "PEFT_LOCAL_API_IDLE_SECONDS"
SWITCH_ENV = "PEFT_LOCAL_API"
DEFAULT_IDLE_S = 300.0
POLL_S = 0.5


class ApiUnavailable(UserError):
    """The Prefect API this command should use cannot be used: an `error:` line and exit 2, before any run."""


_client_lock: IO[bytes] | None = None
"""This process's shared lock on the clients file: held until the process exits."""
_spawned: subprocess.Popen[bytes] | None = None
"""The supervisor this process spawned (reaped when it dies during start-up)."""


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def state(self) -> Path:
        return self.home / STATE_FILE

    @property
    def starting(self) -> Path:
        """The pid of a supervisor spawned by `prestart` that may not answer yet."""
        return self.home / STARTING_FILE

    @property
    def lock(self) -> Path:
        return self.home / LOCK_FILE

    @property
    def clients(self) -> Path:
        return self.home / CLIENTS_FILE

    @property
    def log(self) -> Path:
        return self.home / LOG_FILE


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser().resolve()


@contextlib.contextmanager
def _locked(path: Path, mode: int, create: bool = True) -> Iterator[IO[bytes] | None]:
    """Hold `path` locked. `create=False` (the supervisor): when its directory is gone, yield None rather
    than create it again (a queued `dvc exp run`'s project copy, deleted by DVC, must stay deleted)."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        f = open(path, "ab")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        if create:
            raise
        yield None
        return
    with f:
        fcntl.flock(f, mode)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _healthy(api_url: str, timeout: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _home_identity(home: Path) -> list[object]:
    """What ties a state file to its PREFECT_HOME: the path and the directory's device and inode (a copied
    project's `.prefect/` holds a copy of the original's state file, naming the original's server)."""
    try:
        st = os.stat(home)
    except OSError:
        return [str(home)]
    return [str(home), st.st_dev, st.st_ino]


def _read_state(paths: Paths) -> dict[str, object] | None:
    """The state file, if it is this PREFECT_HOME's own (not one copied from another project)."""
    try:
        state = json.loads(paths.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("home") != _home_identity(paths.home):
        return None
    return state


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_api(paths: Paths) -> str | None:
    """The recorded server's API URL if its supervisor lives and it answers, else None."""
    state = _read_state(paths)
    if state and _alive(state.get("pid")) and _healthy(str(state.get("api_url"))):
        return str(state["api_url"])
    return None


def _hold_client_lock(paths: Paths) -> None:
    global _client_lock
    if _client_lock is None:
        _client_lock = open(paths.clients, "ab")  # noqa: SIM115 -- held for the process lifetime
        fcntl.flock(_client_lock, fcntl.LOCK_SH)


def _startup_timeout() -> float:
    return float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))


def _wanted() -> bool:
    return not os.environ.get("PREFECT_API_URL") and os.environ.get(SWITCH_ENV, "").lower() not in (
        "off",
        "0",
        "false",
    )


def prestart(home: Path | None = None) -> None:
    """Spawn the supervisor now if no server runs or starts, without waiting for it: call before importing
    Prefect, so the server boots while this process imports. `ensure()` later waits for it. Never raises:
    a supervisor that fails to start is reported by `ensure()`."""
    if not _wanted():
        return
    paths = Paths(home or prefect_home())
    try:
        with _locked(paths.lock, fcntl.LOCK_EX):
            state = _read_state(paths)
            if (state and _alive(state.get("pid"))) or _alive(_starting_pid(paths)):
                return  # running (ensure() checks it answers) or already starting
            _spawn(paths)
    except OSError:
        return


def ensure(home: Path | None = None) -> str | None:
    """The API URL this process should use: None when PREFECT_API_URL is set or the switch is off;
    else the project's local server, started now if none runs. Marks this process as its client."""
    if not _wanted():
        check_api_url()
        return None
    paths = Paths(home or prefect_home())
    try:
        with _locked(paths.lock, fcntl.LOCK_EX):
            api_url = running_api(paths)
            if api_url is None:
                pid = _starting_pid(paths)
                api_url = _wait(paths, pid if _alive(pid) else _spawn(paths))
            _hold_client_lock(paths)  # before the start lock goes: the server cannot stop under us
    except OSError as exc:
        raise ApiUnavailable(
            f"PREFECT_HOME: {describe_failure(exc) or exc}; the local Prefect API keeps its database and "
            f"state in {paths.home}. Free space there, or set PREFECT_HOME to a writable directory"
        ) from None
    return api_url


def check_api_url(timeout: float = 10.0) -> None:
    """A PREFECT_API_URL the user set must be an http(s) URL that a server answers (any HTTP response:
    Prefect Cloud asks for a key); otherwise ApiUnavailable now instead of a traceback after retries."""
    value = os.environ.get("PREFECT_API_URL")
    if not value:
        return
    from urllib.parse import urlsplit

    import httpx

    shown = value if len(value) <= 200 else value[:200] + "..."
    unset = "or unset PREFECT_API_URL to use the project's local API"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ApiUnavailable(
            f"PREFECT_API_URL: {shown!r} is not an http(s) URL; allowed: a Prefect API address such as "
            f"http://127.0.0.1:4200/api, {unset}"
        )
    try:
        httpx.get(f"{value.rstrip('/')}/health", timeout=timeout)
    except (httpx.HTTPError, ValueError) as exc:
        raise ApiUnavailable(
            f"PREFECT_API_URL: no Prefect server answers at {shown!r} ({type(exc).__name__}: {exc}); "
            f"start that server, {unset}"
        ) from None


@contextlib.contextmanager
def session() -> Iterator[str | None]:
    """Run the enclosed flow runs against the project's local API (see `ensure`); yields its URL."""
    api_url = ensure()
    if api_url is None:
        yield None
        return
    from prefect.context import SettingsContext

    current = SettingsContext.get()
    assert current is not None  # Prefect enters its root settings context on import
    settings = current.settings
    settings = settings.model_copy(
        update={
            "api": settings.api.model_copy(update={"url": api_url}),
            # This server is Prefect's app without its background services: no automation reads flow-run
            # heartbeats, and sending them costs each flow run up to 1 s at its end (the heartbeat thread
            # sleeps in 1 s steps before it can be joined). With your own server they stay on.
            "flows": settings.flows.model_copy(update={"heartbeat_frequency": None}),
        }
    )
    os.environ["PREFECT_API_URL"] = api_url  # subprocesses (e.g. a stage's workers) use it too
    try:
        # a copy with two fields changed, not `temporary_settings`, which re-reads every setting (~0.1 s)
        with SettingsContext(profile=current.profile, settings=settings):
            yield api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def _starting_pid(paths: Paths) -> int | None:
    try:
        return int(paths.starting.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _spawn(paths: Paths) -> int:
    """Start the detached supervisor (caller holds the start lock); returns its pid."""
    global _spawned
    paths.state.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    with open(paths.log, "ab") as log:
        _spawned = subprocess.Popen(
            [sys.executable, "-m", "tasks.local_api", "serve", "--home", str(paths.home)],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this process; not killed by the terminal's Ctrl-C
        )
    paths.starting.write_text(f"{_spawned.pid}\n", encoding="utf-8")
    return _spawned.pid


def _exited(pid: int) -> bool:
    if _spawned is not None and _spawned.pid == pid:
        return _spawned.poll() is not None  # our child: reap it, or it stays a live-looking zombie
    return not _alive(pid)


def _wait(paths: Paths, pid: int) -> str:
    """Wait until supervisor `pid` serves (caller holds the start lock); its API URL."""
    deadline = time.monotonic() + _startup_timeout() + 30
    while time.monotonic() < deadline:
        state = _read_state(paths)
        if state and state.get("pid") == pid and _healthy(str(state["api_url"])):
            paths.starting.unlink(missing_ok=True)
            for note in state.get("notes") or []:  # e.g. a corrupt database moved aside
                print(f"warning: {note}", file=sys.stderr, flush=True)
            return str(state["api_url"])
        if _exited(pid):
            break
        time.sleep(0.1)
    if not _exited(pid):
        os.kill(pid, signal.SIGTERM)
    paths.starting.unlink(missing_ok=True)
    try:
        tail = paths.log.read_text(encoding="utf-8", errors="replace")[-3000:]
    except OSError:
        tail = ""
    full = ""
    with contextlib.suppress(OSError):
        st = os.statvfs(paths.home)
        if st.f_bavail * st.f_frsize < 1 << 20:
            full = f" PREFECT_HOME {paths.home} is on a full disk (no space left on device)."
    raise ApiUnavailable(
        f"the local Prefect API did not start (log {paths.log}).{full} Its last lines:\n{tail.strip()}"
    )


def _idle_seconds() -> float:
    return float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S))


def _clients_busy(paths: Paths) -> bool:
    try:
        f = open(paths.clients, "ab")  # noqa: SIM115 - closed below
    except FileNotFoundError:  # the home is gone: nobody can use this server any more
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def serve(home: Path) -> int:
    """The supervisor: serve Prefect's ephemeral API app (in this process) until idle or told to stop."""
    import uvicorn
    from prefect.server.api.server import create_app

    paths = Paths(home)
    paths.clients.touch()
    stopping = threading.Event()
    database = _sqlite_database()
    notes = [note] if database is not None and (note := _set_aside_if_corrupt(database)) else []
    seeded = database is not None and _seed_from_template(database, home)

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with another process
    api_url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    server = uvicorn.Server(
        uvicorn.Config(create_app(ephemeral=True, final=True), log_level="error", lifespan="on")
    )
    # uvicorn installs no signal handlers outside the main thread; this one keeps the signals
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="prefect-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + _startup_timeout()
    while not (server.started and _healthy(api_url)):
        if not thread.is_alive() or stopping.is_set() or time.monotonic() > deadline:
            print("local Prefect API failed to start", flush=True)
            server.should_exit = True
            return 1
        time.sleep(0.1)
    state = {
        "api_url": api_url,
        "pid": os.getpid(),
        "started": time.time(),
        "home": _home_identity(paths.home),
        "notes": notes,
    }
    tmp = paths.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state) + "\n", encoding="utf-8")
    tmp.replace(paths.state)
    print(f"local Prefect API on {api_url} (supervisor pid {os.getpid()})", flush=True)
    if database is not None and not seeded:
        _save_template(database, home)
    idle_s, last_busy = _idle_seconds(), time.monotonic()
    try:
        while not stopping.wait(POLL_S) and thread.is_alive():
            if not paths.home.is_dir():  # its project went (a `dvc exp run --queue/--temp` copy): stop
                break
            if _clients_busy(paths):
                last_busy = time.monotonic()
            elif time.monotonic() - last_busy > idle_s:
                with _locked(paths.lock, fcntl.LOCK_EX, create=False):
                    if not _clients_busy(paths):  # nobody found us while we waited for the lock
                        _forget(paths)
                        break
                last_busy = time.monotonic()
    finally:
        with _locked(paths.lock, fcntl.LOCK_EX, create=False):
            _forget(paths)
            server.should_exit = True
            thread.join(timeout=30)
    print(f"local Prefect API on {api_url} stopped", flush=True)
    return 0


def _set_aside_if_corrupt(database: Path) -> str | None:
    """Move a database SQLite cannot read (or whose quick check fails) aside, with its -wal/-shm files,
    so the server starts with a fresh one; what was done, for the warning, or None when it is sound."""
    import sqlite3

    if not database.is_file() or database.stat().st_size == 0:
        return None
    try:
        connection = sqlite3.connect(database)
        try:
            rows = connection.execute("PRAGMA quick_check").fetchall()
        finally:
            connection.close()
        if rows == [("ok",)]:
            return None
        why = "; ".join(str(row[0]) for row in rows[:3])
    except sqlite3.DatabaseError as exc:
        why = str(exc)
    aside = database.with_name(f"{database.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        source = database.with_name(database.name + suffix)
        if source.exists():
            os.replace(source, aside.with_name(aside.name + suffix))
    note = (
        f"the Prefect database {database} is corrupt ({why}); moved aside to {aside}, the local Prefect API "
        "starts with a fresh one (past flow runs are in the old file)"
    )
    print(note, flush=True)
    return note


def _template_dir() -> Path:
    """Where fresh Prefect databases are kept per Prefect version, for every project of this user."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return cache / "peft-framework" / "prefect-db"


def _sqlite_database() -> Path | None:
    """The server's SQLite file when Prefect uses its default database (not a configured PostgreSQL)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url
    value = url.get_secret_value() if url is not None else ""
    prefix = "sqlite+aiosqlite:///"
    return Path(value[len(prefix) :]) if value.startswith(prefix) else None


def _template(suffix: str) -> Path:
    import prefect

    return _template_dir() / f"prefect-{prefect.__version__}{suffix}"


def _seed_from_template(database: Path, home: Path) -> bool:
    """A project without a Prefect database starts from a copy of a fresh one made by an earlier start of
    the same Prefect version (migrated, block types registered): a first start then skips the migrations
    (~half of a first start on a small machine). True when seeded."""
    template = _template(".db")
    if database.exists() or not template.is_file():
        return False
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        tmp = database.with_name(f".{database.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, tmp)
        os.replace(tmp, database)
        memo, memo_template = home / "memo_store.toml", _template(".memo_store.toml")
        if memo_template.is_file() and not memo.exists():
            shutil.copyfile(memo_template, memo)
    except OSError:
        return False
    print(f"Prefect database seeded from {template}", flush=True)
    return True


def _save_template(database: Path, home: Path) -> None:
    """Keep a copy of the database this start created (migrated, nothing run yet) as the template."""
    import sqlite3

    template = _template(".db")
    if template.exists():
        return
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
        source, target = sqlite3.connect(database), sqlite3.connect(tmp)
        try:
            source.backup(target)  # a consistent copy while the server holds the file open
        finally:
            source.close()
            target.close()
        memo = home / "memo_store.toml"
        if memo.is_file():
            shutil.copyfile(memo, _template(".memo_store.toml"))
        os.replace(tmp, template)
    except (OSError, sqlite3.Error):
        return


def _forget(paths: Paths) -> None:
    """Remove the state file if it is this supervisor's."""
    state = _read_state(paths)
    if state and state.get("pid") == os.getpid():
        paths.state.unlink(missing_ok=True)


def stop(home: Path | None = None, timeout: float = 30) -> bool:
    """Stop the project's local server, if one runs; True when one was stopped."""
    paths = Paths(home or prefect_home())
    state = _read_state(paths)
    pid = state.get("pid") if state else None
    if not _alive(pid):
        return False
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.local_api", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="(internal) run the supervisor in the foreground")
    serve_p.add_argument("--home", type=Path, required=True)
    sub.add_parser("status", help="print the running local API's URL, if any")
    sub.add_parser("stop", help="stop the project's local API")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.home)
    if args.command == "status":
        url = running_api(Paths(prefect_home()))
        print(url or "no local Prefect API running")
        return 0
    print("stopped" if stop() else "no local Prefect API running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
