"""Preference objectives' metrics reach the trackers under TRL's names (issue 25): a real local MLflow store
(SQLite, no mocks) gets rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected per logged step of a DPO run (KTO's kl takes the same path), and the Prefect progress line
carries the reward accuracy and margin beside the loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from peft_framework.config import load_config
from peft_framework.data.samples import write_samples
from peft_framework.data.stage import prepare
from peft_framework.training import train

mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PAIRED = [
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
]


def _config(objective: str):
    overrides = [
        "train.init_adapter=null",
        f"train.objective={objective}",
        f"train.output_dir=models/{objective}",
        f"train.checkpoint_dir=models/checkpoints-{objective}",
        "train.max_steps=3",
        "train.logging_steps=1",
        "train.save_steps=3",
        "train.batch_size=8",
        "train.report_to=mlflow",
    ]
    return load_config(ROOT / "params" / "dpo.yaml", overrides)


def test_mlflow_run_has_the_trl_named_preference_metrics_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: <root>/mlruns
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "pref-dpo")
    write_samples(tmp_path / "data" / "raw")
    config = _config("dpo")
    prepare(config, tmp_path)
    train(config, tmp_path)

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    [run] = mlflow.search_runs(experiment_names=["pref-dpo"], output_format="list")
    assert run.data.params["cfg.train.objective"] == "dpo"
    history = {name: client.get_metric_history(run.info.run_id, name) for name in ["loss", *PAIRED]}
    for name, values in history.items():
        assert sorted(m.step for m in values) == [1, 2, 3], (name, sorted(run.data.metrics))
    at = {name: {m.step: m.value for m in values} for name, values in history.items()}
    # LoRA B starts at zero: at the first step the policy is the reference, so every reward is 0 and the DPO
    # loss is log 2; later steps move the rewards apart
    assert at["rewards/margins"][1] == pytest.approx(0.0, abs=1e-6)
    assert at["loss"][1] == pytest.approx(math.log(2), abs=1e-3)
    assert at["rewards/margins"][3] != 0


def test_progress_line_shows_the_reward_accuracy_and_margin() -> None:
    from tasks.progress import PrefectProgressCallback, describe

    callback = PrefectProgressCallback()
    logs = {"loss": 0.61, "rewards/accuracies": 0.875, "rewards/margins": 0.1234, "logps/chosen": -3.0}
    callback.on_log(None, None, None, logs=logs)
    assert callback.loss == 0.61
    assert describe(3, 10, callback.loss, 21.0, callback.shown) == (
        "Training: step 3/10 · loss 0.61 · rewards/accuracies 0.875 · rewards/margins 0.1234 · ETA 0:21"
    )
    callback.on_log(None, None, None, logs={"loss": 0.5, "kl": 0.02})  # KTO's KL estimate
    assert describe(4, 10, callback.loss, None, callback.shown) == "Training: step 4/10 · loss 0.5 · kl 0.02"
