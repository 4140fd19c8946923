"""What the tokenizer IS, by content: its files' hashes (and a hub snapshot's commit), for cache keys.

A prepared dataset depends on the tokenizer's files, not on the name in `model.name_or_path`: a local
model directory whose tokenizer.json was replaced, or a hub branch that moved, must not reuse data
tokenized by the old tokenizer. So the prepare stage hashes the tokenizer's files into the data hash and
records them (and, for a hub id, the commit of the cached snapshot it loaded) in the prepared manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from peft_framework.config.schema import ModelConfig
from peft_framework.io import canonical_json_sha256, file_sha256
from peft_framework.models.hub import hub_snapshot
from peft_framework.paths import resolve

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)
"""Files transformers reads to build a tokenizer (and its chat templates)."""


def tokenizer_files(directory: Path) -> dict[str, str]:
    """{file name: sha256} of the tokenizer files in `directory` (additional_chat_templates/ too)."""
    names = [n for n in TOKENIZER_FILES if (directory / n).is_file()]
    extra = directory / "additional_chat_templates"
    if extra.is_dir():
        names += sorted(p.relative_to(directory).as_posix() for p in extra.glob("*.jinja"))
    return {name: file_sha256(directory / name) for name in names}


def in_memory_sha256(tokenizer: Any) -> str:
    """Hash of a tokenizer built in code (no files): its serialized model, special tokens, chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return canonical_json_sha256(
        {
            "backend": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
            "special_tokens": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
            "chat_template": getattr(tokenizer, "chat_template", None),
        }
    )


def tokenizer_identity(
    model_config: ModelConfig,
    tokenizer: Any,
    root: str | os.PathLike[str] = ".",
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """{source, files, commit, sha256} of the tokenizer `model_config` names (loaded as `tokenizer`):
    source 'local' (a model directory), 'hub' (a cached hub snapshot, with its commit) or 'code' (built
    in code, e.g. builtin:tiny-llama, or a hub tokenizer whose snapshot is not in the cache)."""
    name = model_config.name_or_path
    directory, commit, source = None, None, "code"
    if not name.startswith(("builtin:", "pkg:")):
        # relative to the project root, or (as transformers loads it) to the working directory
        local = next((p for p in (resolve(root, Path(name).expanduser()), Path(name)) if p.is_dir()), None)
        if local is not None:
            directory, source = local, "local"
        else:
            snapshot = hub_snapshot(name, model_config.revision, cache_dir)
            if snapshot is not None:
                (directory, commit), source = snapshot, "hub"
    files = tokenizer_files(directory) if directory is not None else {}
    if not files:  # nothing on disk to hash: hash what was loaded
        directory, commit, source = None, None, "code"
        files = {"<in memory>": in_memory_sha256(tokenizer)}
    return {
        "source": source,
        "files": files,
        "commit": commit,
        "sha256": canonical_json_sha256({"files": files, "commit": commit}),
    }
