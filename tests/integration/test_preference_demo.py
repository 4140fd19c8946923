"""The preference demo's data and SFT adapter (params/dpo-sft.yaml) through the real stages, library calls only:
ORPO on the same data learns, and a killed DPO run from the SFT adapter resumes exactly. The DPO demo itself
(accuracy from chance to >= 0.9, promotion on preference_accuracy) runs through `dvc repro` in
tests/e2e/test_preference_e2e.py; its metric names in tests/integration/test_preference_tracking.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from peft_framework.config import load_config
from peft_framework.data.samples import write_samples
from peft_framework.data.stage import prepare
from peft_framework.evaluation.stage import evaluate
from peft_framework.training import train

ROOT = Path(__file__).resolve().parents[2]
QUIET = ["train.report_to=none"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preference")
    write_samples(root / "data" / "raw")
    sft = load_config(ROOT / "params" / "dpo-sft.yaml", QUIET)
    prepare(sft, root)
    train(sft, root)
    return root


@pytest.mark.slow
def test_orpo_on_the_same_data(project: Path) -> None:
    config = load_config(
        ROOT / "params" / "dpo.yaml", [*QUIET, "train.objective=orpo", "train.output_dir=models/orpo"]
    )
    prepare(config, project)
    assert train(config, project)["objective"] == "orpo"
    metrics = evaluate(config, project)["metrics"]
    assert metrics["adapter.preference_accuracy"] > metrics["base.preference_accuracy"] + 0.2


class _Crash(RuntimeError):
    pass


@pytest.mark.slow
def test_resumed_dpo_run_gives_the_same_adapter(project: Path) -> None:
    """A DPO run from the SFT adapter (frozen reference adapter) that dies after its step-2 checkpoint and
    is resumed ends with the same adapter as an uninterrupted run."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class CrashAtStep3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            if state.global_step == 3:
                raise _Crash("killed")

    common = [*QUIET, "train.max_steps=4", "train.save_steps=2", "train.keep_checkpoints=false"]
    whole = load_config(ROOT / "params" / "dpo.yaml", [*common, "train.output_dir=models/dpo-whole"])
    prepare(whole, project)
    train(whole, project)
    parts = load_config(
        ROOT / "params" / "dpo.yaml",
        [*common, "train.output_dir=models/dpo-resumed", "train.checkpoint_dir=models/checkpoints-resumed"],
    )
    with pytest.raises(_Crash):
        train(parts, project, callbacks=[CrashAtStep3()])
    assert train(parts, project)["resumed_from"] is not None
    a = load_file(str(project / "models" / "dpo-whole" / "adapter_model.safetensors"))
    b = load_file(str(project / "models" / "dpo-resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
