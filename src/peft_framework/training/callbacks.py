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
import importlib.util
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


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
