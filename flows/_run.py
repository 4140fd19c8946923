"""What the pipeline and stage flows share: run stage tasks in order, publish artifacts, the CLI."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.states import Failed, State
from tasks import local_api
from tasks.fingerprint import resolve
from tasks.run import STAGE_TASKS, promote_gate

from flows.artifacts import publish
from peft_framework.config import load_config_with_warnings
from peft_framework.config.schema import Config
from peft_framework.errors import UserError


def load(config_path: str, overrides: Sequence[str] | None, root: str) -> tuple[Config, Path, list[str]]:
    """The resolved config, the absolute project root, and the config warnings (ignored keys).

    The command line loads the config once to report mistakes before any flow run, and the flow loads it
    again (a flow must stand alone: deployments call it directly); the second load in the same process
    reuses the first while the file is unchanged (same size and modification time)."""
    root_path = Path(root).resolve()
    path = resolve(root_path, config_path)
    try:
        st = os.stat(path)
        key: tuple[Any, ...] | None = (str(path), st.st_size, st.st_mtime_ns, tuple(overrides or ()))
    except OSError:
        key = None  # the loader reports the missing file
    if key is not None and key in _LOADED:
        config, warnings = _LOADED[key]
    else:
        config, warnings = load_config_with_warnings(path, list(overrides or ()))
        _LOADED.clear()
        if key is not None:
            _LOADED[key] = (config, warnings)
    return config, root_path, list(warnings)


_LOADED: dict[tuple[Any, ...], tuple[Config, list[str]]] = {}
"""The last config `load` read in this process, by file identity and overrides."""


def load_in_flow(config_path: str, overrides: Sequence[str] | None, root: str) -> tuple[Config, Path]:
    """`load` inside a flow run: config notes (keys of other adapter types ignored) go to the run log."""
    config, root_path, warnings = load(config_path, overrides, root)
    for message in warnings:
        get_run_logger().info("config: %s", message)
    return config, root_path


def run_stages(names: Sequence[str], config: Config, root: Path) -> dict[str, Any] | State[Any]:
    """Run the stage tasks one after another (each waits for the previous) inside the current flow.

    Returns {"stages": {name: {"state": "Completed"|"Cached", "seconds", "summary", "outputs"}}}, or the
    failed state of the first stage that failed, which then becomes the flow run's final state.
    """
    logger = get_run_logger()
    results: dict[str, Any] = {}
    upstream: list[State[Any]] = []
    for name in names:
        started = time.perf_counter()
        state = STAGE_TASKS[name](config=config, root=str(root), wait_for=upstream, return_state=True)
        if not state.is_completed():
            return Failed(message=f"stage {name!r}: {state.message}", data=state.data)
        seconds = round(time.perf_counter() - started, 3)
        results[name] = {"state": state.name, "seconds": seconds, **state.result()}
        publish(name, config, root)
        logger.info("stage %s: %s in %.1f s", name, "cache hit" if state.name == "Cached" else "ran", seconds)
        upstream = [state]
    return {"stages": results}


def run_promote(results: dict[str, Any], config: Config, root: Path) -> dict[str, Any] | State[Any]:
    """The promotion gate after the stages, as `dvc repro` runs dvc.yaml's `promote` stage: `results` (of
    `run_stages`) gains its decision, or the gate's failed state is returned."""
    started = time.perf_counter()
    state = promote_gate(config=config, root=str(root), return_state=True)
    if not state.is_completed():
        return Failed(message=f"stage 'promote': {state.message}", data=state.data)
    results["stages"]["promote"] = {
        "state": state.name,
        "seconds": round(time.perf_counter() - started, 3),
        **state.result(),
    }
    for line in results["stages"]["promote"]["summary"]["reasons"]:
        get_run_logger().info("promote: %s", line)
    return results


def user_error_of(state: State[Any]) -> UserError | None:
    """The UserError a failed flow run ended with, if that is why it failed."""
    exc = state.result(raise_on_failure=False)
    while isinstance(exc, State):  # a flow that returned a task's failed state
        exc = exc.result(raise_on_failure=False)
    return exc if isinstance(exc, UserError) else None


def cli(
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], State[Any]],
    argv: Sequence[str] | None = None,
) -> int:
    """Shared command line: CONFIG and KEY=VALUE overrides, a clean exit 2 for user mistakes."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. adapter.r=32"
    )
    parser.add_argument("--config", default="params.yaml", help="experiment config (default: params.yaml)")
    parser.add_argument("--root", default=".", help="project root; relative config paths resolve here")
    parser.add_argument("--summary-json", type=Path, help="also write the run summary (JSON) to this file")
    args = parser.parse_args(argv)
    try:
        load(args.config, args.overrides, args.root)  # config mistakes: one clean message, before any run
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        with local_api.session():  # one local Prefect API for all stages unless PREFECT_API_URL is set
            return _report(run(args), args.summary_json)
    except local_api.ApiUnavailable as exc:  # raised before any run: a bad PREFECT_API_URL, a full disk
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _report(state: State[Any], summary_json: Path | None) -> int:
    """Exit code and console lines for a finished run (and its --summary-json file)."""
    if not state.is_completed():
        error = user_error_of(state)
        print(f"error: {error if error is not None else state.message}", file=sys.stderr)
        return error.exit_code if error is not None else 1
    summary = state.result()
    if summary_json:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name, stage in summary["stages"].items():
        print(f"{name}: {'cache hit' if stage['state'] == 'Cached' else 'ran'} ({stage['seconds']:.1f} s)")
    return 0
