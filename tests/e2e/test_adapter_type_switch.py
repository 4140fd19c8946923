"""Every registered adapter type is one `-S adapter.type=...` away on the shipped params.yaml (issue 28).

The shipped demo (LoRA on all-MiniLM-L6-v2 classifying reviews), shrunk to a few steps, runs once through
`dvc repro`; then `dvc exp run -S adapter.type=X` alone, for every other registered type, trains, evaluates,
exports and gates that type. Nothing else is overridden about the adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pipeline_project import TINY_PARAMS, Project, deep_update, make_project, stages_run

from peft_framework.config import adapter_config_classes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """The project with its own params.yaml (the MiniLM demo), only the step counts shrunk."""
    project = make_project(tmp_path_factory.mktemp("demo"), params={})
    path = project.root / "params.yaml"
    path.write_text(
        yaml.safe_dump(deep_update(yaml.safe_load(path.read_text()), TINY_PARAMS), sort_keys=False)
    )
    project.run("git", "commit", "-qam", "shrink the demo's steps")
    yield project
    project.run("python", "-m", "tasks.local_api", "stop", check=False)
    project.run("python", "-m", "tasks.warm", "stop", check=False)


def _json(project: Project, rel: str) -> dict:
    return json.loads((project.root / rel).read_text())


def test_every_adapter_type_runs_from_params_yaml_with_one_override(demo: Project) -> None:
    types = sorted(adapter_config_classes())
    assert {"lora", "adalora", "ia3", "bottleneck"} <= set(types)
    shipped = yaml.safe_load((demo.root / "params.yaml").read_text())["adapter"]["type"]
    demo.run("dvc", "repro")
    for name in [t for t in types if t != shipped]:
        proc = demo.run("dvc", "exp", "run", "-S", f"adapter.type={name}")
        assert stages_run(proc.stdout) == ["train", "evaluate", "harness", "export", "promote"], proc.stdout
        manifest = _json(demo, "models/adapter/manifest.json")
        assert manifest["adapter"]["type"] == name
        evaluation = _json(demo, "reports/eval.json")
        assert {"base.accuracy", "adapter.accuracy"} <= set(evaluation)
        export = _json(demo, "reports/export.json")
        mergeable = name != "bottleneck"
        assert bool(export["merged"]) is mergeable
        # the gate read this run's reports: parity where merged, the unmerged export's load check otherwise
        check = "parity_passed" if mergeable else "load_check_passed"
        assert export[check] == 1, export
        decision = _json(demo, "reports/promote_decision.json")
        assert any(("parity" if mergeable else "load check") in r for r in decision["reasons"]), decision
        assert Path(demo.root / "reports/promote.json").is_file()
