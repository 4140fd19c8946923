"""params/grpo.yaml, shortened, through `dvc repro` in a temporary copy of the project, linked to its SFT warm
start (the commented `models/grpo-sft-adapter` dep in dvc.yaml uncommented, pipelines/grpo-sft/stages.yaml copied
to pipelines/grpo-sft/dvc.yaml): sample-data writes the "repeat the word X" prompts and the warm start's rows,
params/grpo-sft.yaml trains the warm start, prepare keeps the prompts as data.kind prompt, train runs the online
GRPO objective from the warm start (completions sampled with the adapter on, scored by train.rewards), and
evaluate scores base vs adapter on the held-out prompts: the adapter's mean reward must be above the base's, and
the training reward must have risen."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml
from pipeline_project import Project, deep_update, link_warm_start, make_project, stages_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

SHORT = {
    "train": {"max_steps": 180, "logging_steps": 10, "save_steps": 90, "eval_steps": 1000},
    "eval": {"max_samples": 32},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = make_project(tmp_path_factory.mktemp("grpo_project"), {})
    preset = yaml.safe_load((project.root / "params" / "grpo.yaml").read_text())
    (project.root / "params.yaml").write_text(yaml.safe_dump(deep_update(preset, SHORT), sort_keys=False))
    link_warm_start(project, "grpo-sft", "models/grpo-sft-adapter")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "GRPO preset, shortened, from its SFT warm start")
    yield project
    project.run("python", "-m", "tasks.local_api", "stop", check=False)
    project.run("python", "-m", "tasks.warm", "stop", check=False)


def test_grpo_preset_raises_the_held_out_reward(project: Project) -> None:
    proc = project.run("dvc", "repro", "evaluate", timeout=900)
    ran = stages_run(proc.stdout + proc.stderr)
    assert ran.index("grpo_sft_train") < ran.index("train"), ran
    assert ran[-2:] == ["train", "evaluate"], proc.stdout
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    report = json.loads((project.root / params["eval"]["report_path"]).read_text())
    assert report["adapter.reward"] > report["base.reward"], report
    assert report["adapter.reward_failures"] == 0
    assert report["adapter.reward_exact_match"] >= 0.75, report  # the right word, not only the format
    log = [
        json.loads(line)
        for line in (project.root / params["train"]["output_dir"] / "trainer_log.jsonl")
        .read_text()
        .splitlines()
    ]
    # the training reward rose too: each logged value averages 10 steps, ~7 passes over the 23 training prompts,
    # so it is steady; the first log (step 1, one batch) is left out. The rise is a symmetry break (the warm start
    # answers one word, at chance) whose step depends on the seed: in 120-step runs seeds 1, 3, 5, 7, 42 and 123
    # all broke it by step 30-50 (training reward ~0.55 -> ~1.03, held-out exact match 0.92-1.0 against the warm
    # start's 0.62; on a smaller split one seed needed 155 steps), so this run takes 180 steps (another CPU's
    # rounding acts like another seed) and the held-out exact match is asserted with room (0.75 = 3 misses in 13).
    rewards = [row["reward"] for row in log if "reward" in row and row["step"] >= 10]
    assert len(rewards) >= 6 and sum(rewards[-3:]) / 3 > rewards[0], rewards
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
