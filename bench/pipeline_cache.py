"""What the pipeline's caches cost: a no-op `dvc repro` and an all-cache-hit flow run, against full runs.

    python bench/pipeline_cache.py [--tiny] [--keep DIR]

In a temporary git repo copied from the project (params.yaml as committed; `--tiny` uses the e2e
tests' few-step settings), times as wall-clock seconds of the commands a user types:
  1. dvc repro                      full: every stage runs (one Prefect flow run per stage)
  2. dvc repro                      no-op: DVC finds nothing changed
  3. python -m flows.pipeline       all cache hits (the stage flows of step 1 filled the result cache)
  4. python -m flows.pipeline       full, after deleting every output and the result cache
  5. python -m flows.pipeline       all cache hits again
Prints JSON: the times, the stages' own work in the full `dvc repro` (the in-flow seconds its stage flows
log) and how many Prefect APIs it started, the ratios full repro / own work, no-op repro / full repro and all-hit flow / full flow, and the
in-flow seconds per stage of the flow runs (without process start and Prefect's API start-up). Runs on
the project's local API unless PREFECT_API_URL is set, the commands served by the warm runner
(tasks/warm.py; `--no-warm`: each in its own process, as before it). Reports; never asserts.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from pipeline_project import TINY_PARAMS, Project, base_env, make_project

STAGE_LINE = re.compile(r"stage (\w+): (?:ran|cache hit) in ([0-9.]+) s")
API_STARTS = re.compile(r"Starting temporary server|local Prefect API on")


def timed(project: Project, *args: str) -> float:
    started = time.perf_counter()
    proc = project.run(*args, timeout=7200)
    seconds = round(time.perf_counter() - started, 2)
    LAST.update(own=stage_seconds(proc.stdout + proc.stderr), api_starts=api_starts(project, proc))
    print(f"{' '.join(args)}: {seconds} s; stages' own work {LAST['own']} s", file=sys.stderr, flush=True)
    return seconds


LAST: dict[str, object] = {}
"""The stages' own seconds and the Prefect API starts of the last timed command."""


def stage_seconds(output: str) -> float:
    """Sum of the in-flow seconds of every stage the command's flow runs logged ("stage X: ran in N s")."""
    return round(sum(float(s) for _, s in STAGE_LINE.findall(output)), 2)


def api_starts(project: Project, proc: object) -> int:
    """Prefect API servers started by the command: temporary ones it logged, plus local-API starts."""
    log = project.root / ".prefect" / "local-api.log"
    started = log.read_text().count("local Prefect API on") if log.is_file() else 0
    before = LAST.get("local_api_log_count", 0)
    LAST["local_api_log_count"] = started
    output = getattr(proc, "stdout", "") + getattr(proc, "stderr", "")
    return output.count("Starting temporary server") + started - int(before)


def flow(project: Project, summary: Path) -> tuple[float, dict[str, dict[str, object]]]:
    seconds = timed(project, "python", "-m", "flows.pipeline", "--summary-json", str(summary))
    stages = json.loads(summary.read_text())["stages"]
    return seconds, {name: {"state": s["state"], "seconds": s["seconds"]} for name, s in stages.items()}


def clean(project: Project) -> None:
    """Delete every stage output and the Prefect result cache (not the Prefect database)."""
    for rel in ("data/raw", "data/prepared", "data/rejected.jsonl", "models", "reports", ".prefect/storage"):
        path = project.root / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="few-step training settings (as the e2e tests)")
    parser.add_argument("--keep", type=Path, help="build the project copy here and keep it")
    parser.add_argument(
        "--no-warm", action="store_true", help="PEFT_WARM=off: every command in its own process (before)"
    )
    args = parser.parse_args()

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="pipeline-cache-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        project = make_project(workdir, TINY_PARAMS if args.tiny else {})
        if args.no_warm:
            project.env["PEFT_WARM"] = "off"
        out: dict[str, object] = {"params": "tiny" if args.tiny else "params.yaml", "warm": not args.no_warm}
        out["repro_full_s"] = timed(project, "dvc", "repro")
        out["repro_full_own_s"], out["repro_full_api_starts"] = LAST["own"], LAST["api_starts"]
        out["repro_noop_s"] = timed(project, "dvc", "repro")
        out["flow_after_repro_s"], out["flow_after_repro"] = flow(project, workdir / "flow1.json")
        clean(project)
        out["flow_full_s"], out["flow_full"] = flow(project, workdir / "flow2.json")
        out["flow_hits_s"], out["flow_hits"] = flow(project, workdir / "flow3.json")
        out["ratio_repro_full_to_own_work"] = round(
            out["repro_full_s"] / max(out["repro_full_own_s"], 1e-9), 2
        )
        out["ratio_repro_noop_to_full"] = round(out["repro_noop_s"] / out["repro_full_s"], 4)
        out["ratio_flow_hits_to_full"] = round(out["flow_hits_s"] / out["flow_full_s"], 4)
        in_flow_full = sum(s["seconds"] for s in out["flow_full"].values())
        in_flow_hits = sum(s["seconds"] for s in out["flow_hits"].values())
        out["ratio_flow_hits_to_full_in_flow"] = round(in_flow_hits / in_flow_full, 4)
        log = project.root / ".prefect" / "warm-runner.log"
        out["warm_runner_starts"] = log.read_text().count(" ready in ") if log.is_file() else 0
        print(json.dumps(out, indent=2))
    finally:
        for module in ("tasks.local_api", "tasks.warm"):
            stop = [sys.executable, "-m", module, "stop"]
            subprocess.run(stop, cwd=workdir, env=base_env(workdir), capture_output=True, check=False)
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
