"""LoRA+ optimizer groups against peft's `create_loraplus_optimizer` (the oracle) on the same model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
import pytest
import torch
from peft.optimizers import create_loraplus_optimizer
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from peft_framework.adapters import get_adapter
from peft_framework.adapters.lora import LoraConfig
from peft_framework.training.loraplus import LoraPlus, param_groups
from peft_framework.training.trainer import AdapterTrainer

PEFT_PREFIX = "base_model.model."


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64)
    return GPT2LMHeadModel(cfg)


def _named_groups(model: torch.nn.Module, groups: list[dict], prefix: str = "") -> list[tuple]:
    names = {id(p): prefix + n for n, p in model.named_parameters()}
    return [
        (sorted(names[id(p)] for p in g["params"]), g["lr"], g["weight_decay"]) for g in groups if g["params"]
    ]


# bias=all and a LayerNorm copy put 1-d tensors in decay and no-decay positions; c_attn is a Conv1D
@pytest.mark.parametrize(
    "cfg",
    [
        LoraConfig(r=4, alpha=8, target_modules=["c_attn", "c_fc"], bias="all", modules_to_save=["ln_f"]),
        LoraConfig(r=2, alpha=4, target_modules=["c_proj"], modules_to_save=["wpe"]),
    ],
    ids=["bias-all-ln", "wpe-copy"],
)
def test_groups_equal_peft_create_loraplus_optimizer(cfg: LoraConfig) -> None:
    lr, ratio, wd, emb = 3e-4, 8.0, 0.01, 2e-6
    ours = tiny_gpt2()
    get_adapter("lora").inject(ours, cfg)
    theirs = peft.get_peft_model(
        tiny_gpt2(),
        peft.LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            target_modules=cfg.target_modules,
            bias=cfg.bias,
            modules_to_save=cfg.modules_to_save,
        ),
    )
    opt = create_loraplus_optimizer(
        theirs,
        torch.optim.AdamW,
        lr=lr,
        loraplus_lr_ratio=ratio,
        loraplus_weight_decay=wd,
        loraplus_lr_embedding=emb,
    )
    expected = _named_groups(theirs, opt.param_groups)
    groups = param_groups(ours, lr=lr, plus=LoraPlus(ratio, emb), weight_decay=wd)
    got = _named_groups(ours, groups, prefix=PEFT_PREFIX)
    assert got == expected
    assert sum(len(g[0]) for g in got) == sum(p.requires_grad for p in ours.parameters())
    assert {g["name"] for g in groups if g["lr"] == lr * ratio} == {"B", "B_no_decay"}


def test_trainer_builds_its_own_optimizer_class_with_the_groups(tmp_path) -> None:
    model = tiny_gpt2()
    get_adapter("lora").inject(model, LoraConfig(r=4, target_modules=["c_attn"]))
    args = TrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, use_cpu=True, report_to="none"
    )
    trainer = AdapterTrainer(
        model=model, args=args, adapter_method=get_adapter("lora"), loraplus=LoraPlus(lr_ratio=16.0)
    )
    opt = trainer.create_optimizer()
    reference = AdapterTrainer(model=model, args=args, adapter_method=get_adapter("lora")).create_optimizer()
    assert type(opt) is type(reference)  # the Trainer's choice (AdamW, fused or not) is kept
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"A": 1e-3, "embedding": 1e-6, "B": 1e-3 * 16, "B_no_decay": 1e-3 * 16}
    assert trainer.loraplus_groups["B"]["tensors"] == 2 and trainer.loraplus_groups["A"]["tensors"] == 2
    assert all(g["weight_decay"] == 0.1 for g in opt.param_groups if g["name"] != "B_no_decay")
