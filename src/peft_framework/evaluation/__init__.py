"""Evaluation stage: base vs base + adapter on the test split, metrics from shipped `evaluate` modules.

    from peft_framework.evaluation import evaluate
    summary = evaluate(config, root=".")
    summary = harness(config, root=".")   # lm-evaluation-harness on base vs adapter (eval.harness)

Imported lazily, so `import peft_framework.evaluation` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_framework.evaluation.benchmarks import harness
    from peft_framework.evaluation.metric_modules import load_metric
    from peft_framework.evaluation.stage import evaluate

__all__ = ["evaluate", "harness", "load_metric"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        from peft_framework.evaluation.stage import evaluate

        return evaluate
    if name == "harness":
        from peft_framework.evaluation.benchmarks import harness

        return harness
    if name == "load_metric":
        from peft_framework.evaluation.metric_modules import load_metric

        return load_metric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
