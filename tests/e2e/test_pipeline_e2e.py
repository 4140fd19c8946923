"""The pipeline end to end, in a temporary git repo copied from the project (tiny training settings).

One project copy and one loopback Prefect server serve the whole module; `dvc repro` on the defaults
runs once (fixture `reproduced`) and the tests build on its outputs and result cache. The experiment
test changes the workspace, so it comes last.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline_project import Project, Server, base_env, stages_run
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
    # promote: the gate after export (tasks/promote_stage.py), plain Python, not a Prefect flow run
    assert stages_run(reproduced["output"]) == [*ORDER, "promote"], reproduced["output"]
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    # DVC keeps a lock file's entries in their first-written order (a stage added later comes last)
    assert sorted(lock["stages"]) == sorted([*ORDER, "promote"])
    assert set(json.loads((project.root / "reports" / "promote.json").read_text())) >= {"promote", "gain"}
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


def test_packing_and_the_custom_template_reach_every_output(project: Project, reproduced: dict[str, Any]):
    """The module's project trains packed rows formatted by tests/e2e/e2e_chat.jinja (conftest.PARAMS):
    the template formats the prepared data, and the adapter and the merged model carry it."""
    from transformers import AutoTokenizer

    params = yaml.safe_load((project.root / "params.yaml").read_text())
    template = (project.root / params["data"]["chat_template"]).read_text()
    prepared = json.loads((project.root / params["data"]["output_dir"] / "manifest.json").read_text())
    assert (
        prepared["format"]["template"] == "chat_template" and prepared["format"]["chat_template"] == template
    )
    adapter = json.loads((project.root / params["train"]["output_dir"] / "manifest.json").read_text())
    assert adapter["config"]["train"]["packing"] is True
    for key in ("train", "export"):
        saved = AutoTokenizer.from_pretrained(str(project.root / params[key]["output_dir"]))
        assert saved.chat_template == template, key
    shown = project.run("python", "-m", "peft_framework", "inspect-data", "params.yaml", "--rows", "1").stdout
    assert "### User:" in shown and "### Assistant:\n⟦" in shown, shown


def _pipeline(project: Project, summary: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """`python -m flows.pipeline`; {stage: final state name} from its summary."""
    project.run("python", "-m", "flows.pipeline", "--summary-json", str(summary), env=env, timeout=900)
    return {name: stage["state"] for name, stage in json.loads(summary.read_text())["stages"].items()}


# every stage a cache hit; the promotion gate decides again every run (as dvc.yaml's promote stage)
ALL_CACHED = {**{name: "Cached" for name in ORDER}, "promote": "Completed"}


def test_flow_is_all_cache_hits_until_an_output_goes(
    project: Project, server: Server, reproduced: dict[str, Any], tmp_path: Path
):
    # On the default ephemeral API (no PREFECT_API_URL). The stage flows of `dvc repro` filled the
    # result cache: the full flow has nothing to do.
    assert _pipeline(project, tmp_path / "first.json") == ALL_CACHED

    # The same cache from flow runs reported to a server (saves starting a temporary API per run).
    adapter = project.root / "models" / "adapter"
    shutil.rmtree(adapter)
    second = _pipeline(project, tmp_path / "second.json", api(server))
    assert second["train"] == "Completed", second
    assert all(second[name] == "Cached" for name in ("sample_data", "prepare")), second
    assert (adapter / "adapter_config.json").is_file()

    assert _pipeline(project, tmp_path / "third.json", api(server)) == ALL_CACHED


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
    project.run("prefect", "--no-prompt", "deploy", "--name", spec["name"], env=api(server))

    with SyncPrefectClient(server.api_url) as client:
        deployment = client.read_deployment_by_name(f"peft-pipeline/{spec['name']}")
        assert [s.schedule.cron for s in deployment.schedules] == [s["cron"] for s in spec["schedules"]]
        assert all(s.active for s in deployment.schedules)
        flow_run = client.create_flow_run_from_deployment(deployment.id)
    (
        project.root / "reports" / "promote_decision.json"
    ).unlink()  # the deployment runs the gate too (issue 28)

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
    assert "reasons" in json.loads((project.root / "reports" / "promote_decision.json").read_text())


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


# ------------------------------------------------------------------------ DVC remote (the normal workflow)
@pytest.fixture(scope="module")
def origin(project: Project, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reproduced project committed and pushed: a bare git repo as `origin` and a local-directory DVC
    remote as the default (`dvc remote add -d`; S3/GCS/SSH remotes take the same commands, docs/scaling.md)."""
    where = tmp_path_factory.mktemp("origin")
    git, storage = where / "project.git", where / "dvc-storage"
    project.run("git", "init", "-q", "--bare", "-b", "main", str(git))
    project.run("dvc", "remote", "add", "-d", "storage", str(storage))
    # earlier tests re-made outputs through the flows, not DVC: record the workspace as it is
    project.run("dvc", "commit", "--force")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "reproduced pipeline, DVC remote")
    project.run("git", "remote", "add", "origin", str(git))
    project.run("git", "push", "-q", "origin", "main")
    project.run("dvc", "push")
    return {"git": git, "storage": storage}


def _clone(origin: dict[str, Path], dest: Path) -> Project:
    clone = Project(dest, base_env(dest))
    subprocess.run(["git", "clone", "-q", str(origin["git"]), str(dest)], check=True, env=clone.env)
    return clone


def test_push_clone_pull_is_up_to_date_and_generates(
    project: Project, reproduced: dict[str, Any], origin: dict[str, Path], tmp_path: Path
):
    clone = _clone(origin, tmp_path / "clone")
    assert not (clone.root / "models" / "adapter").exists()
    clone.run("dvc", "pull")
    assert "up to date" in clone.run("dvc", "status").stdout
    again = clone.run("dvc", "repro")
    assert stages_run(again.stdout + again.stderr) == [] and "up to date" in again.stdout
    adapter = clone.root / "models" / "adapter"
    assert (adapter / "adapter_model.safetensors").read_bytes() == (
        project.root / "models" / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    out = clone.run(
        "peft-framework", "generate", "--base", "params.yaml", "--adapter", f"pulled={adapter}",
        "--use", "pulled", "--prompt", "Repeat red 2 times.", "--max-new-tokens", "4", "--json",
    )  # fmt: skip
    [generated] = json.loads(out.stdout)
    assert isinstance(generated, (str, dict)) and generated


# ------------------------------------------------------------------- stages on Prefect work pools
def test_stages_run_on_their_work_pools_through_the_dvc_remote(
    project: Project, server: Server, reproduced: dict[str, Any], origin: dict[str, Path], tmp_path: Path
):
    """Two process pools (`cpu`, `gpu`), one worker each in its own clone, an empty local-directory DVC
    remote; `python -m flows.pools` from a third clone runs every stage on its pool. The outputs equal the
    single-machine `dvc repro` of the same params (fixture `reproduced`), and a second run skips all."""
    from flows.pools import POOLS
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.workers.process import ProcessWorker

    storage = tmp_path / "pool-storage"
    clones: dict[str, Project] = {}
    for name in ("cpu", "gpu", "user"):
        clones[name] = clone = _clone(origin, tmp_path / name)
        clone.run("dvc", "remote", "add", "--local", "-d", "pools", str(storage))
        (clone.root / "dvc.lock").unlink()  # nothing known: every stage runs, on its pool
    with SyncPrefectClient(server.api_url) as client:
        for pool in ("cpu", "gpu"):
            template = ProcessWorker.get_default_base_job_template()
            template["variables"]["properties"]["working_dir"]["default"] = str(clones[pool].root)
            client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
    names = [arg for stage in POOLS for arg in ("--name", stage)]
    clones["user"].run("prefect", "--no-prompt", "deploy", *names, env=api(server))

    workers = []
    try:
        for pool in ("cpu", "gpu"):
            log = open(tmp_path / f"worker-{pool}.log", "wb")  # noqa: SIM115 - closed with the worker
            env = {**clones[pool].env, **api(server), "PREFECT_WORKER_QUERY_SECONDS": "1"}
            workers.append(
                (
                    subprocess.Popen(
                        ["prefect", "worker", "start", "--pool", pool],
                        cwd=clones[pool].root, env=env, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    ),
                    log,
                )
            )  # fmt: skip
        summaries = []
        for run in ("first", "second"):
            out = tmp_path / f"{run}.json"
            clones["user"].run(
                "python", "-m", "flows.pools", "--summary-json", str(out), env=api(server), timeout=1500
            )
            summaries.append(json.loads(out.read_text())["stages"])
    finally:
        for process, log in workers:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            log.close()
    first, second = summaries
    print("pools, first run:", {s: (v["work_pool"], v["seconds"], v["repro_s"]) for s, v in first.items()})
    print("pools, second run:", {s: (v["work_pool"], v["seconds"]) for s, v in second.items()})
    assert sorted(first) == sorted(ORDER) and sorted(second) == sorted(ORDER)
    assert all(first[s]["ran"] for s in ORDER), first
    assert not any(second[s]["ran"] for s in ORDER), second  # unchanged: DVC skips every stage

    # each stage ran on a worker of its pool, by the API's record
    with SyncPrefectClient(server.api_url) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["peft-pool-stage"])))
    assert len(runs) == 2 * len(ORDER)
    for run in runs:
        assert run.state is not None and run.state.is_completed(), run.state
        assert run.work_pool_name == POOLS[run.parameters["stage"]], (run.name, run.work_pool_name)

    # the user's clone pulls every output; they equal the single-machine run's
    user = clones["user"]
    user.run("dvc", "pull")
    single = yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]
    pooled = yaml.safe_load((user.root / "dvc.lock").read_text())["stages"]
    for stage, path in (
        ("sample_data", "data/raw"),
        ("prepare", "data/prepared"),
        ("prepare", "data/rejected.jsonl"),
    ):
        md5 = {o["path"]: o["md5"] for o in pooled[stage]["outs"]}
        assert md5[path] == {o["path"]: o["md5"] for o in single[stage]["outs"]}[path], path
    for rel in (
        "models/adapter/adapter_model.safetensors",
        "reports/eval_predictions.jsonl",
        "models/merged/model.safetensors",
    ):
        assert (user.root / rel).read_bytes() == (project.root / rel).read_bytes(), rel


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


def _dora_magnitudes(adapter_dir: Path) -> int:
    """How many DoRA magnitude vectors (peft's `lora_magnitude_vector` keys) the saved adapter holds."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        return sum(key.endswith("lora_magnitude_vector") for key in f.keys())  # noqa: SIM118


PROMOTE_RULES = {"metric": "loss", "lower_is_better": True, "require_parity": True}


def test_promotion_registers_a_version_only_when_the_rules_hold(project: Project, reproduced: dict[str, Any]):
    """tasks/promote.py on the committed results of the real stages: a rule the numbers cannot meet
    (loss gain >= 2) registers nothing and says why; one they meet registers both artifacts in GTO."""
    from peft_framework.config import config_hash, load_config

    params = yaml.safe_load((project.root / "params.yaml").read_text())
    for name, min_delta in (("promote-fail.yaml", 2.0), ("promote-pass.yaml", -1.0)):
        params["export"]["promote"] = {**PROMOTE_RULES, "min_delta": min_delta}
        (project.root / name).write_text(yaml.safe_dump(params, sort_keys=False))
    project.run("git", "add", "-A")
    project.run("git", "commit", "-q", "-m", "pipeline results")

    failed = project.run("python", "-m", "tasks.promote", "--params", "promote-fail.yaml", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "nothing registered" in failed.stderr and "FAILED: loss" in failed.stderr
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
    # a DoRA experiment (issue 14): one more -S on the same run, no extra stage runs
    proc = project.run(
        "dvc", "exp", "run", "-S", "adapter.r=32", "-S", "adapter.use_dora=true", env=api(server), timeout=900
    )
    assert stages_run(proc.stdout + proc.stderr) == ["train", "evaluate", "harness", "export", "promote"]

    shown = json.loads(project.run("dvc", "exp", "show", "--json").stdout)
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    [exp] = [
        e
        for e in _experiments(shown)
        if e.get("rev") != "workspace"
        and e["data"]["params"]["params.yaml"]["data"]["adapter"].get("r") == 32
    ]
    assert exp["data"]["params"]["params.yaml"]["data"]["adapter"]["use_dora"] is True
    metrics = exp["data"]["metrics"][params["eval"]["report_path"]]["data"]
    assert metrics and all(isinstance(v, (int, float, dict)) for v in metrics.values())
    assert _dora_magnitudes(project.root / params["train"]["output_dir"]) > 0
    assert json.loads((project.root / params["export"]["report_path"]).read_text())["parity_passed"] == 1
    # a `dvc exp` run is promoted by its commit, from the results committed in it
    if (project.root / "promote-pass.yaml").exists():  # written by the promotion test
        ok = project.run(
            "python", "-m", "tasks.promote", "--ref", exp["rev"], "--params", "promote-pass.yaml"
        )
        assert "registered: adapter@v0.0.2, merged-model@v0.0.2" in ok.stdout, ok.stdout


def test_experiment_push_and_pull_through_the_remotes(
    project: Project, origin: dict[str, Path], tmp_path: Path
):
    """After test_experiment_reruns_only_what_the_param_feeds: its experiment goes to the git remote (refs)
    and the DVC remote (outputs); a clone pulls it and gets its adapter."""
    names = project.run("dvc", "exp", "ls", "--name-only").stdout.split()
    assert names, "no experiment to push"
    project.run("dvc", "exp", "push", "origin", *names)
    clone = _clone(origin, tmp_path / "clone")
    clone.run("dvc", "exp", "pull", "origin", *names)
    # the pulled experiment refs (refs/exps/..../<name>), whichever commit the clone has checked out
    refs = clone.run("git", "for-each-ref", "refs/exps", "--format=%(refname)").stdout.split()
    assert {ref.rsplit("/", 1)[-1] for ref in refs} >= set(names)
    clone.run("dvc", "exp", "apply", names[0])
    clone.run("dvc", "checkout")
    config = json.loads((clone.root / "models" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 32 and config["use_dora"] is True
    assert _dora_magnitudes(clone.root / "models" / "adapter") > 0


def test_qlora_experiment_from_yaml_alone(project: Project, server: Server):
    """A 4-bit QLoRA run from one override: train on the nf4 base, evaluate on it, export merged into the
    unquantized base with a passing parity check (bitsandbytes runs 4-bit layers on CPU)."""
    pytest.importorskip("bitsandbytes")
    # use_dora=false: an earlier experiment in this module may have left DoRA on in the workspace params
    proc = project.run(
        "dvc",
        "exp",
        "run",
        "-S",
        "model.quantization.bits=4",
        "-S",
        "adapter.use_dora=false",
        env=api(server),
        timeout=900,
    )
    assert {"train", "evaluate", "export"} <= set(stages_run(proc.stdout + proc.stderr)), proc.stdout
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    manifest = json.loads((project.root / params["train"]["output_dir"] / "manifest.json").read_text())
    assert manifest["config"]["model"]["quantization"]["bits"] == 4
    assert json.loads((project.root / params["export"]["report_path"]).read_text())["parity_passed"] == 1
    # the full export report (not a metric: it holds text) lies in the export output
    export = json.loads((project.root / params["export"]["output_dir"] / "export_report.json").read_text())
    assert export["trained_on_quantized_base"]["bits"] == 4 and export["parity_passed"]
    assert json.loads((project.root / params["eval"]["report_path"]).read_text())["num_examples"] > 0


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
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # The evaluate stage's own flow run (from `dvc repro` or an experiment), found by the table it published:
    # the work-pool test's wrapper runs are named after their stage too but carry only the dvc.lock artifact.
    with SyncPrefectClient(server.api_url) as client:
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["eval-base-vs-adapter"]))
        )
    assert tables and tables[0].flow_run_id, "no flow run published the eval table artifact"
    evaluate_run_id = tables[0].flow_run_id
    ui = server.api_url.removesuffix("/api")
    wait = WebDriverWait(browser, 120)

    def text() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    browser.get(f"{ui}/runs/flow-run/{evaluate_run_id}")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "li.p-tab#artifacts") and "Completed" in text())
    browser.find_element(By.CSS_SELECTOR, "li.p-tab#artifacts").click()
    links = wait.until(lambda d: d.find_elements(By.XPATH, "//a[contains(@href, '/artifacts/artifact/')]"))
    assert any("eval-base-vs-adapter" in link.text for link in links), [link.text for link in links]
    browser.save_screenshot(str(tmp_path / "flow-run-artifacts.png"))

    browser.get(next(link for link in links if "eval-base-vs-adapter" in link.text).get_attribute("href"))
    wait.until(lambda d: "adapter" in text() and "delta" in text() and "loss" in text())
    browser.save_screenshot(str(tmp_path / "eval-table.png"))

    browser.get(f"{ui}/runs")
    wait.until(lambda d: all(name in text() for name in ORDER))
    assert text().count("Completed") >= len(ORDER)
    browser.save_screenshot(str(tmp_path / "runs.png"))
