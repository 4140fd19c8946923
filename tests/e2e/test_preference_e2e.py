"""The preference demo through `dvc repro` in a temporary copy of the project, then every other objective
through `dvc exp run -S train.objective=...` (issue 25).

params/dpo.yaml as params.yaml, with the train stage linked to the SFT step (the commented
`models/sft-adapter` dep in dvc.yaml uncommented, pipelines/sft/stages.yaml copied to pipelines/sft/dvc.yaml):
`dvc repro` writes the sample data, trains the SFT adapter, then DPO from it, and the held-out preference
accuracy rises from chance to >= 0.9. Then one `dvc exp run` per other objective, a few steps each, still
starting from the SFT adapter (which `dvc exp run` must keep): each trains an adapter with that objective and
evaluates it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pipeline_project import Project, link_warm_start, make_project, stages_run

from peft_framework.config.objectives import OBJECTIVES

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

# KTO trains on unpaired rows: sample-data's preferences_unpaired.jsonl (data.kind must agree with the objective),
# and its evaluation has no pairs to rank, so the promotion gate reads its reward margin
KTO = [
    "-S",
    "data.kind=unpaired_preference",
    "-S",
    "data.source=data/raw/preferences_unpaired.jsonl",
    "-S",
    "export.promote.metric=reward_margin",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("preference_project"), params={})
    (project.root / "params.yaml").write_text((project.root / "params" / "dpo.yaml").read_text())
    link_warm_start(project, "sft", "models/sft-adapter")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "preference demo: DPO from the SFT step")
    yield project
    project.run("python", "-m", "tasks.local_api", "stop", check=False)
    project.run("python", "-m", "tasks.warm", "stop", check=False)


def _json(project: Project, rel: str) -> dict:
    return json.loads((project.root / rel).read_text())


def test_dpo_demo_then_every_objective_by_exp_run(project: Project) -> None:
    proc = project.run("dvc", "repro", timeout=900)
    ran = stages_run(proc.stdout + proc.stderr)
    assert ran.index("sft_train") < ran.index("train"), ran
    assert {"sample_data", "sft_prepare", "prepare", "evaluate", "export", "promote"} <= set(ran), ran
    metrics = _json(project, "reports/eval.json")
    assert 0.3 <= metrics["base.preference_accuracy"] <= 0.7, metrics
    assert metrics["adapter.preference_accuracy"] >= 0.9, metrics
    assert _json(project, "reports/promote.json")["promote"] == 1
    sft_sha = _json(project, "models/adapter/manifest.json")["init_adapter"]["sha256"]

    # KTO last: an experiment's params stay in the workspace's params.yaml, and the next `dvc exp run -S` starts
    # from them (after KTO's data.kind, a pairwise objective is a config error)
    # every preference objective (paired or unpaired data); GRPO trains online on prompts: tests/e2e/test_grpo_e2e.py
    preference = {
        name
        for name, spec in OBJECTIVES.items()
        if set(spec.data_kinds) & {"preference", "unpaired_preference"}
    }
    others = sorted(preference - {"dpo"}, key=lambda name: (name == "kto", name))
    assert {"ipo", "orpo", "simpo", "kto"} <= set(others)
    for name in others:
        args = ["-S", f"train.objective={name}", "-S", "train.max_steps=3", "-S", "eval.max_samples=16"]
        # the pairwise objectives up to evaluate (export and the gate do not depend on the objective; the
        # demo ran them), KTO through the gate too, which reads a metric of its own
        target = [] if name == "kto" else ["evaluate"]
        proc = project.run("dvc", "exp", "run", *target, *args, *(KTO if name == "kto" else []), timeout=600)
        ran = stages_run(proc.stdout + proc.stderr)
        assert "train" in ran and "evaluate" in ran and "sft_train" not in ran, (name, ran)
        assert ("promote" in ran) is (name == "kto"), (name, ran)
        manifest = _json(project, "models/adapter/manifest.json")
        assert manifest["config"]["train"]["objective"] == name
        assert manifest["init_adapter"]["sha256"] == sft_sha  # dvc exp run kept the SFT adapter
        assert (project.root / "models/adapter/adapter_model.safetensors").is_file()
        metrics = _json(project, "reports/eval.json")
        keys = (
            ["reward_margin", "logps_desirable", "logps_undesirable"]
            if name == "kto"
            else ["preference_accuracy", "reward_margin", "reward_accuracy", "logps_chosen", "logps_rejected"]
        )
        for key in keys:
            assert {f"base.{key}", f"adapter.{key}"} <= set(metrics), (name, metrics)
        assert metrics["adapter.reward_margin"] != 0, (name, metrics)  # the adapter moved from the base
    # `dvc exp show` compares the objectives: one experiment per objective
    shown = project.run("dvc", "exp", "show", "--json").stdout
    for name in others:
        assert f'"{name}"' in shown, name
