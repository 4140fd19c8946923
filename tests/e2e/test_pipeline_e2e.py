"""The pipeline end to end, in a temporary git repo copied from the project (tiny training settings).

One project copy and one loopback Prefect server serve the whole module; `dvc repro` on the defaults
runs once (fixture `reproduced`) and the tests build on its outputs and result cache. The experiment
test changes the workspace, so it comes last.
"""

from __future__ import annotations

import json
import shutil
import warnings
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

    # training reported live progress (tasks/progress.py): a progress artifact that ended at 100 %
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with SyncPrefectClient(server.api_url) as client:
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-progress"]))
        )
    assert progress and progress[-1].type == "progress", progress
    assert float(progress[-1].data) == 100.0 and "step" in (progress[-1].description or "")


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


PROMOTE_RULES = {"metric": "accuracy", "lower_is_better": False, "require_parity": True}


def test_promotion_registers_a_version_only_when_the_rules_hold(project: Project, reproduced: dict[str, Any]):
    """tasks/promote.py on the committed results of the real stages: a rule the numbers cannot meet
    (accuracy gain >= 2) registers nothing and says why; one they meet registers both artifacts in GTO."""
    from peft_framework.config import config_hash, load_config

    params = yaml.safe_load((project.root / "params.yaml").read_text())
    for name, min_delta in (("promote-fail.yaml", 2.0), ("promote-pass.yaml", -1.0)):
        params["export"]["promote"] = {**PROMOTE_RULES, "min_delta": min_delta}
        (project.root / name).write_text(yaml.safe_dump(params, sort_keys=False))
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "pipeline results")

    failed = project.run("python", "-m", "tasks.promote", "--params", "promote-fail.yaml", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "nothing registered" in failed.stderr and "FAILED: accuracy" in failed.stderr
    assert "< min_delta 2" in failed.stderr
    assert project.run("git", "tag").stdout.strip() == ""

    ok = project.run("python", "-m", "tasks.promote", "--params", "promote-pass.yaml")
    assert "registered: adapter@v0.0.1, merged-model@v0.0.1" in ok.stdout, ok.stdout
    shown = json.loads(project.run("gto", "show", "--json").stdout)
    assert {a: v["version"] for a, v in shown.items()} == {"adapter": "v0.0.1", "merged-model": "v0.0.1"}
    with warnings.catch_warnings():  # the demo's params.yaml lists keys of every adapter type
        warnings.simplefilter("ignore")
        expected = config_hash(load_config(project.root / "promote-pass.yaml"))
    message = project.run("git", "tag", "-l", "--format=%(contents)", "adapter@v0.0.1").stdout
    assert f"config_sha256={expected}" in message and "ok: export parity: passed" in message


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

    # a `dvc exp` run is promoted by its commit, from the results committed in it
    if (project.root / "promote-pass.yaml").exists():  # written by the promotion test
        ok = project.run(
            "python", "-m", "tasks.promote", "--ref", exp["rev"], "--params", "promote-pass.yaml"
        )
        assert "registered: adapter@v0.0.2, merged-model@v0.0.2" in ok.stdout, ok.stdout


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)


@pytest.fixture()
def browser() -> Iterator[Any]:
    """Headless Debian chromium driven by Selenium (nothing downloaded: the system binary and driver)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(f"no {CHROMIUM} / {CHROMEDRIVER}: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_browser_shows_the_stage_runs_and_the_eval_table(
    server: Server, reproduced: dict[str, Any], browser: Any, tmp_path: Path
):
    """The Prefect UI of the loopback server, in a real browser: the evaluate stage's flow run page lists
    its eval table artifact, which opens as a table of metrics; the runs page shows every stage Completed."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with SyncPrefectClient(server.api_url) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["evaluate"])))
    evaluate = runs[0]  # the `dvc repro` stage run (or an experiment's): each publishes the eval table
    ui = server.api_url.removesuffix("/api")
    wait = WebDriverWait(browser, 120)

    def text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    browser.get(f"{ui}/runs/flow-run/{evaluate.id}")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.p-tab#artifacts") and "Completed" in text())
    browser.find_element(By.CSS_SELECTOR, "li.p-tab#artifacts").click()
    links = wait.until(lambda d: d.find_elements(By.XPATH, "//a[contains(@href, '/artifacts/artifact/')]"))
    assert any("eval-base-vs-adapter" in link.text for link in links), [link.text for link in links]
    browser.save_screenshot(str(tmp_path / "flow-run-artifacts.png"))

    browser.get(next(link for link in links if "eval-base-vs-adapter" in link.text).get_attribute("href"))
    wait.until(lambda d: "adapter" in text() and "delta" in text() and "accuracy" in text())
    browser.save_screenshot(str(tmp_path / "eval-table.png"))

    browser.get(f"{ui}/runs")
    wait.until(lambda d: all(name in text() for name in ORDER))
    assert text().count("Completed") >= len(ORDER)
    browser.save_screenshot(str(tmp_path / "runs.png"))
