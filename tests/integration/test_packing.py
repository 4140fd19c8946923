"""train.packing (padding-free batches, rows isolated by position_ids) and train.group_by_length."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_train import _pairs, make_config, write_prepared

from peft_framework.errors import ConfigError
from peft_framework.models.tiny import tiny_llama
from peft_framework.training.checkpoints import list_checkpoints
from peft_framework.training.collator import IGNORE_INDEX, make_collator
from peft_framework.training.packing import best_fit_decreasing, pack_split
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
    _assert_same_loss_and_grads(model, padded, packed)


def _assert_same_loss_and_grads(model, padded: dict, packed: dict) -> None:
    """The loss and a layer's gradient from padded rows equal those from the same rows packed."""
    losses, grads = [], []
    for batch in (padded, packed):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert abs(losses[0] - losses[1]) < 1e-5, losses
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def _packed(max_seq_len: int):
    import datasets

    return pack_split(datasets.Dataset.from_list(_rows()), max_seq_len)


def test_best_fit_decreasing_fills_the_fullest_pack_that_fits():
    assert best_fit_decreasing([5, 17, 9, 30, 2], 32) == [[3, 4], [0, 1, 2]]
    assert best_fit_decreasing([40, 3], 32) == [[0], [1]]  # too long: a pack of its own


def test_split_packing_is_deterministic_and_masks_each_rows_first_label():
    packed, stats = _packed(32)
    again, _ = _packed(32)
    assert packed.to_list() == again.to_list()
    assert stats == {"rows": 5, "packs": 2, "tokens": 63, "max_seq_len": 32, "fill_ratio": round(63 / 64, 4)}
    rows = _rows()
    seen = []
    for pack in packed:
        assert len(pack["input_ids"]) <= 32
        starts = [j for j, p in enumerate(pack["position_ids"]) if p == 0]
        for a, b in zip(starts, [*starts[1:], len(pack["input_ids"])], strict=True):
            row = next(r for r in rows if r["input_ids"] == pack["input_ids"][a:b])
            assert pack["position_ids"][a:b] == list(range(b - a))
            assert pack["labels"][a] == IGNORE_INDEX  # never predicted from the previous row's last token
            assert pack["labels"][a + 1 : b] == row["labels"][1:]
            seen.append(rows.index(row))
    assert sorted(seen) == list(range(len(rows)))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batch_of_packs_loss_and_gradients_equal_padded_rows(attn):
    model = tiny_llama(attn_implementation=attn)
    packed, _ = _packed(32)
    collate = make_collator(True, "causal_lm", 0)
    batch = collate(packed.to_list())
    assert batch["input_ids"].shape == (2, 32) and "attention_mask" not in batch
    assert batch["position_ids"][1, -1].item() == 0  # the shorter pack's padding is a segment of its own
    _assert_same_loss_and_grads(model, make_collator(False, "causal_lm", 0)(_rows()), batch)


def test_packing_needs_a_causal_lm():
    with pytest.raises(ConfigError, match="train.packing"):
        make_collator(True, "sequence_classification", 0)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("packing_project")
    write_prepared(root / "data/prepared", {"train": _pairs(48, 1), "validation": _pairs(8, 2)})
    return root


def _short_packs(config):
    """Packs of <= 48 tokens, so the epoch holds several batches and checkpoint 3 is mid-epoch."""
    return config.model_copy(update={"data": config.data.model_copy(update={"max_seq_len": 48})})


@pytest.mark.slow
def test_packed_training_resumes_mid_epoch_exactly(project: Path) -> None:
    kw = dict(max_steps=6, save_steps=3, eval_steps=3, batch_size=4, packing=True, keep_checkpoints=True)
    full = train(_short_packs(make_config("pack", **kw)), project)
    manifest = json.loads(Path(full["manifest_path"]).read_text())
    assert manifest["packing"]["rows"] == 48 and manifest["packing"]["packs"] > 12  # > 3 steps per epoch
    ckpt_dir = project / "out/pack/ckpt"
    assert [c.step for c in list_checkpoints(ckpt_dir)] == [3, 6]
    shutil.rmtree(ckpt_dir / "checkpoint-6")
    again = train(_short_packs(make_config("pack", **kw)), project)
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


def test_packed_training_with_length_grouping_and_a_loader_worker(project: Path) -> None:
    """The lazily built packed split through the Trainer's length-grouped sampler (it reads every pack's
    length) and a DataLoader worker process (the split is pickled into it)."""
    kw = dict(max_steps=2, save_steps=2, eval_steps=2, batch_size=4, packing=True)
    config = _short_packs(make_config("pack_grouped", group_by_length=True, num_workers=1, **kw))
    summary = train(config, project)
    assert summary["global_step"] == 2 and math.isfinite(summary["train_loss_mean"])
