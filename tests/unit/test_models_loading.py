"""Base model and tokenizer loading: the built-in demo, local directories through the Auto classes,
classification heads sized from the data's labels, pad tokens, dtype, and errors that name the key."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from peft_framework.config.schema import ModelConfig
from peft_framework.errors import ConfigError
from peft_framework.models.loading import load_base_model, load_tokenizer, resolve_num_labels
from peft_framework.models.tiny import tiny_tokenizer

IDS = torch.tensor([[1, 70, 71, 72, 73, 2]])


def test_builtin_demo_is_deterministic_and_matches_its_tokenizer() -> None:
    config = ModelConfig()
    a, b = load_base_model(config), load_base_model(config)
    assert isinstance(a, LlamaForCausalLM) and not a.training
    with torch.no_grad():
        assert torch.equal(a(IDS).logits, b(IDS).logits)
    tok = load_tokenizer(config)
    assert a.config.vocab_size == len(tok) and a.config.pad_token_id == tok.pad_token_id == 0
    assert tok.decode(tok("héllo wörld")["input_ids"], skip_special_tokens=True) == "héllo wörld"


def test_builtin_classifier_takes_its_labels_from_the_data() -> None:
    config = ModelConfig(task="sequence_classification")
    model = load_base_model(config, label_names=["neg", "neu", "pos"])
    assert isinstance(model, LlamaForSequenceClassification)
    assert model.config.num_labels == 3 and model.score.out_features == 3
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert model(IDS).logits.shape == (1, 3)


def test_num_labels_rules() -> None:
    cls = ModelConfig(task="sequence_classification")
    assert resolve_num_labels(cls, label_names=["a", "b"]) == 2
    assert resolve_num_labels(ModelConfig(task="sequence_classification", num_labels=4)) == 4
    assert resolve_num_labels(ModelConfig(), label_names=["a", "b"]) is None  # causal LM: no head
    with pytest.raises(ConfigError, match=r"model\.num_labels: 3 but the prepared data has 2 labels"):
        resolve_num_labels(ModelConfig(task="sequence_classification", num_labels=3), label_names=["a", "b"])
    with pytest.raises(ConfigError, match=r"model\.num_labels: null and no label names"):
        resolve_num_labels(cls)


def test_unknown_builtin_and_missing_directory_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.name_or_path: 'builtin:huge'.*builtin:tiny-llama"):
        load_base_model(ModelConfig(name_or_path="builtin:huge"))
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match=r"model\.name_or_path: cannot load"):
        load_base_model(ModelConfig(name_or_path=missing))


def _save_llama_without_pad(path: Path) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=259,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    tok = tiny_tokenizer()
    tok.pad_token = None  # like most decoder-only checkpoints
    tok.save_pretrained(path)
    return model


def test_local_directory_through_auto_classes_with_dtype_and_pad_fallback(tmp_path: Path) -> None:
    reference = _save_llama_without_pad(tmp_path / "m")
    causal = load_base_model(ModelConfig(name_or_path=str(tmp_path / "m")))
    with torch.no_grad():
        assert torch.equal(causal(IDS).logits, reference(IDS).logits)
    tok = load_tokenizer(ModelConfig(name_or_path=str(tmp_path / "m")))
    assert tok.pad_token == tok.eos_token  # no pad token in the checkpoint: EOS stands in

    half = load_base_model(ModelConfig(name_or_path=str(tmp_path / "m"), dtype="bfloat16"))
    assert next(half.parameters()).dtype == torch.bfloat16

    cls = load_base_model(
        ModelConfig(name_or_path=str(tmp_path / "m"), task="sequence_classification"), label_names=["a", "b"]
    )
    assert isinstance(cls, LlamaForSequenceClassification)
    assert cls.config.pad_token_id == tok.eos_token_id  # classification pools the last non-pad token
    assert cls.config.label2id == {"a": 0, "b": 1}


def test_builtin_dtype() -> None:
    model = load_base_model(ModelConfig(dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
