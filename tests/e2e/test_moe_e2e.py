"""params/moe.yaml through `dvc repro` in a temporary copy of the project: the built-in tiny MoE trains LoRA on
attention and every routed expert, evaluates, and exports merged into the fused expert tensors with a
passing parity gate."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from pipeline_project import TINY_PARAMS, Project, deep_update, make_project, stages_run
from tasks.stages import ORDER

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("moe_project"), TINY_PARAMS)
    preset = yaml.safe_load((project.root / "params" / "moe.yaml").read_text())
    params = deep_update(preset, TINY_PARAMS)
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    project.run("git", "commit", "-qam", "MoE preset")
    yield project
    project.run("python", "-m", "tasks.local_api", "stop", check=False)
    project.run("python", "-m", "tasks.warm", "stop", check=False)


def test_moe_preset_runs_every_stage(project: Project) -> None:
    proc = project.run("dvc", "repro", timeout=900)
    assert stages_run(proc.stdout + proc.stderr) == [*ORDER, "promote"], proc.stdout
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    adapter_dir = project.root / params["train"]["output_dir"]
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert saved["target_parameters"] == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    manifest = json.loads((adapter_dir / "manifest.json").read_text())
    assert manifest["adapter"]["adapted_tensors"]["routed_experts"] == 4
    export = json.loads((project.root / params["export"]["output_dir"] / "export_report.json").read_text())
    assert export["merged"] and export["parity_passed"]
