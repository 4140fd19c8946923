"""Where a fresh-clone `dvc repro` spends its time, per stage: start-up, own work, finish, DVC.

    python bench/stage_startup.py [--tiny] [--json out.json]

Runs `dvc repro` in two fresh copies of the project (tests/e2e/pipeline_project.py), first with the warm
runner (tasks/warm.py), then with `PEFT_WARM=off` (each stage command its own process, as before it), and
timestamps every output line as it arrives. Per stage:
  start-up  from DVC's "Running stage 'X'" to the stage flow's "Beginning flow run" (the process or the
            warm runner's child starting, imports, config, the local Prefect API, the flow run's creation)
  own       the stage's own work as its flow logs it ("stage X: ran in N s")
  finish    from that line to the flow's "Finished in state" (artifacts, final state)
  after     from "Finished in state" to DVC's next "Running stage" (or the end): the process's exit and
            DVC hashing, caching the outputs and writing dvc.lock
The `promote` stage is no flow (a plain command): its whole span is reported as `after`.
Reports; never asserts.
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

from pipeline_project import TINY_PARAMS, make_project

RUNNING = re.compile(r"Running stage '(\w+)'")
BEGIN = re.compile(r"Flow run '(\w+)' - Beginning flow run")
RAN = re.compile(r"stage (\w+): (?:ran|cache hit) in ([0-9.]+) s")
FINISHED = re.compile(r"Flow run '(\w+)' - Finished in state")


def timeline(params: dict, warm: bool) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="stage-startup-"))
    try:
        project = make_project(workdir, params)
        env = dict(project.env, **({} if warm else {"PEFT_WARM": "off"}))
        started = time.perf_counter()
        proc = subprocess.Popen(
            ["dvc", "repro"],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        events: list[tuple[float, str]] = [(time.perf_counter() - started, line) for line in proc.stdout]
        proc.wait()
        total = round(time.perf_counter() - started, 2)
        for module in ("tasks.warm", "tasks.local_api"):
            subprocess.run([sys.executable, "-m", module, "stop"], cwd=workdir, env=env, capture_output=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    stages: dict[str, dict[str, float]] = {}
    marks: dict[str, dict[str, float]] = {}
    order: list[str] = []
    for t, line in events:
        if m := RUNNING.search(line):
            order.append(m.group(1))
            marks[m.group(1)] = {"running": t}
        elif (m := BEGIN.search(line)) and m.group(1) in marks:
            marks[m.group(1)].setdefault("begin", t)
        elif (m := RAN.search(line)) and m.group(1) in marks:
            marks[m.group(1)].update(ran=t, own=float(m.group(2)))
        elif (m := FINISHED.search(line)) and m.group(1) in marks:
            marks[m.group(1)]["finished"] = t
    ends = [marks[n]["running"] for n in order[1:]] + [total]
    for name, end in zip(order, ends):
        m = marks[name]
        if "begin" not in m:  # not a flow (promote)
            stages[name] = {"after": round(end - m["running"], 2)}
            continue
        stages[name] = {
            "startup": round(m["begin"] - m["running"], 2),
            "own": m.get("own", 0.0),
            "finish": round(m["finished"] - m["ran"], 2),
            "after": round(end - m["finished"], 2),
        }
    first = marks[order[0]]["running"] if order else total
    return {
        "warm": warm,
        "total_s": total,
        "dvc_start_s": round(first, 2),
        "stages": stages,
        "rc": proc.returncode,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="few-step training settings (as the e2e tests)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    params = TINY_PARAMS if args.tiny else {}
    runs = [timeline(params, warm=True), timeline(params, warm=False)]
    for run in runs:
        print(
            f"\n{'warm runner' if run['warm'] else 'PEFT_WARM=off'}: dvc repro {run['total_s']} s (rc {run['rc']})"
        )
        print(f"{'stage':12} {'start-up':>9} {'own':>7} {'finish':>7} {'after':>7}")
        for name, s in run["stages"].items():
            cells = [
                f"{s[k]:>{w}.2f}" if k in s else " " * w
                for k, w in (("startup", 9), ("own", 7), ("finish", 7))
            ]
            print(f"{name:12} {' '.join(cells)} {s['after']:>7.2f}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
