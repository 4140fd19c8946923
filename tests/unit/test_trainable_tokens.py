"""Trainable token rows (`adapter.trainable_token_indices`, filled by `model.add_tokens`) against HuggingFace
peft's trainable tokens (the oracle, test-only): same rows -> same logits, same saved tensors and config,
checkpoints loading both ways, merge/unmerge/unload; tied (GPT-2, a tied Llama) and untied (Llama) heads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import peft
import pytest
import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from peft_framework.adapters.checkpoint import load_adapter, save_adapter
from peft_framework.adapters.lora import LoraConfig, LoraMethod
from peft_framework.adapters.trainable_tokens import TrainableTokens
from peft_framework.errors import AdapterError
from peft_framework.models.added_tokens import grow_embeddings, grow_rows, token_rows_setting
from tiny_models import VOCAB, logits, n_trainable, randomize_trainables
from tiny_models import base as tiny_base

TOL = 1e-5
NEW = [VOCAB, VOCAB + 1]  # two added tokens: rows 100 and 101 of the grown embedding


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def grown(kind: str) -> torch.nn.Module:
    """The tiny `kind` model with two rows added (tied_llama: a Llama whose lm_head shares the embedding)."""
    if kind == "tied_llama":
        untied = tiny_base("llama")
        config = untied.config.__class__(**{**untied.config.to_dict(), "tie_word_embeddings": True})
        torch.manual_seed(0)
        model = type(untied)(config).eval()
        assert model.lm_head.weight is model.model.embed_tokens.weight
    else:
        model = tiny_base(kind)
    grow_embeddings(model, VOCAB + len(NEW))
    return model


def x_with_new_tokens() -> torch.Tensor:
    x = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    x[0, 2], x[1, 5], x[1, 7] = NEW[0], NEW[1], NEW[0]
    return x


TARGETS = {"llama": ["q_proj", "v_proj"], "tied_llama": ["q_proj"], "gpt2": ["c_attn"]}


def pair(kind: str) -> tuple[torch.nn.Module, torch.nn.Module, LoraConfig]:
    """(peft model, our model) from the same grown base; peft's random rows and LoRA copied into ours."""
    probe = grown(kind)
    cfg = LoraConfig(
        r=2, alpha=4, target_modules=TARGETS[kind], trainable_token_indices=token_rows_setting(probe, NEW)
    )
    ours = grown(kind)
    LoraMethod().inject(ours, cfg)
    theirs = peft.get_peft_model(
        grown(kind),
        peft.LoraConfig(
            r=2,
            lora_alpha=4,
            target_modules=TARGETS[kind],
            trainable_token_indices=cfg.trainable_token_indices,
        ),
    )
    randomize_trainables(theirs)
    LoraMethod().load_adapter_state_dict(ours, get_peft_model_state_dict(theirs))
    return theirs.eval(), ours.eval(), cfg


@pytest.mark.parametrize("kind", ["llama", "tied_llama", "gpt2"])
def test_rows_and_logits_match_peft(kind: str) -> None:
    theirs, ours, cfg = pair(kind)
    tied = kind != "llama"
    assert isinstance(cfg.trainable_token_indices, list) == tied  # untied: {embed: ids, lm_head: ids}
    assert n_trainable(ours) == n_trainable(theirs)
    assert set(LoraMethod().adapter_state_dict(ours)) == set(get_peft_model_state_dict(theirs))
    x = x_with_new_tokens()
    diff = (logits(ours, x) - logits(theirs, x)).abs().max().item()
    assert diff <= TOL, f"{kind}: max abs diff {diff}"
    assert (logits(ours, x) - logits(grown(kind), x)).abs().max().item() > 1e-3  # the rows matter


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_checkpoints_load_both_ways(kind: str, tmp_path: Path) -> None:
    theirs, ours, cfg = pair(kind)
    x = x_with_new_tokens()
    want = logits(theirs, x)
    save_adapter(
        ours, LoraMethod(), cfg, tmp_path / "ours", base_model_name_or_path=None, task_type="causal_lm"
    )
    saved = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert saved["trainable_token_indices"] == cfg.trainable_token_indices
    loaded_by_peft = peft.PeftModel.from_pretrained(grown(kind), tmp_path / "ours").eval()
    assert (logits(loaded_by_peft, x) - want).abs().max().item() <= TOL

    theirs.save_pretrained(tmp_path / "peft")
    model = grown(kind)
    _, config = load_adapter(model, tmp_path / "peft")
    assert config.trainable_token_indices == cfg.trainable_token_indices
    assert (logits(model.eval(), x) - want).abs().max().item() <= TOL


def test_peft_s_saved_embedding_matrices_load_into_the_base(tmp_path: Path) -> None:
    """peft saves the whole resized matrices beside the rows when the vocabulary grew; they are the base's."""
    theirs, _, _ = pair("llama")
    theirs.save_pretrained(tmp_path)
    state = load_file(tmp_path / "adapter_model.safetensors")
    other = grown("llama")  # new rows initialised differently from the base peft trained on
    with torch.no_grad():
        other.model.embed_tokens.weight[:VOCAB] += 1.0
    for layer, module in (
        ("model.embed_tokens", theirs.base_model.model.model.embed_tokens),
        ("lm_head", theirs.base_model.model.lm_head),
    ):
        state[f"base_model.model.{layer}.token_adapter.base_layer.weight"] = (
            module.token_adapter.base_layer.weight.detach().clone()
        )
    save_file(state, tmp_path / "adapter_model.safetensors", metadata={"format": "pt"})
    load_adapter(other, tmp_path)
    x = x_with_new_tokens()
    assert (logits(other.eval(), x) - logits(theirs, x)).abs().max().item() <= TOL


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_merge_unmerge_and_unload(kind: str) -> None:
    theirs, ours, _ = pair(kind)
    x = x_with_new_tokens()
    before = {k: v.clone() for k, v in grown(kind).state_dict().items()}
    want = logits(ours, x)
    method = LoraMethod()
    method.merge(ours)
    assert (logits(ours, x) - want).abs().max().item() <= TOL
    method.unmerge(ours)
    assert (logits(ours, x) - want).abs().max().item() <= TOL
    method.merge(ours)
    merged = method.unload(ours)
    assert not any(isinstance(m, TrainableTokens) for m in merged.modules())
    assert (logits(merged, x) - want).abs().max().item() <= TOL
    emb = merged.get_input_embeddings().weight
    assert torch.equal(
        emb[:VOCAB],
        before["model.embed_tokens.weight" if kind == "llama" else "transformer.wte.weight"][:VOCAB],
    )


def test_only_the_rows_and_lora_train_and_gradients_reach_the_rows() -> None:
    _, ours, _ = pair("llama")
    ours.train()
    out = ours(input_ids=x_with_new_tokens(), labels=x_with_new_tokens())
    out.loss.backward()
    trained = {n for n, p in ours.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "trainable_tokens_delta" in n for n in trained)
    deltas = [p for n, p in ours.named_parameters() if "trainable_tokens_delta" in n]
    assert len(deltas) == 2 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in deltas)
    assert ours.get_input_embeddings().base_layer.weight.grad is None


def test_grown_rows_are_the_mean_and_the_old_rows_are_kept() -> None:
    model = tiny_base("llama")
    old_in, old_out = model.model.embed_tokens.weight.clone(), model.lm_head.weight.clone()
    grow_embeddings(model, VOCAB + 3)
    assert model.config.vocab_size == VOCAB + 3
    for new, old in ((model.model.embed_tokens.weight, old_in), (model.lm_head.weight, old_out)):
        assert torch.equal(new[:VOCAB], old)
        assert torch.allclose(new[VOCAB:], old.mean(0).expand(3, -1))
    assert torch.equal(grow_rows(old_in, VOCAB), old_in)  # enough rows already: unchanged


def test_indices_outside_the_embedding_and_unknown_layers_are_errors() -> None:
    with pytest.raises(AdapterError, match=r"not rows of the 100-row embedding.*model.add_tokens"):
        LoraMethod().inject(
            tiny_base("llama"), LoraConfig(target_modules=["q_proj"], trainable_token_indices=[100])
        )
    with pytest.raises(AdapterError, match=r"'embeddings' matches no module.*'embed_tokens' or 'lm_head'"):
        LoraMethod().inject(
            tiny_base("llama"),
            LoraConfig(target_modules=["q_proj"], trainable_token_indices={"embeddings": [1]}),
        )
