"""DoRA, LoRA+, PiSSA and OLoRA through the stages on the built-in tiny Llama: train (from config alone),
resume from a checkpoint to the same adapter, the saved adapter loaded by HuggingFace peft on the ORIGINAL
base reproducing the reported validation loss, evaluate, export with the parity check, and switching between
variant adapters in one model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import peft
import pytest
import torch
from tests.integration.test_train import _pairs, base_eval_loss, write_prepared

from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, EvalConfig, ExportConfig, TrainConfig
from peft_framework.evaluation import evaluate
from peft_framework.export import export
from peft_framework.inference import MultiAdapterModel
from peft_framework.models.tiny import tiny_llama
from peft_framework.training import train
from peft_framework.training.checkpoints import list_checkpoints
from peft_framework.training.collator import PadCollator

pytestmark = pytest.mark.slow

VARIANTS: dict[str, tuple[dict, dict]] = {  # name: (adapter keys, train keys)
    "dora": ({"use_dora": True}, {}),
    "loraplus": ({}, {"loraplus_lr_ratio": 4.0}),
    "pissa": ({"init": "pissa_niter_2"}, {"learning_rate": 2e-3}),
    "olora": ({"init": "olora"}, {"learning_rate": 2e-3}),
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("variants_project")
    write_prepared(
        root / "data/prepared", {"train": _pairs(64, 1), "validation": _pairs(16, 2), "test": _pairs(8, 3)}
    )
    return root


def make_config(tag: str, adapter: dict, train_keys: dict) -> Config:
    train_cfg = dict(
        max_steps=8,
        batch_size=8,
        learning_rate=1e-2,
        logging_steps=2,
        save_steps=4,
        eval_steps=4,
        report_to="none",
        keep_checkpoints=True,
        output_dir=f"out/{tag}/adapter",
        checkpoint_dir=f"out/{tag}/ckpt",
        metrics_dir=f"out/{tag}/metrics",
    )
    train_cfg.update(train_keys)
    return Config(
        adapter=LoraConfig(**{"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"], **adapter}),
        train=TrainConfig(**train_cfg),
        eval=EvalConfig(
            report_path=f"out/{tag}/eval.json",
            predictions_path=f"out/{tag}/pred.jsonl",
            plots_dir=f"out/{tag}/plots",
            generate=False,
        ),
        export=ExportConfig(output_dir=f"out/{tag}/merged", report_path=f"out/{tag}/export.json"),
    )


@torch.no_grad()
def validation_loss(model: torch.nn.Module, root: Path) -> float:
    """Trainer's eval loss: per-batch token means (eval batch 8, in order), averaged over rows."""
    val = datasets.load_from_disk(str(root / "data/prepared"))["validation"].select_columns(
        ["input_ids", "attention_mask", "labels"]
    )
    losses = []
    for start in range(0, len(val), 8):
        rows = [val[i] for i in range(start, min(start + 8, len(val)))]
        losses += [float(model.eval()(**PadCollator(0)(rows)).loss)] * len(rows)
    return sum(losses) / len(losses)


_SUMMARIES: dict[str, dict] = {}


def trained(project: Path, variant: str) -> tuple[Config, dict]:
    """The variant's config and train summary (trained once per module)."""
    config = make_config(variant, *VARIANTS[variant])
    if variant not in _SUMMARIES:
        _SUMMARIES[variant] = train(config, project)
    return config, _SUMMARIES[variant]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_trains_and_loads_in_peft_on_the_original_base(project: Path, variant: str) -> None:
    config, summary = trained(project, variant)
    out = project / f"out/{variant}/adapter"
    assert summary["eval_loss"] < base_eval_loss(project)

    manifest = json.loads((out / "manifest.json").read_text())
    saved = json.loads((out / "adapter_config.json").read_text())
    assert manifest["adapter"]["use_dora"] == (variant == "dora") == saved["use_dora"]
    if variant in ("pissa", "olora"):
        assert saved["r"] == 8 and saved["init_lora_weights"] is True
        assert "ORIGINAL base" in manifest["adapter"]["saved_as"]
    groups = manifest["training"]["loraplus_groups"]
    if variant == "loraplus":
        assert groups["B"]["lr"] == pytest.approx(4 * groups["A"]["lr"]) and groups["B"]["tensors"] == 6
    else:
        assert groups is None

    # HuggingFace peft, on the unmodified base, computes the trained model's validation loss
    loaded = peft.PeftModel.from_pretrained(tiny_llama(), out)
    assert validation_loss(loaded, project) == pytest.approx(summary["eval_loss"], abs=1e-5)


# the variants with state beyond the adapter tensors: LoRA+'s optimizer groups, PiSSA's residual base
@pytest.mark.parametrize("variant", ["loraplus", "pissa"])
def test_variant_resumes_to_the_same_adapter(project: Path, variant: str) -> None:
    config, summary = trained(project, variant)
    ckpt_dir = project / f"out/{variant}/ckpt"
    assert [c.step for c in list_checkpoints(ckpt_dir)] == [4, 8]
    shutil.rmtree(ckpt_dir / "checkpoint-8")
    again = train(config, project)
    assert again["resumed_from"] == str(ckpt_dir / "checkpoint-4")
    assert again["adapter_sha256"] == summary["adapter_sha256"]


@pytest.mark.parametrize("variant", ["dora", "pissa"])
def test_variant_evaluates_and_exports_with_parity(project: Path, variant: str) -> None:
    config, summary = trained(project, variant)
    metrics = evaluate(config, project)["metrics"]
    assert metrics["adapter.loss"] < metrics["base.loss"]
    exported = export(config, project)
    assert exported["merged"] and exported["parity_passed"]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(project / config.export.output_dir)
    assert validation_loss(merged, project) == pytest.approx(summary["eval_loss"], abs=1e-4)


def test_switching_between_variant_adapters(project: Path) -> None:
    dirs = {v: project / f"out/{v}/adapter" for v in ("dora", "pissa")}
    for v in dirs:
        trained(project, v)
    model = MultiAdapterModel.from_base("builtin:tiny-llama", device="cpu")
    for name, directory in dirs.items():
        model.load_adapter(name, directory)
    for name, directory in dirs.items():
        model.set_adapter(name)
        expected = validation_loss(peft.PeftModel.from_pretrained(tiny_llama(), directory), project)
        assert validation_loss(model.model, project) == pytest.approx(expected, abs=1e-5)
