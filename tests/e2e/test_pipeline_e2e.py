"""The pipeline end to end, in a temporary git repo copied from the project (tiny training settings).

One project copy and one loopback Prefect server serve the whole module; `dvc repro` on the defaults
runs once (fixture `reproduced`) and the tests build on its outputs and result cache. The experiment
test changes the workspace, so it comes last.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline_project import Project, Server, stages_run
from tasks.stages import ORDER

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

ARTIFACT_KEYS = {"data-report", "eval-base-vs-adapter", "export-parity"}


def api(server: Server) -> dict[str, str]:
    return {"PREFECT_API_URL": server.api_url}


@pytest.fixture(scope="module")
def reproduced(project: Project, server: Server) -> dict[str, Any]:
    """`dvc repro` on the defaults, its stage flows reporting to the loopback server; the output and
    the server's flow runs right after it."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    proc = project.run("dvc", "repro", env=api(server), timeout=900)
    with SyncPrefectClient(server.api_url) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["peft-stage"])))
    return {"output": proc.stdout + proc.stderr, "stage_runs": {r.name: r.state for r in runs}}


def test_dvc_repro_runs_every_stage_then_nothing(
    project: Project, server: Server, reproduced: dict[str, Any]
):
    assert stages_run(reproduced["output"]) == list(ORDER), reproduced["output"]
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    assert list(lock["stages"]) == list(ORDER)
    assert lock["stages"]["train"]["params"]["params.yaml"]["adapter"]["type"]  # params recorded per stage

    again = project.run("dvc", "repro", env=api(server))
    assert stages_run(again.stdout + again.stderr) == []
    assert "up to date" in again.stdout

    # each stage ran as a Prefect flow run named after it, visible on the server
    runs = reproduced["stage_runs"]
    assert sorted(runs) == sorted(ORDER)
    assert all(state is not None and state.is_completed() for state in runs.values())


def _pipeline(project: Project, summary: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`python -m flows.pipeline`; {stage: final state name} from its summary."""
    project.run("python", "-m", "flows.pipeline", "--summary-json", str(summary), env=env, timeout=900)
    return {name: stage["state"] for name, stage in json.loads(summary.read_text())["stages"].items()}


def test_flow_is_all_cache_hits_until_an_output_goes(
    project: Project, server: Server, reproduced: dict[str, Any], tmp_path: Path
):
    # On the default ephemeral API (no PREFECT_API_URL). The stage flows of `dvc repro` filled the
    # result cache: the full flow has nothing to do.
    assert _pipeline(project, tmp_path / "first.json") == {name: "Cached" for name in ORDER}

    # The same cache from flow runs reported to a server (saves starting a temporary API per run).
    adapter = project.root / "models" / "adapter"
    shutil.rmtree(adapter)
    second = _pipeline(project, tmp_path / "second.json", api(server))
    assert second["train"] == "Completed", second
    assert all(second[name] == "Cached" for name in ("sample_data", "prepare")), second
    assert (adapter / "adapter_config.json").is_file()

    assert _pipeline(project, tmp_path / "third.json", api(server)) == {name: "Cached" for name in ORDER}


def test_scheduled_deployment_runs_on_a_server(project: Project, server: Server, reproduced: dict[str, Any]):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.workers.process import ProcessWorker

    spec = yaml.safe_load((project.root / "prefect.yaml").read_text())["deployments"][0]
    pool = spec["work_pool"]["name"]
    with SyncPrefectClient(server.api_url) as client:
        template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
    project.run("prefect", "--no-prompt", "deploy", "--all", env=api(server))

    with SyncPrefectClient(server.api_url) as client:
        deployment = client.read_deployment_by_name(f"peft-pipeline/{spec['name']}")
        assert [s.schedule.cron for s in deployment.schedules] == [s["cron"] for s in spec["schedules"]]
        assert all(s.active for s in deployment.schedules)
        flow_run = client.create_flow_run_from_deployment(deployment.id)

    project.run("prefect", "worker", "start", "--pool", pool, "--run-once", env=api(server))

    with SyncPrefectClient(server.api_url) as client:
        finished = client.read_flow_run(flow_run.id)
        assert finished.state is not None and finished.state.is_completed(), finished.state
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert ARTIFACT_KEYS <= set(by_key)
    rows = by_key["eval-base-vs-adapter"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert any(row["base"] and row["adapter"] for row in rows), rows
    assert "rows.read" in by_key["data-report"].data


def test_bad_data_fails_the_stage_with_one_message(
    project: Project, server: Server, reproduced: dict[str, Any]
):
    # Every row rejected is too many: the stage fails with the data error's message, exit code 2 and no
    # traceback. Outputs go elsewhere, so the project's prepared data stays as it is.
    proc = project.run(
        "python", "-m", "flows.stage", "prepare",
        "data.validate.max_rejected_fraction=0.0", "data.clean.max_chars=1",
        "data.output_dir=data/prepared-bad", "data.rejected_path=data/rejected-bad.jsonl",
        "data.report_path=reports/data-bad.json",
        env=api(server), check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: " in proc.stderr and "max_rejected_fraction" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (project.root / "data" / "prepared-bad").exists()


def _experiments(rows: Any) -> Iterator[dict[str, Any]]:
    """Every entry of `dvc exp show --json` output that carries params/metrics data."""
    if isinstance(rows, dict):
        if isinstance(rows.get("data"), dict) and "params" in rows["data"]:
            yield rows
        for value in rows.values():
            yield from _experiments(value)
    elif isinstance(rows, list):
        for value in rows:
            yield from _experiments(value)


def test_experiment_reruns_only_what_the_param_feeds(
    project: Project, server: Server, reproduced: dict[str, Any]
):
    proc = project.run("dvc", "exp", "run", "-S", "adapter.r=32", env=api(server), timeout=900)
    assert stages_run(proc.stdout + proc.stderr) == ["train", "evaluate", "export"]

    shown = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    eval_report = yaml.safe_load((project.root / "params.yaml").read_text())["eval"]["report_path"]
    [exp] = [
        e
        for e in _experiments(shown)
        if e.get("rev") != "workspace"
        and e["data"]["params"]["params.yaml"]["data"]["adapter"].get("r") == 32
    ]
    metrics = exp["data"]["metrics"][eval_report]["data"]
    assert metrics and all(isinstance(v, (int, float, dict)) for v in metrics.values())


def test_qlora_experiment_from_yaml_alone(project: Project, server: Server):
    """A 4-bit QLoRA run from one override: train on the nf4 base, evaluate on it, export merged into the
    unquantized base with a passing parity check (bitsandbytes runs 4-bit layers on CPU)."""
    pytest.importorskip("bitsandbytes")
    proc = project.run("dvc", "exp", "run", "-S", "model.quantization.bits=4", env=api(server), timeout=900)
    assert {"train", "evaluate", "export"} <= set(stages_run(proc.stdout + proc.stderr)), proc.stdout
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    manifest = json.loads((project.root / params["train"]["output_dir"] / "manifest.json").read_text())
    assert manifest["config"]["model"]["quantization"]["bits"] == 4
    export = json.loads((project.root / params["export"]["report_path"]).read_text())
    assert export["trained_on_quantized_base"]["bits"] == 4 and export["parity_passed"]
    assert json.loads((project.root / params["eval"]["report_path"]).read_text())["num_examples"] > 0
