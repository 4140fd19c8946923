"""Load the base model and its tokenizer: hub id, local directory, or the built-in tiny demo."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from peft_framework.config.schema import BUILTIN_TINY_LLAMA, ModelConfig


def is_builtin(name_or_path: str) -> bool:
    return name_or_path.startswith("builtin:")


def load_tokenizer(model_config: ModelConfig) -> PreTrainedTokenizerBase:
    if model_config.name_or_path == BUILTIN_TINY_LLAMA:
        from peft_framework.models.tiny import tiny_tokenizer

        return tiny_tokenizer()
    tokenizer = AutoTokenizer.from_pretrained(
        model_config.name_or_path,
        revision=model_config.revision,
        trust_remote_code=model_config.trust_remote_code,
    )
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
