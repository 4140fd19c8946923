"""An MoE base through the stages in-process: the built-in tiny Qwen3-MoE (`builtin:tiny-moe`) trains LoRA
on attention and every routed expert and learns; the manifest counts adapted tensors by kind; the export
merges into the fused 3-D expert tensors, loads in plain transformers and matches peft; generate works."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from peft_framework.adapters import load_adapter
from peft_framework.adapters.lora import LoraConfig, LoraMethod
from peft_framework.config.schema import Config, ModelConfig, TrainConfig
from peft_framework.export import export
from peft_framework.export.stage import EXPORT_REPORT
from peft_framework.models.tiny import tiny_moe, tiny_tokenizer
from peft_framework.training import train
from peft_framework.training.moe_report import moe_adapted_by_kind

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
IDS = [[1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100], [1, 84, 104, 101, 32, 99, 97, 116]]


def _prepared(root: Path) -> None:
    """A prepared causal-LM split like `prepare` writes (prompt masked, EOS appended): 'Repeat w n times.'."""
    import random

    import datasets

    tok = tiny_tokenizer()
    words = ["red", "blue", "cat", "dog", "tree", "river", "sun", "moon"]
    dd = {}
    for split, (n, seed) in {"train": (64, 1), "validation": (16, 2), "test": (16, 3)}.items():
        rng = random.Random(seed)
        cols: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        for _ in range(n):
            word, times = rng.choice(words), rng.randint(1, 4)
            p = [tok.bos_token_id] + tok(f"Repeat {word} {times} times.\n", add_special_tokens=False)[
                "input_ids"
            ]
            r = tok(" ".join([word] * times), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            cols["input_ids"].append(p + r)
            cols["attention_mask"].append([1] * (len(p) + len(r)))
            cols["labels"].append([-100] * len(p) + r)
        dd[split] = datasets.Dataset.from_dict(cols)
    datasets.DatasetDict(dd).save_to_disk(str(root / "data/prepared"))
    (root / "data/prepared/manifest.json").write_text(json.dumps({"task": "causal_lm", "label_names": None}))


def _loss(model: torch.nn.Module, root: Path) -> float:
    import datasets

    from peft_framework.training.collator import PadCollator

    ds = datasets.load_from_disk(str(root / "data/prepared"))["validation"]
    batch = PadCollator(0)([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Config, dict]:
    root = tmp_path_factory.mktemp("moe")
    _prepared(root)
    config = Config(
        model=ModelConfig(name_or_path="builtin:tiny-moe"),
        adapter=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], target_parameters=EXPERTS, dropout=0.05),
        train=TrainConfig(max_steps=24, batch_size=8, learning_rate=1e-2, logging_steps=4, report_to="none"),
    )
    return root, config, train(config, root)


def test_moe_adapter_learns_and_counts_what_it_adapts(trained) -> None:
    root, config, summary = trained
    assert summary["eval_loss"] < _loss(tiny_moe(), root) - 2.0
    kinds = {"attention": 4, "routed_experts": 4}  # q, v in 2 layers; gate_up, down in 2 layers
    assert summary["adapted_tensors"] == kinds
    manifest = json.loads((root / config.train.output_dir / "manifest.json").read_text())
    assert manifest["adapter"]["adapted_tensors"] == kinds
    saved = json.loads((root / config.train.output_dir / "adapter_config.json").read_text())
    # peft refuses lora_dropout with target_parameters at load: saved as 0 (training only), noted in the manifest
    assert saved["target_parameters"] == sorted(EXPERTS) and saved["lora_dropout"] == 0.0
    assert "0.05 trained" in manifest["adapter"]["saved_as"]


def test_export_merges_into_the_expert_tensors_and_matches_peft(trained) -> None:
    import peft
    from transformers import AutoModelForCausalLM

    root, config, _ = trained
    export(config, root)
    report = json.loads((root / config.export.output_dir / EXPORT_REPORT).read_text())
    assert report["merged"] is True and report["parity_passed"] is True
    merged = AutoModelForCausalLM.from_pretrained(str(root / config.export.output_dir)).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.tensor([IDS[0]])
    with torch.no_grad():
        oracle = peft.PeftModel.from_pretrained(tiny_moe(), str(root / config.train.output_dir)).eval()
        torch.testing.assert_close(merged(ids).logits, oracle(ids).logits, atol=1e-4, rtol=0)
        ours = tiny_moe()
        load_adapter(ours, root / config.train.output_dir)
        torch.testing.assert_close(ours(ids).logits, oracle(ids).logits, atol=1e-5, rtol=0)
        assert ours.generate(ids, max_new_tokens=4, do_sample=False).shape == (1, len(IDS[0]) + 4)


def test_no_routed_expert_adapted_warns_once(caplog) -> None:
    model = tiny_moe()
    LoraMethod().inject(model, LoraConfig(target_modules=["q_proj"]))
    with caplog.at_level(logging.WARNING):
        assert moe_adapted_by_kind(model, "default") == {"attention": 2}
    assert sum("adapts no routed expert" in r.message for r in caplog.records) == 1


def test_router_trains_whole_with_modules_to_save(tmp_path) -> None:
    import peft

    from peft_framework.adapters.checkpoint import save_adapter

    model = tiny_moe()
    method = LoraMethod()
    config = LoraConfig(target_modules=["q_proj"], target_parameters=EXPERTS, modules_to_save=["gate"])
    method.inject(model, config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"model.layers.0.mlp.gate.modules_to_save.default.weight"} <= trainable
    assert not any(n.endswith("mlp.gate.original_module.weight") for n in trainable)  # the router copy only
    assert moe_adapted_by_kind(model, "default", warn=False) == {
        "attention": 2,
        "routed_experts": 4,
        "router": 2,
    }
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
        expected = model(torch.tensor(IDS[:1])).logits
    save_adapter(
        model, method, config, tmp_path, base_model_name_or_path="builtin:tiny-moe", task_type="causal_lm"
    )
    with torch.no_grad():
        oracle = peft.PeftModel.from_pretrained(tiny_moe(), str(tmp_path)).eval()
        torch.testing.assert_close(oracle(torch.tensor(IDS[:1])).logits, expected, atol=1e-5, rtol=0)


def test_router_aux_loss_is_added_and_logged(trained) -> None:
    root, config, _ = trained
    aux = config.model_copy(
        update={
            "adapter": LoraConfig(r=4, target_parameters=EXPERTS),
            "train": TrainConfig(
                max_steps=4,
                batch_size=8,
                logging_steps=2,
                report_to="none",
                router_aux_loss_coef=0.01,
                output_dir="out/aux/adapter",
                checkpoint_dir="out/aux/ckpt",
                metrics_dir="out/aux/metrics",
            ),
        }
    )
    train(aux, root)
    logs = [
        json.loads(line) for line in (root / "out/aux/adapter/trainer_log.jsonl").read_text().splitlines()
    ]
    values = [e["router_aux_loss"] for e in logs if "router_aux_loss" in e]
    assert len(values) >= 2 and all(v > 0 for v in values)  # load-balancing loss of 8 experts, top-2: > 0


def test_router_aux_loss_on_a_dense_model_is_a_config_error() -> None:
    from peft_framework.errors import ConfigError
    from peft_framework.models.tiny import tiny_llama
    from peft_framework.training.moe_report import router_aux_loss

    with pytest.raises(ConfigError, match="train.router_aux_loss_coef"):
        router_aux_loss(tiny_llama(), 0.01)
