"""The pipeline across machines: each stage a Prefect deployment on a work pool, outputs moved by DVC.

    python -m flows.pools [--summary-json FILE]     # needs PREFECT_API_URL and the deployments (prefect.yaml)

`pool_stage` runs on a worker of the stage's pool (prefect.yaml: `cpu` for sample_data, prepare, evaluate and
export, `gpu` for train and harness), in that worker's checkout of the project (the pool's `working_dir`). It
  1. writes the dvc.lock entries it was given (what upstream stages produced, on other machines),
  2. `dvc pull`s those outputs from the project's default DVC remote,
  3. `dvc repro --single-item STAGE`: DVC runs the stage's command (flows.stage, the same cached task) or
     skips it when its deps, params and outputs match its lock entry,
  4. `dvc push`es the stage's outputs and publishes its new lock entry as an artifact (`dvc-lock-STAGE`).
`pool_pipeline` runs the stages in order with run_deployment, passing the lock entries along, and writes
the merged dvc.lock into its own checkout: `dvc pull` there then fetches every output.
Nothing is copied between machines except through the DVC remote; Prefect carries only the small lock text.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flows  # noqa: F401  # isort: skip -- applies the project's Prefect settings before Prefect is imported
import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State
from tasks.stages import ORDER

POOLS: dict[str, str] = {
    "sample_data": "cpu",
    "prepare": "cpu",
    "train": "gpu",
    "evaluate": "cpu",
    "harness": "gpu",  # lm-evaluation-harness benchmarks
    "export": "cpu",
}
"""Where each stage runs (the work pools of the deployments in prefect.yaml)."""
STAGE_FLOW = "peft-pool-stage"
LOCK = "dvc.lock"
ARTIFACT_PREFIX = "dvc-lock-"


def _artifact_key(stage: str) -> str:
    return ARTIFACT_PREFIX + stage.replace("_", "-")  # artifact keys: lowercase letters, digits, dashes


def read_lock(root: Path) -> dict[str, Any]:
    """The stage entries of root/dvc.lock ({} when there is none)."""
    path = root / LOCK
    if not path.is_file():
        return {}
    return dict((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {})


def write_lock(root: Path, entries: dict[str, Any]) -> None:
    """Merge stage entries into root/dvc.lock, stages in pipeline order (DVC's own file format)."""
    stages = {**read_lock(root), **entries}
    ordered = {name: stages[name] for name in ORDER if name in stages}
    ordered.update({k: v for k, v in stages.items() if k not in ordered})
    text = yaml.safe_dump({"schema": "2.0", "stages": ordered}, sort_keys=False)
    (root / LOCK).write_text(text, encoding="utf-8")


def _dvc(root: Path, *args: str) -> str:
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` in {root} exited {proc.returncode}:\n{output[-4000:]}")
    return output


@flow(
    name=STAGE_FLOW,
    flow_run_name="{stage}",
    description="One stage on this worker, outputs via the DVC remote",
)
def pool_stage(stage: str, lock: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run `stage` in this worker's checkout (the flow run's working directory); returns its lock entry."""
    if stage not in ORDER:
        raise ValueError(f"stage: {stage!r}; allowed: {', '.join(ORDER)}")
    logger = get_run_logger()
    root = Path.cwd()
    timings: dict[str, float] = {}

    started = time.perf_counter()
    if lock:
        write_lock(root, lock)
        # the stages before this one (its inputs) and this one (present outputs let DVC skip it)
        needed = [name for name in ORDER[: ORDER.index(stage) + 1] if name in lock]
        if needed:
            _dvc(root, "pull", "--allow-missing", *needed)
    timings["pull_s"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    output = _dvc(root, "repro", "--single-item", stage)
    ran = stage in re.findall(r"Running stage '([^']+)'", output)
    timings["repro_s"] = round(time.perf_counter() - started, 3)
    logger.info("stage %s: %s in %.1f s", stage, "ran" if ran else "unchanged, skipped", timings["repro_s"])

    started = time.perf_counter()
    _dvc(root, "push", stage)
    timings["push_s"] = round(time.perf_counter() - started, 3)

    result = {"stage": stage, "ran": ran, **timings, "lock": read_lock(root)[stage]}
    create_markdown_artifact(
        key=_artifact_key(stage),
        markdown=f"```json\n{json.dumps(result, indent=1)}\n```",
        description=f"Stage {stage!r}: {'ran' if ran else 'unchanged, skipped'}; its dvc.lock entry (outputs pushed "
        "to the DVC remote)",
    )
    return result


def _stage_result(flow_run_id: Any, stage: str) -> dict[str, Any]:
    """What `pool_stage` published (results stay on the worker's disk; artifacts are kept by the API)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=[_artifact_key(stage)]),
            )
        )
    text = str(artifact.data).strip()
    return json.loads(text.removeprefix("```json").removesuffix("```"))


@flow(name="peft-pool-pipeline", description="Every stage as a deployment on its work pool, in order")
def pool_pipeline(root: str = ".", poll_interval: float = 2.0) -> dict[str, Any] | State[Any]:
    """Run sample_data -> prepare -> train -> evaluate -> export, each on its pool; returns per stage the
    flow run, its pool, whether it ran or was skipped, and how long it took. Starts from root/dvc.lock
    (so unchanged stages are skipped) and writes the merged lock back there."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    root_path = Path(root).resolve()
    lock = read_lock(root_path)
    stages: dict[str, Any] = {}
    for stage in ORDER:
        started = time.perf_counter()
        run = run_deployment(
            f"{STAGE_FLOW}/{stage}",
            parameters={"stage": stage, "lock": lock},
            poll_interval=poll_interval,
            timeout=None,
        )
        if run.state is None or not run.state.is_completed():
            return Failed(message=f"stage {stage!r} (flow run {run.name}): {run.state and run.state.message}")
        result = _stage_result(run.id, stage)
        lock[stage] = result.pop("lock")
        stages[stage] = {
            **result,
            "flow_run": str(run.id),
            "work_pool": run.work_pool_name,
            "seconds": round(time.perf_counter() - started, 3),
        }
        logger.info(
            "stage %s on pool %s: %s, %.1f s",
            stage,
            run.work_pool_name,
            "ran" if result["ran"] else "skipped",
            stages[stage]["seconds"],
        )
    write_lock(root_path, lock)
    return {"stages": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pools", description=pool_pipeline.description)
    parser.add_argument("--root", default=".", help="this checkout; the merged dvc.lock is written here")
    parser.add_argument("--summary-json", type=Path, help="also write the run summary (JSON) to this file")
    args = parser.parse_args(argv)
    state = pool_pipeline(root=args.root, return_state=True)
    if not state.is_completed():
        print(f"error: {state.message}", file=sys.stderr)
        return 1
    summary = state.result()
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for name, stage in summary["stages"].items():
        done = "ran" if stage["ran"] else "unchanged"
        print(f"{name}: pool {stage['work_pool']}, {done} ({stage['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
