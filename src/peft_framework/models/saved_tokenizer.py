"""The tokenizer saved beside an adapter (what training used), with the base model's as the fallback.

Train writes the tokenizer into `train.output_dir`; evaluate, export and the inference API read it back
from there, so a tokenizer changed for training (added tokens, a chat template) is the one they use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft_framework.config.schema import ModelConfig

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json")


def has_tokenizer(directory: str | Path) -> bool:
    """Whether `directory` holds a saved tokenizer."""
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def load_saved_tokenizer(directory: str | Path) -> Any:
    """The tokenizer saved in `directory`, with EOS as its pad token when it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def adapter_tokenizer(model_config: ModelConfig, adapter_dir: str | Path) -> Any:
    """The tokenizer saved with the adapter if there is one, else the base model's."""
    if has_tokenizer(adapter_dir):
        return load_saved_tokenizer(adapter_dir)
    from peft_framework.models.loading import load_tokenizer

    return load_tokenizer(model_config)
