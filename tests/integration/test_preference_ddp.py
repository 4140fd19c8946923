"""DPO under DDP (issue 25: everything the SFT path has keeps working): the train stage with train.devices 2
starts torchrun itself (gloo on CPU); 2 processes x 2 pairs give the same adapter as 1 process x 4 pairs. The
loss is a mean over pairs of per-sequence log-prob sums, so DDP's gradient average over equal shards equals
the one-process mean; the reference (adapter off) needs no synchronisation."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from tasks.stages import STAGES

from peft_framework.config import load_config
from peft_framework.data.samples import write_samples
from peft_framework.data.stage import prepare
from peft_framework.training import train

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _config(name: str, batch_size: int, devices: int):
    return load_config(
        ROOT / "params" / "dpo.yaml",
        [
            "train.init_adapter=null",
            "train.report_to=none",
            "train.max_steps=4",
            "train.save_steps=4",
            "train.logging_steps=1",
            f"train.batch_size={batch_size}",
            f"train.devices={devices}",
            f"train.output_dir=models/{name}",
            f"train.checkpoint_dir=models/checkpoints-{name}",
        ],
    )


def test_dpo_on_two_processes_equals_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    write_samples(tmp_path / "data" / "raw")
    one = _config("one", batch_size=4, devices=1)
    prepare(one, tmp_path)
    single = train(one, tmp_path)
    double = STAGES["train"].run(_config("two", batch_size=2, devices=2), tmp_path)
    assert double["world_size"] == 2 and "--nproc_per_node 2" in double["launcher"]
    assert single["global_step"] == double["global_step"] == 4
    a = load_file(str(tmp_path / "models/one/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "models/two/adapter_model.safetensors"))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(t.abs().max()) for k, t in a.items() if "lora_B" in k)
    assert moved > 1e-3  # the adapter trained
    assert diff < 5e-5, diff  # float summation order only; a wrong split or loss scaling is far larger
