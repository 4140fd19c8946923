"""The built-in demo models: a tiny Llama and a tiny Mixture-of-Experts (Qwen3-MoE, `builtin:tiny-moe`), built
deterministically, with a byte-level tokenizer.

It exists so the default pipeline runs offline in minutes on 2 CPU cores. It is not a useful language
model; point `model.name_or_path` at a real model (hub id or local directory) for real work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Qwen3MoeForSequenceClassification,
)

T = TypeVar("T")
TINY_LLAMA_SEED = 1234
# Weight init std. transformers' 0.02 leaves a random 64-wide model's logits so small (|logit| < ~1.5 after
# the final RMSNorm) that no adapter on the frozen blocks can make it confident: held-out loss stalls near
# ln(vocab). At 0.2 the same LoRA brings the demo's held-out loss from ~6.6 to ~1.3 in 48 steps.
TINY_INIT_STD = 0.2

# A minimal chat template (role-tagged turns); `{% generation %}` marks what the model should learn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: 3 special tokens + the 256 byte symbols, no merges. Any text round-trips."""
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=1024
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


TINY_SHARED = dict(  # what every built-in tiny decoder shares: vocabulary ids, heads, norms, init
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    initializer_range=TINY_INIT_STD,
)


def tiny_llama_config(vocab_size: int = 259, **overrides) -> LlamaConfig:
    return LlamaConfig(
        **{**TINY_SHARED, "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 172, **overrides}
    )


def seeded_build(seed: int, build: Callable[[], T]) -> T:
    """`build()` under `seed`, leaving the global RNG untouched: same seed -> same weights, on any machine
    (the tiny models are initialised on CPU in fp32)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return build()


def _seeded(
    config: Any, task: str, num_labels: int, seed: int, classes: tuple[type, type], name: str, init=None
):
    """Build `classes` (causal LM, classifier) from `config` under `seed` (`seeded_build`)."""

    def build() -> Any:
        if task == "sequence_classification":
            config.num_labels = num_labels
            model = classes[1](config)
        else:
            model = classes[0](config)
        if init is not None:
            with torch.no_grad():
                init(model)
        return model

    model = seeded_build(seed, build)
    model.config.name_or_path = name
    return model.eval()


def tiny_llama(task: str = "causal_lm", num_labels: int = 2, seed: int = TINY_LLAMA_SEED, **overrides):
    """Same seed -> same weights, on any machine (initialised on CPU in fp32)."""
    classes = (LlamaForCausalLM, LlamaForSequenceClassification)
    return _seeded(tiny_llama_config(**overrides), task, num_labels, seed, classes, "builtin:tiny-llama")


def tiny_moe_config(vocab_size: int = 259, **overrides) -> Qwen3MoeConfig:
    """A tiny Qwen3-MoE: 8 routed experts per layer, top-2, fused 3-D expert weights (transformers 5)."""
    own = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_experts=8)
    return Qwen3MoeConfig(
        **{
            **TINY_SHARED,
            "vocab_size": vocab_size,
            **own,
            "num_experts_per_tok": 2,
            "head_dim": 16,
            **overrides,
        }
    )


def _random_routers(model: Any) -> None:
    for name, param in model.named_parameters():
        if name.endswith("mlp.gate.weight"):
            param.normal_(0.0, TINY_INIT_STD)


def tiny_moe(task: str = "causal_lm", num_labels: int = 2, seed: int = TINY_LLAMA_SEED, **overrides):
    """`builtin:tiny-moe`: the Mixture-of-Experts demo model, built like `tiny_llama` (same seed, same weights).
    transformers initialises routers at zero (every expert equally likely): they get the same random init as
    the other weights so that routing depends on the token."""
    classes = (Qwen3MoeForCausalLM, Qwen3MoeForSequenceClassification)
    return _seeded(
        tiny_moe_config(**overrides), task, num_labels, seed, classes, "builtin:tiny-moe", _random_routers
    )
