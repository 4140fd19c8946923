"""train.packing (padding-free batches, rows isolated by position_ids) and train.group_by_length."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_train import _pairs, make_config, write_prepared

from peft_framework.errors import ConfigError
from peft_framework.models.tiny import tiny_llama
from peft_framework.training.checkpoints import list_checkpoints
from peft_framework.training.collator import make_collator
from peft_framework.training.stage import train


def _rows() -> list[dict]:
    """Rows of different lengths, the prompt masked out (-100) as prepare writes them."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for n, prompt in ((5, 2), (17, 6), (9, 9 - 3), (30, 11), (2, 1)):
        ids = torch.randint(3, 250, (n,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * n, "labels": [-100] * prompt + ids[prompt:]})
    return rows


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_padded(attn):
    model = tiny_llama(attn_implementation=attn)
    padded = make_collator(False, "causal_lm", 0)(_rows())
    packed = make_collator(True, "causal_lm", 0)(_rows())
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in _rows()))
    assert "attention_mask" not in packed and packed["position_ids"][0, 5].item() == 0  # restarts per row
    losses, grads = [], []
    for batch in (padded, packed):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert abs(losses[0] - losses[1]) < 1e-5, losses
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_packing_needs_a_causal_lm():
    with pytest.raises(ConfigError, match="train.packing"):
        make_collator(True, "sequence_classification", 0)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packing_project")
    write_prepared(root / "data/prepared", {"train": _pairs(48, 1), "validation": _pairs(8, 2)})
    return root


@pytest.mark.slow
def test_packed_training_resumes_mid_epoch_exactly(project: Path) -> None:
    kw = dict(max_steps=6, save_steps=3, eval_steps=3, batch_size=4, packing=True, keep_checkpoints=True)
    full = train(make_config("pack", **kw), project)
    ckpt_dir = project / "out/pack/ckpt"
    assert [c.step for c in list_checkpoints(ckpt_dir)] == [3, 6]
    shutil.rmtree(ckpt_dir / "checkpoint-6")
    again = train(make_config("pack", **kw), project)
    assert again["resumed_from"] == str(ckpt_dir / "checkpoint-3")
    assert again["adapter_sha256"] == full["adapter_sha256"]


def test_group_by_length_selects_trainers_length_grouped_sampler(tmp_path: Path) -> None:
    from peft_framework.config.schema import TrainConfig
    from peft_framework.training.arguments import build_training_arguments, plan_steps

    tc = TrainConfig(group_by_length=True, report_to="none")
    args = build_training_arguments(
        tc,
        checkpoint_dir=tmp_path,
        has_eval=False,
        plan=plan_steps(tc, 64, 1),
        precision="fp32",
        deterministic=True,
        world_size=1,
    )
    assert args.train_sampling_strategy == "group_by_length"
