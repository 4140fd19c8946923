"""Live training progress in the Prefect UI: a transformers TrainerCallback that keeps a Prefect progress
artifact up to date (step/total, loss, ETA) while the train stage runs. Preference objectives add their
headline metrics under TRL's names (rewards/accuracies, rewards/margins; KTO's kl).

The library stays free of Prefect: the train task passes this callback to `peft_framework.training.train`
through its `callbacks` argument. Outside a Prefect run (a notebook, the CLI) it does nothing.

Online objectives (GRPO) also hand over a few sampled completions with their rewards at each log
(`on_completions`): they are shown as a table artifact (`train-completions`), one per logging step, since
watching completions is how RL runs are debugged.

Best-effort: reporting never costs the training run. When the API cannot be reached (the local API's
supervisor killed, a server gone), the callback warns once on stderr and stops reporting; training goes on
and writes its adapter.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext
from transformers import TrainerCallback

PROGRESS_KEY = "train-progress"
COMPLETIONS_KEY = "train-completions"
MAX_CELL_CHARS = 300
MIN_INTERVAL_S = 2.0
"""At most one API update per this many seconds (the last step always updates)."""
SHOWN_METRICS = ("rewards/accuracies", "rewards/margins", "kl")
"""Logged values shown beside the loss when the objective logs them (preference objectives, TRL's names)."""


def describe(
    step: int, total: int, loss: float | None, eta_s: float | None, shown: dict[str, float] | None = None
) -> str:
    """The progress line shown beside the bar, e.g. 'step 12/40 · loss 0.513 · ETA 0:21'; `shown`: further
    logged values (SHOWN_METRICS) after the loss."""
    parts = [f"step {step}/{total}"]
    if loss is not None:
        parts.append(f"loss {loss:.4g}")
    parts += [f"{name} {value:.4g}" for name, value in (shown or {}).items()]
    if eta_s is not None:
        minutes, seconds = divmod(int(round(eta_s)), 60)
        parts.append(f"ETA {minutes}:{seconds:02d}")
    return "Training: " + " · ".join(parts)


def completions_table(step: int, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for the table artifact: the step, then each sample's fields (long texts cut, numbers rounded)."""

    def cell(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, 4) if math.isfinite(value) else None  # NaN: a reward that failed
        if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
            return value[: MAX_CELL_CHARS - 3] + "..."
        return value

    return [{"step": step, **{k: cell(v) for k, v in sample.items()}} for sample in samples]


class PrefectProgressCallback(TrainerCallback):
    """Creates the `train-progress` artifact at the start of training and updates it as steps finish."""

    def __init__(self, key: str = PROGRESS_KEY, min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.key = key
        self.min_interval_s = min_interval_s
        self.artifact_id: Any = None
        self.loss: float | None = None
        self.shown: dict[str, float] = {}
        """The last logged SHOWN_METRICS."""
        self._started = 0.0
        self._first_step = 0
        self._last_update = 0.0
        self.failed: str | None = None
        """Why reporting stopped (the first error), if it did."""

    @staticmethod
    def _in_run() -> bool:
        return TaskRunContext.get() is not None or FlowRunContext.get() is not None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._in_run():
            return
        self._started = time.monotonic()
        self._first_step = state.global_step  # a resumed run starts past 0
        self._report(
            create_progress_artifact,
            progress=self._percent(state),
            key=self.key,
            description=describe(state.global_step, state.max_steps, None, None),
        )

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
        if logs and isinstance(logs.get("loss"), (int, float)):
            self.loss = float(logs["loss"])
            self.shown = {k: float(logs[k]) for k in SHOWN_METRICS if isinstance(logs.get(k), (int, float))}

    def on_completions(self, args: Any, state: Any, samples: list[dict[str, Any]]) -> None:
        """A table of the sampled completions of this logging step (prompt, completion, rewards)."""
        if self.failed is not None or not self._in_run():
            return
        self._report(
            create_table_artifact,
            key=COMPLETIONS_KEY,
            table=completions_table(state.global_step, samples),
            description=f"Sampled completions at step {state.global_step}/{state.max_steps}",
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if time.monotonic() - self._last_update >= self.min_interval_s:
            self._update(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._update(state, done=True)

    def _percent(self, state: Any) -> float:
        return 100.0 * state.global_step / state.max_steps if state.max_steps else 0.0

    def eta_s(self, state: Any) -> float | None:
        done = state.global_step - self._first_step
        if done <= 0 or not state.max_steps:
            return None
        return (time.monotonic() - self._started) / done * (state.max_steps - state.global_step)

    def _update(self, state: Any, done: bool = False) -> None:
        if self.artifact_id is None:
            return
        self._last_update = time.monotonic()
        eta = 0.0 if done else self.eta_s(state)
        self._report(
            update_progress_artifact,
            artifact_id=self.artifact_id,
            progress=100.0 if done else self._percent(state),
            description=describe(state.global_step, state.max_steps, self.loss, eta, self.shown),
        )

    def _report(self, call: Any, **kwargs: Any) -> None:
        """One API call; on any error warn once and report nothing more (the artifact id is dropped)."""
        try:
            result = call(**kwargs)
        except Exception as exc:  # noqa: BLE001 - a progress bar must never end a training run
            self.artifact_id = None
            self.failed = f"{type(exc).__name__}: {exc}"
            print(
                f"warning: training progress is no longer reported to the Prefect API ({self.failed}); "
                "training goes on",
                file=sys.stderr,
                flush=True,
            )
            return
        if call is create_progress_artifact:
            self.artifact_id = result
