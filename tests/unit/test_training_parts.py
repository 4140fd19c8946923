"""Training building blocks without training: checkpoint completeness, the resume decision, the run
fingerprint, the collator, the step plan and the config -> TrainingArguments mapping."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import save_file

from peft_framework.adapters.lora import LoraConfig
from peft_framework.config.schema import Config, TrainConfig
from peft_framework.errors import ConfigError, UserError
from peft_framework.training import checkpoints as ckpts
from peft_framework.training.arguments import (
    build_training_arguments,
    plan_steps,
    resolve_precision,
)
from peft_framework.training.collator import PadCollator
from peft_framework.training.resume import ResumePlan, apply_resume_plan, choose_resume, run_fingerprint


# ------------------------------------------------------------------------------------------ checkpoints
def fake_checkpoint(root: Path, step: int, world_size: int = 1) -> Path:
    """The files Trainer + AdapterTrainer write into checkpoint-N."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"model.x.lora_A.default.weight": torch.ones(2, 3)}, str(path / ckpts.TRAINABLE_WEIGHTS))
    (path / ckpts.CALLBACK_STATE_DIR).mkdir()
    save_file({"ema": torch.zeros(3)}, str(path / ckpts.CALLBACK_STATE_DIR / "Allocator.safetensors"))
    torch.save({"state": {}}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    names = ["rng_state.pth"] if world_size == 1 else [f"rng_state_{i}.pth" for i in range(world_size)]
    for name in names:
        torch.save({"python": 1}, path / name)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_complete_checkpoint_has_no_problems(tmp_path: Path) -> None:
    assert ckpts.checkpoint_problems(fake_checkpoint(tmp_path, 4)) == []
    assert ckpts.checkpoint_step(tmp_path / "checkpoint-4") == 4


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda p: (p / "trainer_state.json").unlink(), "trainer_state.json missing"),
        (lambda p: (p / "trainer_state.json").write_text('{"global_st'), "trainer_state.json incomplete"),
        (lambda p: (p / "trainer_state.json").write_text('{"global_step": 3}'), "says step 3"),
        (lambda p: (p / "optimizer.pt").unlink(), "optimizer.pt missing"),
        (lambda p: os.truncate(p / "optimizer.pt", 40), "optimizer.pt incomplete"),
        (lambda p: os.truncate(p / "rng_state.pth", 10), "rng_state.pth incomplete"),
        (lambda p: os.truncate(p / ckpts.TRAINABLE_WEIGHTS, 30), "trainable_weights.safetensors unreadable"),
        (lambda p: (p / ckpts.TRAINABLE_WEIGHTS).unlink(), "trainable_weights.safetensors missing"),
        (
            lambda p: os.truncate(p / "callback_state" / "Allocator.safetensors", 20),
            "Allocator.safetensors unreadable",
        ),
    ],
)
def test_incomplete_checkpoints_are_recognised(tmp_path: Path, damage, expected: str) -> None:
    path = fake_checkpoint(tmp_path, 4)
    damage(path)
    problems = ckpts.checkpoint_problems(path)
    assert any(expected in p for p in problems), problems


def test_ddp_checkpoints_need_every_process_rng_state(tmp_path: Path) -> None:
    path = fake_checkpoint(tmp_path, 2, world_size=2)
    assert ckpts.checkpoint_problems(path, world_size=2) == []
    (path / "rng_state_1.pth").unlink()
    assert ckpts.checkpoint_problems(path, world_size=2) == ["rng_state_1.pth missing"]


def test_last_complete_checkpoint_skips_newer_broken_ones(tmp_path: Path) -> None:
    for step in (2, 4, 6, 10):
        fake_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-10" / "scheduler.pt").unlink()
    os.truncate(tmp_path / "checkpoint-6" / "optimizer.pt", 5)
    (tmp_path / "checkpoint-x").mkdir()
    found, skipped = ckpts.last_complete_checkpoint(tmp_path)
    assert found is not None and found.step == 4
    assert [c.step for c, _ in skipped] == [10, 6]
    assert [c.step for c in ckpts.list_checkpoints(tmp_path)] == [2, 4, 6, 10]


def _config(**train) -> Config:
    return Config(adapter=LoraConfig(r=4), train=TrainConfig(**train))


def test_run_fingerprint_ignores_bookkeeping_but_not_learning_keys() -> None:
    base = run_fingerprint(_config(), "data1", 1)["fingerprint"]
    same = _config(
        logging_steps=1, save_steps=7, output_dir="x", checkpoint_dir="y", resume="never", report_to="none"
    )
    assert run_fingerprint(same, "data1", 1)["fingerprint"] == base
    assert run_fingerprint(_config(learning_rate=1e-3), "data1", 1)["fingerprint"] != base
    assert run_fingerprint(_config(), "data2", 1)["fingerprint"] != base
    assert run_fingerprint(_config(), "data1", 2)["fingerprint"] != base
    other_adapter = Config(adapter=LoraConfig(r=8), train=TrainConfig())
    assert run_fingerprint(other_adapter, "data1", 1)["fingerprint"] != base


def test_choose_resume(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    config = _config(checkpoint_dir=str(ckpt_dir))
    run = run_fingerprint(config, "d", 1)
    assert choose_resume(config, tmp_path, ckpt_dir, run, 1) == ResumePlan(None, (), ())  # nothing there

    fake_checkpoint(ckpt_dir, 2)
    fake_checkpoint(ckpt_dir, 4)
    (ckpt_dir / "checkpoint-4" / "trainer_state.json").unlink()
    ckpts.write_run(ckpt_dir, run)
    plan = choose_resume(config, tmp_path, ckpt_dir, run, 1)
    assert plan.checkpoint == ckpt_dir / "checkpoint-2"
    assert plan.remove == (ckpt_dir / "checkpoint-4",), "the broken newer checkpoint goes"
    assert any(
        "skipping incomplete checkpoint" in n and "trainer_state.json missing" in n for n in plan.notes
    )
    assert (ckpt_dir / "checkpoint-4").exists(), "deciding deletes nothing"
    apply_resume_plan(plan, ckpt_dir, run, is_main=True)
    assert [c.step for c in ckpts.list_checkpoints(ckpt_dir)] == [2]

    explicit = _config(checkpoint_dir=str(ckpt_dir), resume="ckpt/checkpoint-2")
    assert choose_resume(explicit, tmp_path, ckpt_dir, run, 1).checkpoint == ckpt_dir / "checkpoint-2"
    with pytest.raises(UserError, match=r"train\.resume: 'ckpt/checkpoint-9' is not a complete checkpoint"):
        choose_resume(_config(resume="ckpt/checkpoint-9"), tmp_path, ckpt_dir, run, 1)

    other = run_fingerprint(_config(checkpoint_dir=str(ckpt_dir), seed=1), "d", 1)
    plan = choose_resume(config, tmp_path, ckpt_dir, other, 1)
    assert plan.checkpoint is None and plan.remove == (ckpt_dir / "checkpoint-2",), (
        "another run's checkpoints go"
    )
    apply_resume_plan(plan, ckpt_dir, other, is_main=True)
    assert ckpts.list_checkpoints(ckpt_dir) == [] and ckpts.read_run(ckpt_dir) == other

    fake_checkpoint(ckpt_dir, 2)
    never = _config(checkpoint_dir=str(ckpt_dir), resume="never")
    plan = choose_resume(never, tmp_path, ckpt_dir, other, 1)
    assert plan.checkpoint is None and plan.remove == (ckpt_dir / "checkpoint-2",)


# -------------------------------------------------------------------------------------------- collator
def test_collator_pads_tokens_and_labels() -> None:
    batch = PadCollator(pad_token_id=0)(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "prompt": "x"},
            {"input_ids": [8], "attention_mask": [1], "labels": [8]},
        ]
    )
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["input_ids"].dtype == torch.long


def test_collator_class_labels_left_padding_and_multiple_of() -> None:
    batch = PadCollator(pad_token_id=9, padding_side="left", pad_to_multiple_of=4)(
        [
            {"input_ids": [1, 2, 3], "labels": 1},
            {"input_ids": [4], "labels": 0},
        ]
    )
    assert batch["input_ids"].tolist() == [[9, 1, 2, 3], [9, 9, 9, 4]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert batch["labels"].tolist() == [1, 0]


# -------------------------------------------------------------------------------- steps and arguments
def test_step_plan_matches_trainer_arithmetic() -> None:
    plan = plan_steps(TrainConfig(batch_size=8, epochs=2, warmup_ratio=0.1), num_train_rows=100)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (
        13,
        13,
        26,
        3,
    )
    plan = plan_steps(TrainConfig(batch_size=8, grad_accum=4, epochs=1), num_train_rows=100, world_size=2)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (7, 2, 2)
    plan = plan_steps(TrainConfig(max_steps=50, warmup_steps=5), num_train_rows=10)
    assert (plan.total_steps, plan.warmup_steps) == (50, 5)


def test_precision_on_cpu() -> None:
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(
        ConfigError, match=r"train\.precision: 'fp16': fp16 mixed precision needs a CUDA GPU.*fp32, bf16"
    ):
        resolve_precision("fp16", "cpu")


def test_early_stopping_needs_evaluation_steps_that_checkpoints_land_on() -> None:
    with pytest.raises(ValueError, match=r"train\.eval_steps: null"):
        TrainConfig(early_stopping_patience=2)
    with pytest.raises(
        ValueError, match=r"train\.save_steps: 50 is not a multiple of train\.eval_steps \(20\)"
    ):
        TrainConfig(early_stopping_patience=2, eval_steps=20)


def test_config_maps_onto_training_arguments(tmp_path: Path) -> None:
    tc = TrainConfig(
        epochs=3,
        batch_size=4,
        eval_batch_size=16,
        grad_accum=2,
        learning_rate=1e-3,
        scheduler="cosine",
        warmup_ratio=0.1,
        weight_decay=0.01,
        max_grad_norm=0.5,
        seed=3,
        eval_steps=10,
        save_steps=20,
        save_total_limit=3,
        early_stopping_patience=2,
        gradient_checkpointing=True,
        logging_steps=7,
    )
    plan = plan_steps(tc, 100)
    args = build_training_arguments(
        tc, checkpoint_dir=tmp_path / "c", has_eval=True, plan=plan, precision="bf16", deterministic=True
    )
    assert args.output_dir == str(tmp_path / "c")
    assert (
        args.per_device_train_batch_size,
        args.per_device_eval_batch_size,
        args.gradient_accumulation_steps,
    ) == (4, 16, 2)
    assert args.num_train_epochs == 3 and args.max_steps == -1
    assert args.learning_rate == 1e-3 and args.lr_scheduler_type.value == "cosine"
    assert args.warmup_steps == plan.warmup_steps == 4
    assert (args.weight_decay, args.max_grad_norm, args.seed, args.data_seed) == (0.01, 0.5, 3, 3)
    assert args.full_determinism and args.bf16 and not args.fp16
    assert args.eval_strategy.value == "steps" and args.eval_steps == 10
    assert args.save_strategy.value == "steps" and args.save_steps == 20 and args.save_total_limit == 3
    assert (
        args.load_best_model_at_end
        and args.metric_for_best_model == "eval_loss"
        and not args.greater_is_better
    )
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.logging_steps == 7 and not args.logging_nan_inf_filter and not args.disable_tqdm
    assert args.report_to == [] or args.report_to == "none" or args.report_to == ["none"]

    no_eval = build_training_arguments(
        TrainConfig(),
        checkpoint_dir=tmp_path / "c",
        has_eval=False,
        plan=plan_steps(TrainConfig(), 10),
        precision="fp32",
        deterministic=False,
    )
    assert no_eval.eval_strategy.value == "no" and not no_eval.load_best_model_at_end
    with pytest.raises(
        ConfigError, match=r"train\.early_stopping_patience: set, but the prepared data has no validation"
    ):
        build_training_arguments(
            tc, checkpoint_dir=tmp_path, has_eval=False, plan=plan, precision="fp32", deterministic=False
        )
