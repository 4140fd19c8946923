"""The tiny models and helpers the adapter tests share: one factory per architecture (sizes are arguments,
so a test that needs a wider or deeper model says so), built deterministically from transformers configs
(no Hub). Importable from any test module (`from tiny_models import ...`): pytest puts tests/ on the path
for tests/conftest.py."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

VOCAB = 100


def tiny_llama(hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(hidden: int = 32, layers: int = 2, dropout: bool = True) -> GPT2LMHeadModel:
    """dropout=False: no dropout of the model's own, so training mode is deterministic."""
    torch.manual_seed(0)
    no_dropout = {} if dropout else {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    cfg = GPT2Config(
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
        **no_dropout,
    )
    return GPT2LMHeadModel(cfg).eval()


def tiny_bert(hidden: int = 32, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg).eval()


FACTORIES = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}
_built: dict[tuple, nn.Module] = {}


def base(kind: str = "llama", **sizes: int) -> nn.Module:
    """A fresh copy of the tiny `kind` model (built once per size, then deep-copied: fast and identical)."""
    key = (kind, *sorted(sizes.items()))
    if key not in _built:
        _built[key] = FACTORIES[kind](**sizes)
    return copy.deepcopy(_built[key])


def random_causal_lm(config) -> nn.Module:
    """A causal LM built from `config` with every tensor drawn from N(0, 0.1), seed 0, in eval mode.
    transformers' init leaves routers and biases at zero; parity tests need every tensor to carry values."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.1)
    return model


def tokens(seed: int = 1, shape: tuple[int, int] = (2, 9)) -> torch.Tensor:
    return torch.randint(3, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor | None = None) -> torch.Tensor:
    return model(input_ids=tokens() if x is None else x).logits


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def randomize_trainables(model: nn.Module, seed: int = 0, *, std: float = 0.1, center: float = 0.0) -> None:
    """Give every trainable tensor (those that start at zero included) random values, so outputs differ."""
    gen = torch.Generator().manual_seed(seed)
    for _, param in sorted(model.named_parameters()):
        if param.requires_grad:
            param.copy_(center + torch.randn(param.shape, generator=gen) * std)
