"""The stages as Prefect tasks: thin wrappers over the library functions, cached by content.

A task takes the resolved Config and the project root and returns plain JSON data: the library's
summary plus the content hashes of the outputs it wrote (never a live model). Results are persisted as
JSON in the local result store; ValidatedOutputs decides when a stored result is still good.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import Failed, State

from peft_framework.config.schema import Config
from peft_framework.errors import UserError
from peft_framework.failures import as_user_error
from tasks.cache import ValidatedOutputs
from tasks.fingerprint import record_outputs
from tasks.stages import ORDER, STAGES

RETRIES = 2
RETRY_DELAYS_S = [5, 30]
_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.EINTR,
    errno.EIO,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}
_NETWORK_MODULES = ("requests", "urllib3", "httpx", "httpcore", "huggingface_hub", "fsspec", "aiohttp")


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: network, timeout and busy-resource errors. User mistakes and bugs are not."""
    if isinstance(exc, UserError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        if exc.errno in _TRANSIENT_ERRNOS:
            return True
        return type(exc).__module__.split(".")[0] in _NETWORK_MODULES
    return False


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


def _stage_kwargs(name: str) -> dict[str, Any]:
    """Extra arguments of a stage's library function: train reports live progress to the Prefect UI.
    Imported here, not at the top: the callback needs transformers, which the other stages may not load."""
    if name != "train":
        return {}
    from tasks.progress import PrefectProgressCallback

    return {"callbacks": [PrefectProgressCallback()]}


def _make_task(name: str) -> Task[..., dict[str, Any]]:
    stage = STAGES[name]

    def run_stage(config: Config, root: str = ".") -> dict[str, Any] | State[Any]:
        root_path = Path(root).resolve()
        try:
            summary = stage.run(config, root_path, **_stage_kwargs(name))
        except UserError as exc:
            # A user mistake: fail with its message, no traceback in the run log (and no retry).
            return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
        except Exception as exc:
            # disk full, a corrupt file, ...: `<path>: <what>` like the CLI says it (transient errors and bugs
            # propagate: the first are retried, the second keep their traceback)
            problem = None if is_transient(exc) else as_user_error(exc)
            if problem is None:
                raise
            return Failed(message=f"{type(problem).__name__}: {problem}", data=problem)
        return {
            "stage": name,
            "summary": summary,
            "outputs": record_outputs(root_path, stage.outputs(config)),
        }

    run_stage.__qualname__ = run_stage.__name__ = f"{name}_stage"
    return task(
        run_stage,
        name=name,
        description=f"Pipeline stage {name!r} ({stage.target})",
        cache_policy=ValidatedOutputs(stage=stage),
        persist_result=True,
        result_serializer="json",
        retries=RETRIES,
        retry_delay_seconds=RETRY_DELAYS_S,
        retry_condition_fn=retry_if_transient,
    )


STAGE_TASKS: dict[str, Task[..., dict[str, Any]]] = {name: _make_task(name) for name in ORDER}


@task(
    name="promote",
    description="The promotion gate of dvc.yaml's `promote` stage (tasks/promote_stage.py): decides from this "
    "run's reports, registers nothing",
    cache_policy=NO_CACHE,  # two small JSON files: deciding again is cheaper than validating a cache entry
)
def promote_gate(config: Config, root: str = ".") -> dict[str, Any] | State[Any]:
    from tasks.promote_stage import MANIFEST, METRIC, gate

    try:
        decision = gate(config, Path(root).resolve())
    except UserError as exc:
        return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
    return {
        "stage": "promote",
        "summary": {"promote": decision["promote"], "reasons": decision["reasons"]},
        "outputs": [METRIC, MANIFEST],
    }
