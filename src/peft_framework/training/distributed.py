"""`train.distributed`: how one training job spreads over processes, handed to transformers/accelerate.

- ddp: every process holds the whole model (DDP; gloo on CPU). The default, and what a single process runs.
- fsdp: PyTorch FSDP2 (`fully_shard`) through Trainer's `fsdp`/`fsdp_config`: parameters, gradients and
  optimizer states sharded over the processes, each decoder layer its own unit.
- deepspeed: DeepSpeed ZeRO stage 2 or 3 through Trainer's `deepspeed` argument; the config is generated
  here ("auto" where Trainer fills in its own values) and written beside the checkpoints as JSON.

Nothing here shards anything itself. What it adds is what an adapter-only checkpoint needs under sharding:
the trainable tensors gathered whole (FSDP2: DTensor.full_tensor; ZeRO-3: GatheredParameters) before they
are written, and scattered back into the shards on resume.

Launch (`launch_command`): torchrun, one node (`--standalone`) or several (`--nnodes`, with the rendezvous
given by torchrun's own PET_* environment variables on each node).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peft_framework.config.schema import TrainConfig
from peft_framework.errors import ConfigError
from peft_framework.training.checkpoints import GENERATED_CONFIG as DEEPSPEED_CONFIG

# DEEPSPEED_CONFIG: the generated DeepSpeed config, in `train.checkpoint_dir` (removed with the checkpoints)


def strategy(train: TrainConfig, world_size: int) -> str:
    """What the run's weights depend on: 'single', 'ddp', 'fsdp' or 'deepspeed-zero{2,3}'."""
    if train.distributed == "deepspeed":
        return f"deepspeed-zero{train.zero_stage}"
    if world_size <= 1 and train.distributed == "ddp":
        return "single"
    return train.distributed


def identity(train: TrainConfig, world_size: int) -> dict[str, Any]:
    """The part of the run fingerprint that says how the job was spread: checkpoints of another process
    count or strategy are never continued (their optimizer/RNG files and shards do not fit)."""
    return {"world_size": world_size, "strategy": strategy(train, world_size)}


def planned_world_size(train: TrainConfig) -> int:
    return train.devices * train.nodes


# --------------------------------------------------------------------------------------------- configs
def fsdp_config(train: TrainConfig) -> dict[str, Any]:
    """Trainer's `fsdp_config` for FSDP2: wrap each decoder layer (the model's `_no_split_modules`, which
    accelerate reads when no class is named), full state dicts for the (small) adapter."""
    return {
        "version": 2,
        "reshard_after_forward": True,
        "cpu_offload": train.offload_params,
        "state_dict_type": "FULL_STATE_DICT",
        "activation_checkpointing": False,  # Trainer's gradient_checkpointing handles that
    }


def deepspeed_config(train: TrainConfig) -> dict[str, Any]:
    """A DeepSpeed config for ZeRO stage `train.zero_stage`. Batch sizes, accumulation, clipping, precision
    and the optimizer/scheduler are "auto" or absent: Trainer fills them from TrainingArguments, so there
    is one source for each value."""
    zero: dict[str, Any] = {
        "stage": train.zero_stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if train.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            # the adapter is gathered whole for saving; without this ZeRO-3 saves empty placeholders
            stage3_gather_16bit_weights_on_model_save=True,
        )
        if train.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,  # Trainer logs
        "wall_clock_breakdown": False,
    }


def write_deepspeed_config(train: TrainConfig, checkpoint_dir: Path) -> Path:
    """Write the generated DeepSpeed config beside the checkpoints (the file Trainer is given)."""
    from peft_framework.io import write_json_atomic

    path = checkpoint_dir / DEEPSPEED_CONFIG
    write_json_atomic(path, deepspeed_config(train))
    return path


def check_runnable(train: TrainConfig, device: str) -> None:
    """ConfigError, naming the key, when the strategy cannot run here (before any model is loaded)."""
    problems = []
    if train.distributed == "deepspeed":
        import importlib.util

        if device != "cuda":
            problems.append(
                f"train.distributed: 'deepspeed' needs CUDA GPUs and this machine has {device} only; "
                "allowed here: ddp"
            )
        elif importlib.util.find_spec("deepspeed") is None:
            problems.append(
                "train.distributed: 'deepspeed' needs the deepspeed package (`pip install deepspeed`); "
                "allowed without it: ddp, fsdp"
            )
    if problems:
        raise ConfigError("invalid config", problems)


def check_strategy_applied(args: Any, state: Any) -> None:
    """ConfigError when `train.distributed` asked for FSDP or DeepSpeed and accelerate did not apply it.

    accelerate 1.15 turns FSDP on only for accelerator process groups (MULTI_GPU and the like): for CPU
    processes (MULTI_CPU, gloo) and single-process runs it drops the FSDP plugin without a word and the run
    would be plain DDP under an 'fsdp' label. (torch's own fully_shard does run on gloo; Trainer cannot use
    it there.) Checked on what accelerate decided, so a release that applies FSDP on CPU just works.
    """
    if getattr(args, "fsdp", False) and getattr(state, "fsdp_plugin", None) is None:
        import accelerate

        kind = getattr(state.distributed_type, "value", state.distributed_type)
        raise ConfigError(
            "invalid config",
            [
                f"train.distributed: 'fsdp', but accelerate {accelerate.__version__} did not apply FSDP to this "
                f"run ({state.num_processes} process(es), distributed type {kind}): it shards over GPU "
                "process groups only, not CPU (gloo) or a single process; allowed here: ddp"
            ],
        )
    if getattr(args, "deepspeed", None) and getattr(state, "deepspeed_plugin", None) is None:
        raise ConfigError("invalid config", ["train.distributed: 'deepspeed' was not applied by accelerate"])


def training_arguments_kwargs(train: TrainConfig, checkpoint_dir: Path) -> dict[str, Any]:
    """The TrainingArguments entries for `train.distributed` (none for ddp: Trainer's default)."""
    if train.distributed == "fsdp":
        return {"fsdp": True, "fsdp_config": fsdp_config(train)}
    if train.distributed == "deepspeed":
        return {"deepspeed": str(checkpoint_dir / DEEPSPEED_CONFIG)}
    return {}


# ------------------------------------------------------------------------------------- gather/scatter
def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(tensor, DTensor)


def _zero3_params(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if hasattr(p, "ds_id")]


@contextmanager
def _zero3_gathered(params: Sequence[nn.Parameter], modifier_rank: int | None) -> Iterator[None]:
    sharded = _zero3_params(params)
    if not sharded:
        yield
        return
    import deepspeed  # only reached when DeepSpeed partitioned the parameters

    with deepspeed.zero.GatheredParameters(sharded, modifier_rank=modifier_rank):
        yield


def gather_full(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Every tensor whole, on CPU, in every process (all processes must call this together: FSDP2 and
    ZeRO-3 gather with collectives). Plain and DDP parameters are copied as they are."""
    out: dict[str, torch.Tensor] = {}
    with _zero3_gathered(list(params.values()), modifier_rank=None):
        for name in sorted(params):
            p = params[name]
            full = p.full_tensor() if _is_dtensor(p) else p
            out[name] = full.detach().to("cpu").contiguous().clone()
    return out


def is_sharded(params: dict[str, nn.Parameter]) -> bool:
    return any(_is_dtensor(p) or hasattr(p, "ds_id") for p in params.values())


@torch.no_grad()
def scatter_full(params: dict[str, nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors (every process holds `state`) into possibly sharded parameters."""
    with _zero3_gathered(list(params.values()), modifier_rank=0):
        for name in sorted(params):
            p = params[name]
            if _is_dtensor(p):
                from torch.distributed.tensor import distribute_tensor

                local = distribute_tensor(state[name].to(p.device, p.dtype), p.device_mesh, p.placements)
                p.copy_(local)
            else:
                p.copy_(state[name])


# ---------------------------------------------------------------------------------------------- launch
def torchrun() -> str:
    """The torchrun next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("torchrun")
    if beside.exists():
        return str(beside)
    return shutil.which("torchrun") or "torchrun"


def under_launcher() -> bool:
    """True inside a torchrun/accelerate-launched process."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_command(train: TrainConfig, module_args: Sequence[str]) -> list[str]:
    """`torchrun ... -m <module_args>` for `train.devices` processes on each of `train.nodes` nodes.

    One node: `--standalone` (a local rendezvous on a free port). Several: `--nnodes N --nproc_per_node D`;
    torchrun takes the rendezvous from its PET_* environment variables, set the same on every node
    (PET_RDZV_BACKEND=c10d, PET_RDZV_ENDPOINT=host:port, PET_RDZV_ID=some-job-id).
    """
    cmd = [torchrun()]
    if train.nodes == 1:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(train.nodes)]
    cmd += ["--nproc_per_node", str(train.devices), "-m", *module_args]
    return cmd


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def materialize_trainable(model: nn.Module) -> bool:
    """After training under FSDP2 or ZeRO-3: replace each sharded trainable parameter by a plain one
    holding the whole tensor, so the adapter writer sees full weights (never a shard or a ZeRO-3
    placeholder, the "LoRA A all zeros" failure). Every process must call it (the gather is a collective);
    the frozen base stays sharded. Returns whether anything was sharded. The model is not trained further.
    """
    params = trainable_parameters(model)
    if not is_sharded(params):
        return False
    full = gather_full(params)
    for name, tensor in full.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=True)
    return True
