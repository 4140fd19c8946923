"""train.report_to: mlflow against a real local MLflow store (SQLite) (no mocks): the run holds the
config and TrainingArguments as params, the loss per logged step, and the adapter as an artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import _pairs, make_config, write_prepared

from peft_framework.training import train

mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.slow


def test_mlflow_run_has_params_step_losses_and_the_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: <root>/mlruns
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "peft-test")
    write_prepared(tmp_path / "data/prepared", {"train": _pairs(16, 1), "test": _pairs(4, 3)})
    config = make_config(
        "mlf", max_steps=4, logging_steps=1, save_steps=4, eval_steps=None, report_to="mlflow"
    )

    summary = train(config, root=str(tmp_path))

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    mlflow.set_tracking_uri(uri)
    [run] = mlflow.search_runs(experiment_names=["peft-test"], output_format="list")
    params = run.data.params
    assert params["cfg.adapter.r"] == "4" and params["cfg.train.max_steps"] == "4"
    assert params["learning_rate"] == str(config.train.learning_rate)  # TrainingArguments, by the HF callback
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4]
    assert all(m.value > 0 for m in losses)
    files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "adapter")}
    written = {p.name for p in Path(summary["output_dir"]).iterdir() if p.is_file()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert written <= files
