"""`eval.harness`: off unless tasks are named, values checked with the key path, causal LMs only; the flat
report built from lm-eval's results layout."""

from __future__ import annotations

import pytest

from peft_framework.config import resolve_config
from peft_framework.errors import ConfigError
from peft_framework.evaluation.benchmarks import flat_report, task_metrics


@pytest.mark.parametrize("harness", [None, {}, {"tasks": []}])
def test_absent_null_or_no_tasks_is_off(harness):
    data = {} if harness is None else {"eval": {"harness": harness}}
    assert resolve_config(data).eval.harness.tasks == []


def test_values_are_kept():
    cfg = resolve_config(
        {
            "eval": {
                "harness": {
                    "tasks": ["arc_easy", "peft_demo"],
                    "num_fewshot": 5,
                    "limit": 0.25,
                    "batch_size": 2,
                }
            }
        }
    ).eval.harness
    assert (cfg.tasks, cfg.num_fewshot, cfg.limit, cfg.batch_size) == (["arc_easy", "peft_demo"], 5, 0.25, 2)
    assert resolve_config({"eval": {"harness": {"tasks": ["a"], "limit": 10.0}}}).eval.harness.limit == 10


@pytest.mark.parametrize(
    ("harness", "expected"),
    [
        ({"tasks": ["a", "a"]}, "eval.harness.tasks: ['a'] listed twice"),
        ({"tasks": [" a"]}, "eval.harness.tasks[0]: ' a'"),
        ({"limit": 2.5}, "eval.harness.limit: 2.5"),
        ({"limit": 0}, "eval.harness.limit"),
        ({"num_fewshot": -1}, "eval.harness.num_fewshot"),
        ({"batch_size": 0}, "eval.harness.batch_size"),
        ({"taks": ["a"]}, "did you mean 'eval.harness.tasks'"),
    ],
)
def test_bad_values_name_the_key(harness, expected):
    with pytest.raises(ConfigError) as err:
        resolve_config({"eval": {"harness": harness}})
    assert expected in str(err.value)


def test_tasks_on_a_classification_model_are_refused():
    with pytest.raises(ConfigError, match="eval.harness.tasks: .* model.task is 'sequence_classification'"):
        resolve_config({"model": {"task": "sequence_classification"}, "eval": {"harness": {"tasks": ["x"]}}})


def test_flat_report_from_lm_eval_results():
    def results(acc: float) -> dict:
        return {
            "results": {
                "t": {
                    "alias": "t",
                    "acc,none": acc,
                    "acc_stderr,none": 0.1,
                    "f1,strict": 0.5,
                    "x,none": "N/A",
                }
            },
            "n-samples": {"t": {"original": 40, "effective": 8}},
        }

    assert task_metrics(results(0.25)) == {"t": {"acc": 0.25, "acc_stderr": 0.1, "f1_strict": 0.5}}
    report = flat_report({"base": results(0.25), "adapter": results(0.75)})
    assert report == {
        "num_samples.t": 8,
        "base.t.acc": 0.25,
        "base.t.acc_stderr": 0.1,
        "base.t.f1_strict": 0.5,
        "adapter.t.acc": 0.75,
        "adapter.t.acc_stderr": 0.1,
        "adapter.t.f1_strict": 0.5,
        "delta.t.acc": 0.5,
        "delta.t.f1_strict": 0.0,
    }
