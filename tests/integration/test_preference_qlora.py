"""DPO on a 4-bit (bitsandbytes nf4, CPU) base: the LoRA adapter is the policy, the reference the same 4-bit
network with the adapter switched off (issue 25: QLoRA keeps working with a preference objective)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("bitsandbytes")

from peft_framework.config import load_config
from peft_framework.data.samples import write_samples
from peft_framework.data.stage import prepare
from peft_framework.training import train

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_dpo_steps_on_a_4bit_base_with_the_adapter_off_reference(tmp_path: Path) -> None:
    write_samples(tmp_path / "data" / "raw")
    config = load_config(
        ROOT / "params" / "dpo.yaml",
        [
            "model.quantization.bits=4",
            "train.init_adapter=null",  # the reference: the 4-bit base, adapter off
            "train.gradient_checkpointing=true",
            "train.max_steps=3",
            "train.logging_steps=1",
            "train.save_steps=3",
            "train.report_to=none",
        ],
    )
    prepare(config, tmp_path)
    summary = train(config, tmp_path)
    assert summary["objective"] == "dpo" and summary["global_step"] == 3
    out = tmp_path / config.train.output_dir
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"]["quantization"]["bits"] == 4
    assert "init_adapter" not in manifest
    logged = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    steps = {row["step"]: row for row in logged if "rewards/margins" in row}
    assert sorted(steps) == [1, 2, 3]
    # LoRA B starts at zero, so at step 1 the policy equals the adapter-off reference: rewards 0, loss log 2.
    # After updates the rewards move apart: the reference stayed the 4-bit base while the adapter trained.
    assert steps[1]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert steps[1]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert steps[1]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert steps[3]["rewards/margins"] != 0.0
    assert all(math.isfinite(row["logps/chosen"]) and row["logps/chosen"] < 0 for row in steps.values())
