"""The lm-evaluation-harness preset end to end: `dvc repro` with params/harness.yaml (tiny training settings)
trains the tiny Llama and runs the shipped local task on base vs base + adapter; `dvc metrics show` lists
the numbers; a second `dvc repro` runs nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from pipeline_project import TINY_PARAMS, Project, deep_update, make_project, stages_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("harness-project"), params={})
    preset = yaml.safe_load((project.root / "params" / "harness.yaml").read_text())
    (project.root / "params.yaml").write_text(
        yaml.safe_dump(deep_update(preset, TINY_PARAMS), sort_keys=False)
    )
    yield project
    project.run("python", "-m", "tasks.local_api", "stop", check=False)
    project.run("python", "-m", "tasks.warm", "stop", check=False)


def test_dvc_repro_runs_the_shipped_task_on_base_and_adapter(project: Project):
    proc = project.run("dvc", "repro", "harness")
    assert stages_run(proc.stdout + proc.stderr) == ["sample_data", "prepare", "train", "harness"], (
        proc.stdout
    )

    report = json.loads((project.root / "reports" / "harness.json").read_text())
    assert report["num_samples.peft_demo"] == 40  # every document of harness/tasks/peft_demo
    for metric in ("acc", "acc_norm", "brier_score"):
        assert {
            f"base.peft_demo.{metric}",
            f"adapter.peft_demo.{metric}",
            f"delta.peft_demo.{metric}",
        } <= set(report)
    assert (
        report["adapter.peft_demo.brier_score"] != report["base.peft_demo.brier_score"]
    )  # trained: not base

    shown = json.loads(project.run("dvc", "metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"]["reports/harness.json"]["data"]  # the workspace
    assert metrics["adapter.peft_demo.acc"] == report["adapter.peft_demo.acc"]
    for model in ("base", "adapter"):  # the per-sample log is a DVC output
        assert (
            len((project.root / "reports" / "harness" / model / "peft_demo.jsonl").read_text().splitlines())
            == 40
        )
    assert "reports/harness" in {
        out["path"]
        for out in yaml.safe_load((project.root / "dvc.lock").read_text())["stages"]["harness"]["outs"]
    }

    again = project.run("dvc", "repro", "harness")
    assert stages_run(again.stdout + again.stderr) == []
