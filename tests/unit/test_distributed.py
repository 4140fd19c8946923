"""`train.distributed`: generated FSDP/DeepSpeed configs, the fingerprint, the launcher command, and the
gather/scatter of adapter tensors under FSDP2 (a real one-process gloo group: the same DTensor code paths
as N processes). Multi-process runs are in tests/integration/test_distributed.py."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from tasks import launch
from torch import nn

from peft_framework.config.schema import Config, TrainConfig
from peft_framework.errors import ConfigError
from peft_framework.training import checkpoints as ckpts
from peft_framework.training import distributed
from peft_framework.training.arguments import build_training_arguments, plan_steps
from peft_framework.training.resume import run_fingerprint


def _train(**kw: object) -> TrainConfig:
    return TrainConfig(**kw)


def test_deepspeed_zero2_config_leaves_the_trainer_values_to_trainer() -> None:
    cfg = distributed.deepspeed_config(_train(distributed="deepspeed", zero_stage=2))
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 2
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert "stage3_gather_16bit_weights_on_model_save" not in zero
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert cfg[key] == "auto"  # one source for each value: TrainingArguments
    assert cfg["bf16"] == {"enabled": "auto"} and cfg["fp16"] == {"enabled": "auto"}
    assert "optimizer" not in cfg and "scheduler" not in cfg  # Trainer's AdamW and schedule
    json.dumps(cfg)  # written as JSON


def test_deepspeed_zero3_gathers_weights_for_saving_and_offloads_when_asked() -> None:
    plain = distributed.deepspeed_config(_train(distributed="deepspeed", zero_stage=3))["zero_optimization"]
    assert plain["stage"] == 3
    # without it ZeRO-3 hands the saver empty placeholders (the "LoRA A all zeros" failure)
    assert plain["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_param" not in plain and "offload_optimizer" not in plain

    off = distributed.deepspeed_config(
        _train(distributed="deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True)
    )["zero_optimization"]
    assert off["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert off["offload_param"] == {"device": "cpu", "pin_memory": True}
    # parameter offload is a ZeRO-3 feature: stage 2 offloads the optimizer only
    z2 = distributed.deepspeed_config(
        _train(distributed="deepspeed", zero_stage=2, offload_optimizer=True, offload_params=True)
    )["zero_optimization"]
    assert "offload_param" not in z2 and z2["offload_optimizer"]["device"] == "cpu"


def test_deepspeed_config_is_written_beside_the_checkpoints_and_removed_with_them(tmp_path: Path) -> None:
    train = _train(distributed="deepspeed", zero_stage=3)
    path = distributed.write_deepspeed_config(train, tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / "deepspeed_config.json"
    assert json.loads(path.read_text()) == distributed.deepspeed_config(train)
    assert distributed.training_arguments_kwargs(train, tmp_path / "ckpt") == {"deepspeed": str(path)}
    ckpts.remove_checkpoint_dir(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_deepspeed_without_cuda_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    train = _train(distributed="deepspeed")
    with pytest.raises(ConfigError) as err:
        build_training_arguments(
            train,
            checkpoint_dir=tmp_path / "ckpt",
            has_eval=False,
            plan=plan_steps(train, 16),
            precision="fp32",
            deterministic=True,
        )
    assert "train.distributed: 'deepspeed' needs CUDA GPUs" in str(err.value)
    assert "allowed here: ddp" in str(err.value)


def test_fsdp_arguments_are_fsdp2_with_full_state_dicts(tmp_path: Path) -> None:
    kwargs = distributed.training_arguments_kwargs(_train(distributed="fsdp", offload_params=True), tmp_path)
    assert kwargs["fsdp"] is True
    assert kwargs["fsdp_config"]["version"] == 2
    assert kwargs["fsdp_config"]["cpu_offload"] is True
    assert kwargs["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    assert distributed.training_arguments_kwargs(_train(), tmp_path) == {}


def test_fingerprint_includes_world_size_and_strategy() -> None:
    def fp(world: int, **train: object) -> str:
        return run_fingerprint(Config(train=TrainConfig(**train)), "data", world)["fingerprint"]

    assert distributed.identity(_train(), 1) == {"world_size": 1, "strategy": "single"}
    assert (
        distributed.identity(_train(distributed="deepspeed", zero_stage=3), 4)["strategy"]
        == "deepspeed-zero3"
    )
    prints = {
        fp(1),
        fp(2),
        fp(2, distributed="fsdp"),
        fp(2, distributed="deepspeed"),
        fp(2, distributed="deepspeed", zero_stage=3),
    }
    assert len(prints) == 5
    assert run_fingerprint(Config(train=TrainConfig(distributed="fsdp")), "d", 2)["strategy"] == "fsdp"


def test_launch_command_one_node_and_several(monkeypatch: pytest.MonkeyPatch) -> None:
    one = distributed.launch_command(_train(devices=4), ["peft_framework", "train", "c.json"])
    assert one[0].endswith("torchrun")
    assert one[1:] == ["--standalone", "--nproc_per_node", "4", "-m", "peft_framework", "train", "c.json"]
    many = distributed.launch_command(_train(devices=8, nodes=2), ["m"])
    assert many[1:] == ["--nnodes", "2", "--nproc_per_node", "8", "-m", "m"]

    for key in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert not launch.wanted(Config())
    assert launch.wanted(Config(train=TrainConfig(devices=2)))
    assert launch.wanted(Config(train=TrainConfig(nodes=2)))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launch.wanted(Config(train=TrainConfig(devices=2)))  # already one of the launched processes


def test_launcher_reads_the_user_error_the_processes_printed() -> None:
    stderr = (
        "W1201 torchrun noise\nerror: invalid config\n  - train.distributed: 'fsdp', but x\n"
        "error: invalid config\n  - train.distributed: 'fsdp', but x\nTraceback (most recent call last):\n"
    )
    assert launch._user_error(stderr) == ("invalid config", ["train.distributed: 'fsdp', but x"])
    assert launch._user_error("Traceback ...\nRuntimeError: boom\n") is None


# ----------------------------------------------------------------------------- FSDP2 gather / scatter
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(6, 6)
        self.lora_A = nn.Linear(6, 2, bias=False)
        self.lora_B = nn.Linear(2, 6, bias=False)
        self.base.requires_grad_(False)


@pytest.fixture
def process_group(monkeypatch: pytest.MonkeyPatch):
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_sharded_adapter_is_gathered_whole_and_scattered_back(process_group: None) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    model = nn.Sequential(_Block(), _Block())
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for block in model:
        fully_shard(block)
    fully_shard(model)
    params = distributed.trainable_parameters(model)
    assert all(isinstance(p, DTensor) for p in params.values()) and distributed.is_sharded(params)

    full = distributed.gather_full(params)
    assert full.keys() == expected.keys()
    assert all(not isinstance(t, DTensor) and torch.equal(t, expected[n]) for n, t in full.items())

    changed = {n: t + 1.0 for n, t in full.items()}
    distributed.scatter_full(params, changed)
    assert all(torch.equal(params[n].full_tensor(), changed[n]) for n in params)

    assert distributed.materialize_trainable(model)
    after = distributed.trainable_parameters(model)
    assert not distributed.is_sharded(after)
    assert all(torch.equal(after[n].detach(), changed[n]) for n in after)
    assert isinstance(model[0].base.weight, DTensor)  # the frozen base stays sharded


def test_plain_parameters_pass_through_unchanged() -> None:
    model = _Block()
    params = distributed.trainable_parameters(model)
    assert set(params) == {"lora_A.weight", "lora_B.weight"}
    full = distributed.gather_full(params)
    assert all(torch.equal(full[n], params[n].detach()) for n in params)
    assert not distributed.materialize_trainable(model)
    distributed.scatter_full(params, {n: torch.zeros_like(t) for n, t in full.items()})
    assert all(float(p.detach().abs().sum()) == 0.0 for p in params.values())
