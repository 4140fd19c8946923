"""params/grpo.yaml, shortened, through `dvc repro` in a temporary copy of the project: sample-data writes the
"repeat the word X" prompts, prepare keeps them as data.kind prompt, train runs the online GRPO objective
(completions sampled with the adapter on, scored by train.rewards), and evaluate scores base vs adapter on the
held-out prompts: the adapter's mean reward must be above the base's."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from pipeline_project import Project, deep_update, make_project, stages_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

SHORT = {
    "train": {"max_steps": 60, "logging_steps": 10, "save_steps": 30, "eval_steps": 1000},
    "eval": {"max_samples": 32},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("grpo_project"), {})
    preset = yaml.safe_load((project.root / "params" / "grpo.yaml").read_text())
    (project.root / "params.yaml").write_text(yaml.safe_dump(deep_update(preset, SHORT), sort_keys=False))
    project.run("git", "commit", "-qam", "GRPO preset, shortened")
    yield project
    project.run("python", "-m", "tasks.local_api", "stop", check=False)
    project.run("python", "-m", "tasks.warm", "stop", check=False)


def test_grpo_preset_raises_the_held_out_reward(project: Project) -> None:
    proc = project.run("dvc", "repro", "evaluate", timeout=900)
    ran = stages_run(proc.stdout + proc.stderr)
    assert ran[-2:] == ["train", "evaluate"], proc.stdout
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    report = json.loads((project.root / params["eval"]["report_path"]).read_text())
    assert report["adapter.reward"] > report["base.reward"], report
    assert report["adapter.reward_failures"] == 0
    log = [
        json.loads(line)
        for line in (project.root / params["train"]["output_dir"] / "trainer_log.jsonl")
        .read_text()
        .splitlines()
    ]
    rewards = [row["reward"] for row in log if "reward" in row]
    assert len(rewards) >= 3 and rewards[-1] > rewards[0], rewards  # the training reward rose too
    assert {
        "reward_failures",
        "rewards/exact_match/mean",
        "completions/mean_length",
        "frac_reward_zero_std",
    } <= set(next(row for row in log if "reward" in row))

    # one GRPO setting switched from the command line, as users sweep them: `dvc exp run -S` re-runs train and
    # evaluate only (the prompts and their preparation do not depend on the loss), and records the experiment
    args = ["-S", "train.grpo.loss_type=dr_grpo", "-S", "train.max_steps=4", "-S", "eval.max_samples=8"]
    proc = project.run("dvc", "exp", "run", "evaluate", *args, timeout=600)
    ran = stages_run(proc.stdout + proc.stderr)
    assert ran == ["train", "evaluate"], proc.stdout
    manifest = json.loads((project.root / params["train"]["output_dir"] / "manifest.json").read_text())
    assert manifest["config"]["train"]["grpo"]["loss_type"] == "dr_grpo"
    report = json.loads((project.root / params["eval"]["report_path"]).read_text())
    assert {"base.reward", "adapter.reward", "adapter.reward_failures"} <= set(report), report
    assert "dr_grpo" in project.run("dvc", "exp", "show", "--json").stdout
