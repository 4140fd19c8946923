"""Faults in the newest data and model features (issue 27, items 7, 9, 10, 11, 15): chat templates that
raise, loop or flood on real rows; mixing weights and counts that cannot be met; packing with another
`data.max_seq_len` than the data was prepared with; QLoRA 4-bit evaluation on CPU; an MLflow store that
cannot be reached or written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peft_framework.config.schema import ModelConfig

IDS = torch.tensor(
    [[1, 72, 101, 108, 108, 111, 44, 32, 119, 111], [1, 84, 104, 101, 32, 99, 97, 116, 115, 33]]
)


# ------------------------------------------------------------------------------ 11: QLoRA 4-bit on CPU
def _eval_and_train_logits(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits in eval mode (where bitsandbytes may repack weights for CPU) and in train mode (dequantizing)."""
    with torch.no_grad():
        evaluated = model.eval()(IDS).logits
        trained = model.train()(IDS).logits
    return evaluated, trained


@pytest.mark.parametrize(
    "model_config",
    [
        {"quantization": {"bits": 4}},  # the built-in tiny Llama: "N must be divisible by block_n"
        {"quantization": {"bits": 4}, "add_tokens": ["<tool>", "</tool>"]},
    ],
    ids=["builtin", "add_tokens"],
)
def test_a_4bit_base_evaluates_on_cpu(model_config: dict) -> None:
    pytest.importorskip("bitsandbytes")
    from peft_framework.models.loading import load_base_model

    model = load_base_model(ModelConfig(**model_config))
    evaluated, trained = _eval_and_train_logits(model)
    assert torch.isfinite(evaluated).all()
    torch.testing.assert_close(evaluated, trained)


def test_a_4bit_local_model_with_intermediate_352_evaluates_on_cpu(tmp_path: Path) -> None:
    """`shape '[64, 5]' is invalid for input of size 352` before: a model whose MLP width the packer rejects."""
    pytest.importorskip("bitsandbytes")
    from peft_framework.models.loading import load_base_model
    from peft_framework.models.tiny import tiny_llama

    tiny_llama(intermediate_size=352).save_pretrained(tmp_path / "model")
    model = load_base_model(ModelConfig(name_or_path=str(tmp_path / "model"), quantization={"bits": 4}))
    assert model.config.intermediate_size == 352 and model.is_loaded_in_4bit
    evaluated, trained = _eval_and_train_logits(model)
    torch.testing.assert_close(evaluated, trained)
