"""`data.chat_template`: which chat template formats the data, and the tokenizer that carries it.

    text = resolve_chat_template(config.data, root)        # None: the tokenizer's own
    use_chat_template(tokenizer, text, "data.chat_template: 'chatml'")

The value is null (the tokenizer's own template), a name shipped in `chat_templates/` (chatml, llama-3,
mistral, alpaca), or a path to a .jinja file relative to the project root. Prepare sets the text on the
tokenizer it formats with and records it in the prepared manifest; train takes it from that manifest
(after checking the config still names the same text) and saves it with the adapter's tokenizer, which
evaluate and export read back, so every stage uses exactly the template the data was formatted with.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from peft_framework.config.data_schema import CHAT_TEMPLATES
from peft_framework.config.schema import DataConfig
from peft_framework.errors import ConfigError, DataError
from peft_framework.io import canonical_json_sha256
from peft_framework.paths import resolve

TEMPLATES_DIR = Path(__file__).parent / "chat_templates"

# Literals like <|im_start|> are special tokens by the convention of ChatML, Llama 3, Phi, Qwen, ...:
# a template that writes one needs the tokenizer to have it as ONE token, or the model sees it as text.
_SPECIAL_LITERAL = re.compile(r"<\|[A-Za-z0-9_.\-]+\|>")
_JINJA_COMMENT = re.compile(r"{#.*?#}", re.DOTALL)

_SAMPLE = [
    {"role": "system", "content": "s"},
    {"role": "user", "content": "u"},
    {"role": "assistant", "content": "a"},
]


def _key(dc: DataConfig) -> str:
    return f"data.chat_template: {dc.chat_template!r}"


def shipped_template_path(name: str) -> Path:
    return TEMPLATES_DIR / f"{name}.jinja"


def resolve_chat_template(dc: DataConfig, root: str | os.PathLike[str] = ".") -> str | None:
    """The template text `data.chat_template` names (None when null: the tokenizer's own is used)."""
    value = dc.chat_template
    if value is None:
        return None
    if value in CHAT_TEMPLATES:
        path = shipped_template_path(value)
    else:
        path = resolve(root, value)
        if not path.is_file():
            raise ConfigError(
                "invalid config",
                [
                    f"{_key(dc)}: no such file ({path.resolve()}; relative paths are resolved against the project root); "
                    "allowed: null, a shipped template name, or a path to a .jinja file"
                ],
            )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("invalid config", [f"{_key(dc)}: cannot read {path}: {exc}"]) from exc
    if not text.strip():
        raise ConfigError("invalid config", [f"{_key(dc)}: {path} is empty"])
    return text


def required_tokens(template: str) -> list[str]:
    """The special-token literals (`<|...|>`) the template writes, in order of first use (comments aside)."""
    return list(dict.fromkeys(_SPECIAL_LITERAL.findall(_JINJA_COMMENT.sub("", template))))


def missing_tokens(tokenizer: Any, template: str) -> list[str]:
    """Required tokens that are not single tokens of `tokenizer` (they would be split into pieces)."""
    vocab = tokenizer.get_vocab()
    return [tok for tok in required_tokens(template) if tok not in vocab]


def use_chat_template(tokenizer: Any, template: str, key: str) -> None:
    """Set `template` as the tokenizer's chat template, after checking that the tokenizer has every special
    token it writes and that it renders a conversation. `key` names the setting in error messages."""
    lacking = missing_tokens(tokenizer, template)
    if lacking:
        raise ConfigError(
            "invalid config",
            [
                f"{key}: the template needs tokens the tokenizer of model.name_or_path lacks: "
                f"{', '.join(lacking)} (they would be split into pieces of text); allowed: model.add_tokens: "
                f"[{', '.join(repr(t) for t in lacking)}] (adds them, and trains their embeddings with a LoRA "
                "adapter), a template whose special tokens the tokenizer has (data.chat_template: null uses the "
                "tokenizer's own), or a model whose tokenizer has them"
            ],
        )
    previous = getattr(tokenizer, "chat_template", None)
    tokenizer.chat_template = template
    from peft_framework.data.render_bounds import row_time_limit

    try:
        with row_time_limit():  # a template that loops on every conversation stops here, not in prepare
            tokenizer.apply_chat_template(_SAMPLE, tokenize=False, add_generation_prompt=False)
    except Exception as exc:  # noqa: BLE001 - jinja syntax/runtime errors of the user's template
        tokenizer.chat_template = previous
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        raise ConfigError(
            "invalid config", [f"{key}: the template does not render a conversation ({detail})"]
        ) from exc


def template_sha256(template: str | None) -> str | None:
    return None if template is None else canonical_json_sha256({"chat_template": template})


def apply_data_chat_template(tokenizer: Any, dc: DataConfig, root: str | os.PathLike[str] = ".") -> None:
    """Prepare: put `data.chat_template` (if set) on the tokenizer that formats the data."""
    text = resolve_chat_template(dc, root)
    if text is not None:
        use_chat_template(tokenizer, text, _key(dc))


def apply_prepared_chat_template(
    tokenizer: Any, dc: DataConfig, manifest: dict[str, Any], root: str | os.PathLike[str] = "."
) -> None:
    """Train: give the tokenizer (saved with the adapter) the chat template the prepared data was formatted
    with. DataError when `data.chat_template` now names a different text (e.g. the .jinja file was edited
    after prepare): the prepared data is stale."""
    fmt = manifest.get("format") or {}
    recorded = fmt.get("chat_template")
    if "chat_template_sha256" in fmt:  # manifests from before data.chat_template lack it
        own = getattr(tokenizer, "chat_template", None)
        current = resolve_chat_template(dc, root) if dc.chat_template is not None else own
        if recorded is not None and template_sha256(current) != fmt["chat_template_sha256"]:
            raise DataError(
                f"{_key(dc)}: the chat template differs from the one the prepared data in {dc.output_dir!r} "
                "was formatted with (the file or the tokenizer changed, or the data was prepared with another "
                "setting); run `peft-framework prepare` again (under DVC: `dvc repro -f prepare`, or list "
                "the template file in the prepare stage's deps)"
            )
    if recorded is not None and recorded != getattr(tokenizer, "chat_template", None):
        use_chat_template(tokenizer, recorded, f"{dc.output_dir}/manifest.json format.chat_template")
