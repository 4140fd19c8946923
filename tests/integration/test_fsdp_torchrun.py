"""One training job over several processes: FSDP on CPU (what accelerate does with it here; the launcher
itself: test_train.py's DDP test), and the GPU-only runs (FSDP over GPUs, DeepSpeed ZeRO-3) behind device checks.

Finding (torch 2.13, accelerate 1.15, transformers 5.24): torch's FSDP2 (`fully_shard`) itself runs on 2 CPU
processes over gloo, but accelerate's AcceleratorState enables FSDP only for accelerator process groups
(MULTI_GPU and the like); on CPU (MULTI_CPU) it drops the plugin and Trainer would run plain DDP. The train
stage refuses that with a config error instead of training under a wrong label; the test below proves it
with two real CPU processes, and the FSDP-vs-one-process comparison runs where 2 GPUs are.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from tasks.stages import STAGES
from test_train import _pairs, adapter_tensors, make_config, max_abs_diff, write_prepared

from peft_framework.config.schema import Config
from peft_framework.errors import UserError
from peft_framework.training import train
from peft_framework.training.distributed import torchrun

pytestmark = pytest.mark.timeout(900)
CUDA_DEVICES = torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dist_project")
    write_prepared(
        root / "data/prepared", {"train": _pairs(64, 1), "validation": _pairs(16, 2), "test": _pairs(16, 3)}
    )
    return root


def _config(tag: str, **train: object) -> Config:
    return make_config(tag, **{"max_steps": 4, "save_steps": 2, "eval_steps": 2, **train})


def _launched(config: Config, root: Path) -> dict:
    if shutil.which(torchrun()) is None:
        pytest.skip("torchrun not found")
    return STAGES["train"].run(config, root)


@pytest.mark.slow
@pytest.mark.skipif(CUDA_DEVICES > 0, reason="the CPU finding; GPUs run the FSDP comparison below")
def test_fsdp_on_two_cpu_processes_is_refused_with_the_reason(project: Path) -> None:
    with pytest.raises(UserError) as err:
        _launched(_config("fsdp_cpu", distributed="fsdp", devices=2, batch_size=2), project)
    message = str(err.value)
    assert "train.distributed: 'fsdp', but accelerate" in message
    assert "(2 process(es), distributed type MULTI_CPU)" in message
    assert "allowed here: ddp" in message
    assert not (project / "out/fsdp_cpu/adapter").exists()


# ------------------------------------------------------------------------------------------ GPU only
def _torchrun_train(project: Path, config: Config, nproc: int) -> None:
    import subprocess

    path = project / f"{config.train.output_dir.split('/')[1]}.json"
    path.write_text(json.dumps(config.to_dict()))
    cmd = [torchrun(), "--standalone", "--nproc_per_node", str(nproc), "-m", "peft_framework", "train"]
    proc = subprocess.run(
        [*cmd, str(path), "--root", str(project)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(CUDA_DEVICES < 2, reason="FSDP through Trainer/accelerate needs 2 GPUs (see module doc)")
def test_fsdp_on_two_gpus_equals_one_process_and_resumes(project: Path) -> None:
    common = dict(max_steps=8, save_steps=4, eval_steps=4, scheduler="constant", precision="fp32")
    train(_config("gpu1", batch_size=4, **common), project)
    _torchrun_train(project, _config("fsdp2", batch_size=2, distributed="fsdp", **common), 2)
    # resume under sharding: 4 steps, keep the checkpoint, continue to 8 from it
    half = dict(common, max_steps=4, keep_checkpoints=True)
    _torchrun_train(project, _config("fsdp_half", batch_size=2, distributed="fsdp", **half), 2)
    resume = str(project / "out/fsdp_half/ckpt/checkpoint-4")
    _torchrun_train(
        project, _config("fsdp_res", batch_size=2, distributed="fsdp", resume=resume, **common), 2
    )

    one, fsdp, resumed = (
        adapter_tensors(project / f"out/{t}/adapter") for t in ("gpu1", "fsdp2", "fsdp_res")
    )
    assert all(float(t.abs().max()) > 0 for k, t in fsdp.items() if "lora_A" in k)  # never empty/zero shards
    assert max_abs_diff(one, fsdp) < 1e-4
    assert max_abs_diff(fsdp, resumed) < 1e-5
    manifest = json.loads((project / "out/fsdp_res/adapter/manifest.json").read_text())["training"]
    assert manifest["resumed_from"] == resume and manifest["world_size"] == 2


@pytest.mark.slow
@pytest.mark.skipif(
    CUDA_DEVICES < 1 or importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed needs CUDA + deepspeed",
)
def test_deepspeed_zero3_saves_the_whole_adapter(project: Path) -> None:
    common = dict(max_steps=6, scheduler="constant", precision="fp32")
    train(_config("ds_ref", batch_size=4, **common), project)
    _torchrun_train(
        project, _config("ds_z3", batch_size=4, distributed="deepspeed", zero_stage=3, **common), 1
    )
    ref, z3 = adapter_tensors(project / "out/ds_ref/adapter"), adapter_tensors(project / "out/ds_z3/adapter")
    assert {k: v.shape for k, v in ref.items()} == {k: v.shape for k, v in z3.items()}
    assert all(float(t.abs().max()) > 0 for k, t in z3.items() if "lora_A" in k)
    assert max_abs_diff(ref, z3) < 1e-3
