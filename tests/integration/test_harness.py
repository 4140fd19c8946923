"""The harness stage (eval.harness): lm-evaluation-harness on the tiny Llama with the shipped local task,
base vs base + adapter on one loaded model, checked against lm-eval run on separately loaded models; the
result cache; the offline error for a built-in task whose data is not cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from peft_framework import cli
from peft_framework.adapters import get_adapter, load_adapter, save_adapter
from peft_framework.config import resolve_config
from peft_framework.config.harness_schema import REPORT_PATH, SAMPLES_DIR
from peft_framework.config.schema import Config
from peft_framework.errors import ConfigError
from peft_framework.evaluation import harness
from peft_framework.evaluation.benchmarks import check_tasks, run_lm_eval, task_manager
from peft_framework.models.loading import load_base_model, load_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASKS_DIR = Path(__file__).resolve().parents[2] / "harness" / "tasks"
LIMIT = 8
METRICS = ("acc", "acc_norm", "brier_score")


def config_for(**harness_keys) -> Config:
    harness_cfg = {"tasks": ["peft_demo"], "include_path": str(TASKS_DIR), "limit": LIMIT, **harness_keys}
    return resolve_config(
        {
            "model": {"name_or_path": "builtin:tiny-llama", "task": "causal_lm"},
            "adapter": {"type": "lora", "r": 4, "target_modules": ["q_proj", "v_proj"]},
            "eval": {"device": "cpu", "harness": harness_cfg},
        }
    )


def save_random_adapter(config: Config, root: Path, seed: int) -> None:
    """A LoRA adapter with non-zero random trainables (as if trained) and its tokenizer."""
    tokenizer = load_tokenizer(config.model)
    model = load_base_model(config.model, tokenizer=tokenizer)
    method = get_adapter("lora")
    method.inject(model, config.adapter)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)
    out = root / config.train.output_dir
    save_adapter(
        model,
        method,
        config.adapter,
        out,
        base_model_name_or_path=config.model.name_or_path,
        task_type="causal_lm",
    )
    tokenizer.save_pretrained(out)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    config = config_for()
    save_random_adapter(config, root, seed=1)
    return root, config, harness(config, root)


def test_report_has_numbers_per_task_for_base_and_adapter(run):
    root, config, summary = run
    report = json.loads((root / REPORT_PATH).read_text())
    assert report == summary["metrics"] and not summary["cached"]
    assert report["num_samples.peft_demo"] == LIMIT
    for metric in METRICS:
        base, adapter = report[f"base.peft_demo.{metric}"], report[f"adapter.peft_demo.{metric}"]
        assert report[f"delta.peft_demo.{metric}"] == pytest.approx(adapter - base)
    assert "delta.peft_demo.acc_stderr" not in report
    # a non-zero adapter changes the model's choice probabilities
    assert report["adapter.peft_demo.brier_score"] != pytest.approx(report["base.peft_demo.brier_score"])
    assert all(isinstance(v, (int, float)) for v in report.values())  # DVC metrics: numbers only


def test_per_sample_logs_and_results_are_written(run):
    root, _, summary = run
    samples = root / SAMPLES_DIR
    for model in ("base", "adapter"):
        rows = [json.loads(line) for line in (samples / model / "peft_demo.jsonl").read_text().splitlines()]
        assert len(rows) == LIMIT
        assert {"doc", "target", "resps", "acc"} <= set(rows[0])
    results = json.loads((samples / "results.json").read_text())
    assert (
        results["adapter"]["results"]["peft_demo"]["acc,none"] == summary["metrics"]["adapter.peft_demo.acc"]
    )
    manifest = json.loads((samples / "manifest.json").read_text())
    assert manifest["key"] == summary["key"] and manifest["adapter_sha256"] == summary["adapter_sha256"]


def test_switched_adapter_matches_lm_eval_on_separately_loaded_models(run):
    """Oracle: lm-eval on a fresh base model, and on a fresh base with the adapter loaded, give the numbers
    the stage got by switching one model's adapter off and on."""
    from lm_eval.models.huggingface import HFLM

    root, config, summary = run
    cfg = config.eval.harness
    manager = task_manager(cfg, root)
    tokenizer = load_tokenizer(config.model)
    for name in ("base", "adapter"):
        model = load_base_model(config.model, tokenizer=tokenizer)
        if name == "adapter":
            load_adapter(model, root / config.train.output_dir)
        results = run_lm_eval(
            HFLM(pretrained=model.eval(), tokenizer=tokenizer, batch_size=cfg.batch_size),
            manager,
            cfg,
            config.train.seed,
        )
        for metric in METRICS:
            assert results["results"]["peft_demo"][f"{metric},none"] == pytest.approx(
                summary["metrics"][f"{name}.peft_demo.{metric}"], abs=1e-6
            ), (name, metric)


def test_unchanged_adapter_and_tasks_are_a_cache_hit(run):
    root, config, first = run
    (root / REPORT_PATH).unlink()
    again = harness(config, root)
    assert again["cached"] and again["metrics"] == first["metrics"]
    assert json.loads((root / REPORT_PATH).read_text()) == first["metrics"]
    assert len((root / SAMPLES_DIR / "base" / "peft_demo.jsonl").read_text().splitlines()) == LIMIT
    fewer = harness(config_for(limit=4), root)  # another task config: scored again
    assert not fewer["cached"] and fewer["metrics"]["num_samples.peft_demo"] == 4


def test_a_changed_adapter_is_scored_again(run):
    root, config, first = run
    save_random_adapter(config, root, seed=2)
    second = harness(config, root)
    assert not second["cached"] and second["adapter_sha256"] != first["adapter_sha256"]
    assert second["metrics"]["base.peft_demo.brier_score"] == first["metrics"]["base.peft_demo.brier_score"]
    assert (
        second["metrics"]["adapter.peft_demo.brier_score"]
        != first["metrics"]["adapter.peft_demo.brier_score"]
    )


def test_no_tasks_writes_an_empty_report_without_loading_anything(tmp_path):
    summary = harness(Config(), tmp_path)  # no adapter on disk: not needed when the harness is off
    assert summary["metrics"] == {} and json.loads((tmp_path / REPORT_PATH).read_text()) == {}
    assert json.loads((tmp_path / SAMPLES_DIR / "manifest.json").read_text())["tasks"] == []


def test_misspelled_local_task_names_the_close_match(tmp_path):
    cfg = config_for(tasks=["peft_dem"]).eval.harness
    from lm_eval.tasks import TaskManager

    with pytest.raises(ConfigError, match=r"'peft_dem' is not a task.*did you mean 'peft_demo'"):
        check_tasks(TaskManager(include_path=str(TASKS_DIR), include_defaults=False), cfg)


def test_offline_builtin_task_without_cached_data_is_an_error_naming_it(run, monkeypatch, capsys):
    """arc_easy is a real built-in lm-eval task; its data is not in this machine's datasets cache and the
    Hub is off (HF_DATASETS_OFFLINE=1): exit 2 with `error:` naming the task, no traceback."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, config, _ = run
    path = root / "arc.yaml"
    data = config.to_dict()
    data["eval"]["harness"]["tasks"] = ["arc_easy"]
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["harness", str(path), "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: eval.harness.tasks: 'arc_easy'"), err
    assert "not in the local HuggingFace datasets cache" in err and "Traceback" not in err
