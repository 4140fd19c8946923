"""The GRPO objective in AdapterTrainer: completions seeded by the global step (a resumed run replays them and
ends with the same adapter), num_iterations reuses a window's completions, the rewards see the data columns,
sampled completions reach callbacks and the Prefect table."""

from __future__ import annotations

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from grpo_fixtures import ToyReward, ToyScorer, share_of_letter, short
from peft_framework.adapters import get_adapter
from peft_framework.adapters.lora.config import LoraConfig
from peft_framework.config.grpo_schema import GrpoConfig
from peft_framework.models.tiny import tiny_llama, tiny_tokenizer
from peft_framework.training.objectives.grpo import GRPO
from peft_framework.training.samplers import RepeatWindows
from peft_framework.training.trainer import AdapterTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["say a", "say b", "say aa", "hello"]
REWARDS = [ToyReward("a_share", 1.0, share_of_letter("a")), ToyReward("short", 0.5, short)]


def _objective(**settings) -> GRPO:
    cfg = GrpoConfig(**{"num_generations": 4, "max_completion_length": 6, **settings})
    return GRPO(cfg, REWARDS, ToyScorer(REWARDS), seed=3, tokenizer=tiny_tokenizer())


def _data() -> datasets.Dataset:
    tok = tiny_tokenizer()
    return datasets.Dataset.from_dict(
        {
            "prompt_ids": [tok.encode(p) for p in PROMPTS],
            "prompt": PROMPTS,
            "answer": ["a", "b", "aa", "x"],
            "source": [10, 11, 12, 13],
        }
    )


def _model():
    model = tiny_llama()
    torch.manual_seed(0)  # the adapter's initialisation (the stage seeds it the same way)
    get_adapter("lora").inject(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    return model


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.samples: list = []

    def on_completions(self, args, state, samples) -> None:
        self.samples.append((state.global_step, samples))


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _trainer(tmp_path, objective, max_steps=4, **args):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=max_steps,
        learning_rate=5e-2,
        use_cpu=True,
        report_to="none",
        logging_steps=2,
        save_strategy="steps",
        save_steps=2,
        remove_unused_columns=False,
        seed=7,
    )
    settings.update(args)
    return AdapterTrainer(
        model=_model(),
        args=TrainingArguments(**settings),
        train_dataset=_data(),
        data_collator=objective.collator(0),
        adapter_method=get_adapter("lora"),
        objective=objective,
        callbacks=[Recorder()],
    )


def _batch(objective, rows=(0, 1)):
    data = _data()
    return objective.collator(0)([data[i] for i in rows])


def test_completions_depend_on_the_step_only_and_rewards_get_the_columns() -> None:
    model = _model()
    a, b = _objective(), _objective()
    first = a.prepare_window(model, [_batch(a)], None, step=5)[0]
    torch.manual_seed(999)  # the global RNG does not matter
    again = b.prepare_window(model, [_batch(b)], None, step=5)[0]
    later = b.prepare_window(model, [_batch(b)], None, step=6)[0]
    assert torch.equal(first["completion_ids"], again["completion_ids"])
    assert not torch.equal(first["completion_ids"], later["completion_ids"])
    call = a.scorer.calls[0]
    assert call["columns"]["answer"] == ["a"] * 4 + ["b"] * 4 and call["row_ids"] == [10] * 4 + [11] * 4
    assert call["prompts"] == ["say a"] * 4 + ["say b"] * 4
    assert first["advantages"].shape == (8,) and "old_per_token_logps" not in first


def test_num_iterations_reuses_the_window_and_the_sampler_repeats_it() -> None:
    model = _model()
    objective = _objective(num_iterations=2, beta=0.1)
    reference = _reference(model)
    first = objective.prepare_window(model, [_batch(objective)], reference, step=0)
    reused = objective.prepare_window(model, [_batch(objective)], reference, step=1)
    fresh = objective.prepare_window(model, [_batch(objective)], reference, step=2)
    assert reused[0]["completion_ids"] is first[0]["completion_ids"] and "generation_metrics" not in reused[0]
    assert "generation_metrics" in first[0] and len(objective.scorer.calls) == 2
    assert not torch.equal(fresh[0]["completion_ids"], first[0]["completion_ids"])
    assert {"old_per_token_logps", "ref_per_token_logps"} <= set(first[0])
    # the adapter starts at B = 0: the reference (adapter off) is the policy itself
    assert torch.allclose(first[0]["ref_per_token_logps"], first[0]["old_per_token_logps"], atol=1e-6)
    assert list(RepeatWindows(range(5), 2, 2)) == [0, 1, 0, 1, 2, 3, 2, 3, 4, 4]


def _reference(model):
    from peft_framework.training.objectives.base import as_reference

    return lambda: as_reference(model, get_adapter("lora"))


def test_training_logs_trl_metrics_and_hands_samples_to_callbacks(tmp_path) -> None:
    trainer = _trainer(tmp_path, _objective(beta=0.04), max_steps=2, save_strategy="no")
    trainer.train()
    logged = trainer.state.log_history[0]
    for name in (
        "reward",
        "reward_std",
        "rewards/a_share/mean",
        "rewards/short/std",
        "kl",
        "entropy",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "clip_ratio/region_mean",
        "frac_reward_zero_std",
        "reward_failures",
    ):
        assert name in logged, name
    [recorder] = [c for c in trainer.callback_handler.callbacks if isinstance(c, Recorder)]
    [(step, samples)] = recorder.samples
    assert step == 2 and len(samples) == 4
    assert {"prompt", "completion", "a_share", "short", "reward", "advantage"} <= set(samples[0])


def test_resume_from_a_checkpoint_gives_the_same_adapter(tmp_path) -> None:
    whole = _trainer(tmp_path / "whole", _objective(num_iterations=2))
    whole.train()
    cut = _trainer(tmp_path / "cut", _objective(num_iterations=2))
    cut.add_callback(StopAt(2))  # as if killed right after checkpoint-2 (same schedule as the whole run)
    cut.train()
    assert not (tmp_path / "cut" / "checkpoint-4").exists()
    resumed = _trainer(tmp_path / "cut", _objective(num_iterations=2))
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    a = load_file(str(tmp_path / "whole" / "checkpoint-4" / "trainable_weights.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoint-4" / "trainable_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(
        not torch.equal(
            a[k], load_file(str(tmp_path / "cut" / "checkpoint-2" / "trainable_weights.safetensors"))[k]
        )
        for k in a
    )


def test_prefect_table_of_completions(monkeypatch) -> None:
    pytest.importorskip("prefect")
    from tasks import progress

    made = []
    monkeypatch.setattr(progress, "create_table_artifact", lambda **kw: made.append(kw))
    monkeypatch.setattr(progress.PrefectProgressCallback, "_in_run", staticmethod(lambda: True))
    callback = progress.PrefectProgressCallback()
    state = type("S", (), {"global_step": 6, "max_steps": 10})()
    samples = [{"prompt": "say a", "completion": "x" * 1000, "reward": float("nan"), "advantage": 0.123456}]
    callback.on_completions(None, state, samples)
    [artifact] = made
    assert artifact["key"] == "train-completions" and "step 6/10" in artifact["description"]
    [row] = artifact["table"]
    assert row["step"] == 6 and row["reward"] is None and row["advantage"] == 0.1235
    assert len(row["completion"]) == progress.MAX_CELL_CHARS


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["train.grpo.loss_type=ppo"],
            'train.grpo.loss_type: got "ppo"; allowed: one of grpo, dr_grpo, bnpo, dapo',
        ),
        (["train.grpo.scale_rewards=std"], "train.grpo.scale_rewards"),
        (["train.grpo.num_generations=1"], "train.grpo.num_generations"),
        (["train.objective=grpo"], "train.objective: 'grpo' trains on data.kind prompt"),
    ],
)
def test_config_errors_name_the_key_and_what_is_allowed(overrides, expected) -> None:
    from peft_framework.config import resolve_config
    from peft_framework.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        resolve_config({}, overrides)
    assert expected in str(info.value), info.value


def test_grpo_defaults_are_trl_grpo_config_defaults() -> None:
    trl = pytest.importorskip("trl")
    ours, theirs = GrpoConfig(), trl.GRPOConfig(output_dir="/tmp/unused", use_cpu=True)
    for name in GrpoConfig.model_fields:
        if name != "log_completions":
            assert getattr(ours, name) == getattr(theirs, name), name


def test_epochs_count_each_window_num_iterations_times() -> None:
    from peft_framework.config.train_schema import TrainConfig
    from peft_framework.training.arguments import plan_steps

    once = plan_steps(TrainConfig(objective="grpo", batch_size=4), 40)
    twice = plan_steps(TrainConfig(objective="grpo", batch_size=4, grpo={"num_iterations": 2}), 40)
    assert (once.steps_per_epoch, twice.steps_per_epoch) == (10, 20)


def test_grpo_without_rewards_is_a_config_error() -> None:
    from peft_framework.config import resolve_config
    from peft_framework.errors import ConfigError
    from peft_framework.training import objectives

    config = resolve_config({}, ["data.kind=prompt", "train.objective=grpo"])
    with pytest.raises(ConfigError, match="train.rewards: empty, but train.objective is grpo"):
        objectives.get("grpo", config.train)
