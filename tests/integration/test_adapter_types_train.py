"""AdaLoRA, IA3 and bottleneck adapters through the real train stage (`peft_framework.training.train`,
transformers' Trainer) on the tiny demo (built-in tiny Llama + the sample instruction data, prepared by
`peft_framework.data.prepare`): each lowers the held-out loss in a short run. AdaLoRA's rank allocator
runs from the Trainer callback and the saved rank pattern meets the target budget; the trained AdaLoRA and
IA3 adapters load in HuggingFace peft with the same logits."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from peft_framework.adapters.adalora import AdaLoraConfig
from peft_framework.adapters.bottleneck import BottleneckConfig
from peft_framework.adapters.ia3 import IA3Config
from peft_framework.config.schema import AdapterConfigBase, Config, DataConfig, TrainConfig

pytestmark = pytest.mark.slow

STEPS = 12


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """A project with the sample instruction data prepared for the tiny Llama, and the base model's
    held-out (validation) loss."""
    from peft_framework.data import prepare, write_samples

    root = tmp_path_factory.mktemp("adapter_types")
    write_samples(root / "data/raw")
    prepare(Config(data=DataConfig()), root)
    return root, base_validation_loss(root)


@torch.no_grad()
def base_validation_loss(root: Path, batch_size: int = 4) -> float:
    """The bare tiny Llama's validation loss, averaged like Trainer.evaluate (batch means, weighted by size)."""
    import datasets

    from peft_framework.models.tiny import tiny_llama
    from peft_framework.training.collator import PadCollator

    split = datasets.load_from_disk(str(root / "data/prepared"))["validation"]
    split = split.select_columns(["input_ids", "attention_mask", "labels"])
    model, collate = tiny_llama(), PadCollator(0)
    total = 0.0
    for start in range(0, len(split), batch_size):
        rows = [split[i] for i in range(start, min(start + batch_size, len(split)))]
        total += float(model(**collate(rows)).loss) * len(rows)
    return total / len(split)


def run(root: Path, tag: str, adapter: AdapterConfigBase, learning_rate: float) -> dict[str, Any]:
    from peft_framework.training import train

    config = Config(
        data=DataConfig(),
        adapter=adapter,
        train=TrainConfig(
            max_steps=STEPS,
            batch_size=4,
            learning_rate=learning_rate,
            scheduler="constant",
            logging_steps=4,
            save_steps=STEPS,
            report_to="none",
            output_dir=f"out/{tag}/adapter",
            checkpoint_dir=f"out/{tag}/ckpt",
            metrics_dir=f"out/{tag}/metrics",
        ),
    )
    summary = train(config, root)
    assert summary["global_step"] == STEPS
    return summary


def assert_learned(summary: dict[str, Any], base_loss: float) -> None:
    assert summary["eval_loss"] < base_loss - 0.1, (summary["eval_loss"], base_loss)


def peft_logits_match(root: Path, adapter_dir: Path) -> float:
    import peft

    from peft_framework.adapters import load_adapter
    from peft_framework.models.tiny import tiny_llama

    x = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    ours = tiny_llama()
    load_adapter(ours, adapter_dir)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), str(adapter_dir)).eval()
    with torch.no_grad():
        return float((ours(input_ids=x).logits - theirs(input_ids=x).logits).abs().max())


def test_adalora_trains_prunes_to_the_target_budget_and_loads_in_peft(demo: tuple[Path, float]) -> None:
    root, base_loss = demo
    cfg = AdaLoraConfig(
        init_r=6, target_r=3, alpha=12, tinit=2, tfinal=3, target_modules=["q_proj", "v_proj", "down_proj"]
    )
    summary = run(root, "adalora", cfg, learning_rate=5e-2)
    assert_learned(summary, base_loss)
    out = Path(summary["output_dir"])
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["total_step"] == STEPS  # filled from the run
    pattern = saved["rank_pattern"]
    assert len(pattern) == 6 and all(len(mask) == cfg.init_r for mask in pattern.values())
    assert sum(sum(mask) for mask in pattern.values()) == cfg.target_r * len(pattern)
    assert peft_logits_match(root, out) <= 1e-5


def test_ia3_trains_and_loads_in_peft(demo: tuple[Path, float]) -> None:
    root, base_loss = demo
    summary = run(root, "ia3", IA3Config(), learning_rate=5e-2)
    assert_learned(summary, base_loss)
    assert peft_logits_match(root, Path(summary["output_dir"])) <= 1e-5


@pytest.mark.parametrize(("variant", "mode"), [("pfeiffer", "sequential"), ("houlsby", "parallel")])
def test_bottleneck_trains(demo: tuple[Path, float], variant: str, mode: str) -> None:
    root, base_loss = demo
    summary = run(
        root, f"bottleneck-{variant}", BottleneckConfig(variant=variant, mode=mode), learning_rate=1e-2
    )
    assert_learned(summary, base_loss)
    saved = json.loads((Path(summary["output_dir"]) / "adapter_config.json").read_text())
    assert saved["peft_framework_type"] == "bottleneck" and saved["variant"] == variant
