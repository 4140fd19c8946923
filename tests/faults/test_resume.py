"""Resume at the end of a run and past a corrupt checkpoint (cases 2 and 6 of issue 18): the final adapter
is byte-identical to the uninterrupted run's, with the same step count."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
from faultkit import TINY, Run, run_killed, summary

from peft_framework.training.checkpoints import checkpoint_problems

pytestmark = pytest.mark.slow

ADAPTER = "models/adapter/adapter_model.safetensors"
STEPS = 3  # train.max_steps in TINY


def _manifest_steps(root: Path) -> int:
    return json.loads((root / "models/adapter/manifest.json").read_text())["training"]["global_step"]


def test_a_rerun_with_kept_checkpoints_trains_no_extra_step(
    cli: Run, trained: Path, project_copy: Path
) -> None:
    code, out, err = cli("train", project_copy, "train.keep_checkpoints=true")
    assert code == 0, err
    result = summary(out)
    assert result["resumed_from"].endswith(f"checkpoint-{STEPS}")
    assert result["global_step"] == STEPS == _manifest_steps(project_copy)
    assert (project_copy / ADAPTER).read_bytes() == (trained / ADAPTER).read_bytes()


def test_a_kill_between_the_last_checkpoint_and_the_output_write_resumes_exactly(
    cli: Run, trained: Path, project_copy: Path
) -> None:
    shutil.rmtree(project_copy / "models")
    proc = run_killed(project_copy, "atomic_dir.begin:train.output_dir", "train", "params.yaml", *TINY)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (project_copy / "models/adapter").exists(), "a killed run leaves no output"
    assert (project_copy / f"models/checkpoints/checkpoint-{STEPS}").is_dir()

    code, out, err = cli("train", project_copy)
    assert code == 0, err
    assert summary(out)["global_step"] == STEPS == _manifest_steps(project_copy)
    assert (project_copy / ADAPTER).read_bytes() == (trained / ADAPTER).read_bytes()
    assert not (project_copy / "models/checkpoints").exists(), "checkpoints go once the output is written"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-len(data) // 3] ^= 0xFF  # inside the tensor data: the file still opens
    path.write_bytes(bytes(data))


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(
    cli: Run, trained: Path, project_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.rmtree(project_copy / "models/adapter")
    newest = project_copy / f"models/checkpoints/checkpoint-{STEPS}"
    _flip(newest / "optimizer.pt")
    assert zipfile.ZipFile(newest / "optimizer.pt").namelist(), "still a readable zip"

    with caplog.at_level(logging.WARNING):
        code, out, err = cli("train", project_copy)
    assert code == 0, err
    result = summary(out)
    assert result["resumed_from"].endswith(f"checkpoint-{STEPS - 1}")
    assert result["global_step"] == STEPS
    assert f"skipping incomplete checkpoint {newest}: optimizer.pt corrupt (CRC mismatch" in caplog.text
    assert (project_copy / ADAPTER).read_bytes() == (trained / ADAPTER).read_bytes()


def test_a_bit_flip_in_checkpoint_weights_is_found(trained: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / f"checkpoint-{STEPS}"
    shutil.copytree(trained / f"models/checkpoints/checkpoint-{STEPS}", ckpt)
    assert checkpoint_problems(ckpt) == []
    _flip(ckpt / "trainable_weights.safetensors")
    assert checkpoint_problems(ckpt) == [
        "trainable_weights.safetensors corrupt (its sha256 differs from checksums.json)"
    ]
