"""Load the `evaluate` metric modules shipped in this package, by path (the Hub is never contacted).

`evaluate.load("accuracy")` fetches the module from the HuggingFace Hub, which fails offline. The
modules under `evaluation/metrics/<name>/<name>.py` are loaded with `evaluate.load(<that dir>)`
instead. `eval.metrics_dir` may point at a directory of user modules with the same layout; a module
found there is used in place of the shipped one.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from peft_framework.errors import ConfigError

SHIPPED_METRICS_DIR = Path(__file__).resolve().parent / "metrics"
SHIPPED = ("accuracy", "f1", "exact_match", "rouge", "perplexity")


def metric_path(name: str, metrics_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory of metric `name`: `metrics_dir/<name>/` if it has `<name>.py`, else the shipped one."""
    candidates = []
    if metrics_dir is not None:
        candidates.append(Path(metrics_dir) / name)
    candidates.append(SHIPPED_METRICS_DIR / name)
    for candidate in candidates:
        if (candidate / f"{name}.py").is_file():
            return candidate
    where = f"{metrics_dir} or " if metrics_dir is not None else ""
    raise ConfigError(
        "invalid config",
        [
            f"eval.metrics_dir: no metric module {name!r} ({where}{SHIPPED_METRICS_DIR}); shipped: {', '.join(SHIPPED)}"
        ],
    )


@cache
def _load(path: str) -> Any:
    import evaluate

    return evaluate.load(path, keep_in_memory=True)


def load_metric(name: str, metrics_dir: str | os.PathLike[str] | None = None) -> Any:
    """An `evaluate.EvaluationModule` loaded from a local path (cached per process)."""
    return _load(str(metric_path(name, metrics_dir)))


def compute(name: str, metrics_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> dict[str, Any]:
    return load_metric(name, metrics_dir).compute(**kwargs)
