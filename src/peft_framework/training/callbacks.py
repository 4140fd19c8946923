"""Trainer callbacks of our own: dvclive logging into `train.metrics_dir`.

dvclive is optional. transformers' `DVCLiveCallback` creates `dvclive.Live()` with its defaults, which
log into ./dvclive, rewrite the project's dvc.yaml and save a DVC experiment at the end; a pipeline
must not have its dvc.yaml edited by a training run. So we let that callback run with a Live of our
settings: `dir=train.metrics_dir`, no dvc.yaml, no experiment (DVC's pipeline owns those), metrics
stepped by the optimizer step so a resumed run continues the same curve. dvclive is imported only here,
only when the callback is used.
"""

from __future__ import annotations

import csv
import fcntl
import importlib.util
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from peft_framework.paths import lasting_root


def dvclive_available() -> bool:
    return importlib.util.find_spec("dvclive") is not None


def _truncate_after(plots_dir: Path, step: int) -> None:
    """Drop metric rows logged after `step` (by a run that was killed before its next checkpoint)."""
    for tsv in plots_dir.rglob("*.tsv"):
        with open(tsv, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows or "step" not in rows[0]:
            continue
        col = rows[0].index("step")
        kept = [rows[0]] + [r for r in rows[1:] if len(r) > col and r[col].isdigit() and int(r[col]) <= step]
        if len(kept) != len(rows):
            with open(tsv, "w", newline="", encoding="utf-8") as f:
                csv.writer(f, delimiter="\t", lineterminator="\n").writerows(kept)


def make_dvclive_callback(metrics_dir: str | os.PathLike[str], resume_step: int | None) -> TrainerCallback:
    """transformers' DVCLiveCallback logging into `metrics_dir` (see the module docstring)."""
    from transformers.integrations import DVCLiveCallback

    class _StepDVCLiveCallback(DVCLiveCallback):
        def setup(self, args: Any, state: Any, model: Any) -> None:
            if state.is_world_process_zero and self.live is None:
                from dvclive import Live

                resume = resume_step is not None and Path(metrics_dir).is_dir()
                if resume:
                    _truncate_after(Path(metrics_dir) / "plots", resume_step)
                self.live = Live(
                    dir=str(metrics_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None
                )
            super().setup(args, state, model)

        def on_log(
            self, args: Any, state: Any, control: Any, model: Any = None, logs: Any = None, **kwargs: Any
        ):
            if not self._initialized:
                self.setup(args, state, model)
            if state.is_world_process_zero and self.live is not None:
                self.live.step = state.global_step
            return super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    return _StepDVCLiveCallback(log_model=False)


def mlflow_available() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def default_mlflow_store(root: str | os.PathLike[str]) -> Path:
    """`<project>/mlruns`: of the original repository when `root` is a DVC experiment's temporary copy,
    which DVC deletes after the run (`paths.lasting_root`)."""
    return lasting_root(root) / "mlruns"


def make_mlflow_callback(config: Any, root: str | os.PathLike[str]) -> TrainerCallback:
    """transformers' MLflowCallback, plus our config as params and the adapter as an artifact.

    The run goes to MLFLOW_TRACKING_URI, or when it is unset to a local SQLite store in `<root>/mlruns`
    (the original repository's in a queued DVC experiment's temporary copy: `default_mlflow_store`)
    (`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`; artifacts in mlruns/artifacts),
    experiment MLFLOW_EXPERIMENT_NAME or 'peft-framework'. (MLflow 3 refuses new plain-file stores.) Besides the TrainingArguments the callback logs, the
    resolved peft-framework config is logged flattened (`cfg.adapter.r`, ...). The callback ends the run
    when training ends, so `log_adapter(out_dir)` reopens it by id to upload the written adapter.
    """
    from transformers.integrations import MLflowCallback

    flat: dict[str, Any] = {}

    def _flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                _flatten(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for section, value in config.to_dict().items():
        _flatten(f"cfg.{section}", value)

    class _AdapterMLflowCallback(MLflowCallback):
        run_id: str | None = None

        def setup(self, args: Any, state: Any, model: Any) -> None:
            if state.is_world_process_zero:  # always: a URI set earlier in this process would win otherwise
                uri = os.environ.get("MLFLOW_TRACKING_URI")
                if uri:
                    self._ml_flow.set_tracking_uri(uri)
                else:  # the local store, its artifacts beside it (not in the working directory)
                    store = default_mlflow_store(root)
                    store.mkdir(parents=True, exist_ok=True)
                    # queued experiments running side by side share it: one at a time creates the database
                    # and the experiment
                    with open(store / ".setup.lock", "ab") as lock:
                        fcntl.flock(lock, fcntl.LOCK_EX)
                        self._ml_flow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
                        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "peft-framework"
                        if self._ml_flow.get_experiment_by_name(name) is None:
                            self._ml_flow.create_experiment(
                                name, artifact_location=(store / "artifacts").as_uri()
                            )
                        self._ml_flow.set_experiment(name)
            super().setup(args, state, model)
            run = self._ml_flow.active_run() if state.is_world_process_zero else None
            if run is not None:
                self.run_id = run.info.run_id
                items = [(k, str(v)[:6000]) for k, v in flat.items()]
                for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                    self._ml_flow.log_params(dict(items[i : i + 100]))

        def log_adapter(self, out_dir: str | os.PathLike[str]) -> None:
            """Upload the adapter directory as the run's `adapter/` artifact (main process only)."""
            if self.run_id is not None:
                self._ml_flow.MlflowClient().log_artifacts(self.run_id, str(out_dir), artifact_path="adapter")

    return _AdapterMLflowCallback()
