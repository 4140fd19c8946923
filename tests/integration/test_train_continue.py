"""Warm start (`train.init_adapter`, from our adapter and from one peft saved) and raising `train.epochs`
on a finished run (continues it), through the real train stage on the tiny Llama."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.integration.test_train import _pairs, make_config, max_abs_diff, write_prepared
from transformers import TrainerCallback

from peft_framework.adapters import registry
from peft_framework.errors import AdapterError
from peft_framework.models.tiny import tiny_llama
from peft_framework.training import train

TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("continue_project")
    write_prepared(root / "data/prepared", {"train": _pairs(32, 1), "validation": _pairs(8, 2)})
    return root


class AdapterAtStart(TrainerCallback):
    """The adapter's tensors (peft key names) when training begins."""

    state: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.state = {k: v.clone() for k, v in registry.get("lora").adapter_state_dict(model).items()}


def _peft_adapter(path: Path, r: int = 4) -> Path:
    import peft

    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=r, lora_alpha=8, target_modules=TARGETS))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.05)  # B too: not the fresh-init zeros
    model.save_pretrained(str(path))
    return path


def test_init_adapter_from_peft_and_from_ours(project: Path) -> None:
    peft_dir = _peft_adapter(project / "peft_adapter")
    seen = AdapterAtStart()
    train(make_config("warm_peft", max_steps=2, init_adapter=str(peft_dir)), project, callbacks=[seen])
    saved = load_file(str(peft_dir / "adapter_model.safetensors"))
    assert seen.state is not None and max_abs_diff(seen.state, saved) == 0.0

    ours = project / "out/warm_peft/adapter"
    manifest = json.loads((ours / "manifest.json").read_text())
    from peft_framework.io import file_sha256

    assert manifest["init_adapter"]["sha256"] == file_sha256(peft_dir / "adapter_model.safetensors")

    # one of ours (the run above) as the start of another
    seen = AdapterAtStart()
    train(make_config("warm_ours", max_steps=1, init_adapter=str(ours)), project, callbacks=[seen])
    assert max_abs_diff(seen.state, load_file(str(ours / "adapter_model.safetensors"))) == 0.0

    # its hash is in the run fingerprint and the Prefect task's inputs
    from tasks.stages import STAGES

    from peft_framework.training.resume import run_fingerprint

    config = make_config("warm_ours", init_adapter=str(ours))
    assert (
        run_fingerprint(config, "d", 1, "a")["fingerprint"]
        != run_fingerprint(config, "d", 1, "b")["fingerprint"]
    )
    assert str(ours) in STAGES["train"].inputs(config, project)


def test_init_adapter_that_does_not_match_names_the_tensors(project: Path) -> None:
    peft_dir = _peft_adapter(project / "peft_r2", r=2)
    with pytest.raises(AdapterError) as info:
        train(make_config("warm_bad", max_steps=1, init_adapter=str(peft_dir)), project)
    text = str(info.value)
    assert text.startswith("train.init_adapter: ")
    assert re.search(r"q_proj\.lora_A\.weight: file \(2, \d+\), model \(4, \d+\)", text), text
    with pytest.raises(AdapterError) as info:
        train(make_config("warm_bad", {"target_modules": ["q_proj"]}, init_adapter=str(peft_dir)), project)
    assert "unexpected: " in str(info.value) and "v_proj.lora_A.weight" in str(info.value)
    with pytest.raises(Exception, match=r"train.init_adapter: 'nowhere' is not a directory"):
        train(make_config("warm_bad", max_steps=1, init_adapter="nowhere"), project)


@pytest.mark.slow
def test_raising_epochs_continues_the_finished_run(project: Path, caplog) -> None:
    """1 epoch, then train.epochs raised to 2, equals a 2-epoch run: exactly, with a constant learning
    rate (a decaying schedule depends on the planned length; see training/extend.py)."""
    common = dict(max_steps=-1, save_steps=2, eval_steps=None, scheduler="constant", keep_checkpoints=True)
    train(make_config("two", epochs=2, **common), project)
    first = train(make_config("grow", epochs=1, **common), project)
    assert first["global_step"] == 4
    with caplog.at_level(logging.INFO, logger="peft_framework"):
        grown = train(make_config("grow", epochs=2, **common), project)
    assert grown["global_step"] == 8 and grown["resumed_from"].endswith("checkpoint-4")
    assert "continuing from epoch 1 to epoch 2" in caplog.text
    a = load_file(str(project / "out/grow/adapter/adapter_model.safetensors"))
    b = load_file(str(project / "out/two/adapter/adapter_model.safetensors"))
    assert max_abs_diff(a, b) == 0.0


@pytest.mark.slow
def test_raising_epochs_without_checkpoints_says_it_starts_over(project: Path, caplog) -> None:
    common = dict(max_steps=-1, eval_steps=None)
    train(make_config("over", epochs=1, **common), project)
    with caplog.at_level(logging.INFO, logger="peft_framework"):
        again = train(make_config("over", epochs=2, **common), project)
    assert again["global_step"] == 8 and again["resumed_from"] is None
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "starts over" in r.getMessage()]
    assert warned and "train.keep_checkpoints: true" in warned[0].getMessage()
