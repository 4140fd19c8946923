"""Text cleaning (each step switchable in `data.clean`) and the normalized key used for de-duplication."""

from __future__ import annotations

import re
import unicodedata

from peft_framework.config.schema import CleanConfig

# Invisible format characters that only get in the way (zero-width space, word joiner, BOM, soft hyphen).
# Zero-width (non-)joiners are kept: they change the rendering of some scripts.
_INVISIBLE = frozenset("\u200b\u2060\ufeff\u00ad")
_KEEP_CONTROL = frozenset("\t\n")
_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85\x0b\x0c]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def _char_class(chars: list[str]) -> re.Pattern[str]:
    return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")


# One regex per character class instead of a Python loop over characters (the hot path of prepare). Control
# (Cc) and space separator (Zs) characters all lie in the Basic Multilingual Plane.
_BMP = [chr(i) for i in range(0x10000) if not 0xD800 <= i <= 0xDFFF]
_CONTROL = _char_class(
    [c for c in _BMP if unicodedata.category(c) == "Cc" and c not in _KEEP_CONTROL] + sorted(_INVISIBLE)
)
_SPACE = _char_class([c for c in _BMP if unicodedata.category(c) == "Zs"])
del _BMP


def _normalize_whitespace(text: str) -> str:
    text = _NEWLINES.sub("\n", text)
    text = _SPACE.sub(" ", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _MANY_BLANK_LINES.sub("\n\n", text)
    return text.strip()


def clean_text(text: str, cfg: CleanConfig) -> tuple[str, set[str]]:
    """Return the cleaned text and the names of the steps that changed it."""
    changed: set[str] = set()
    if cfg.unicode_normalization != "none":
        new = unicodedata.normalize(cfg.unicode_normalization, text)
        if new != text:
            changed.add("unicode_normalized")
        text = new
    if cfg.remove_control_chars:
        new = _NEWLINES.sub("\n", text)  # a lone CR is a line break, not a character to drop
        new = _CONTROL.sub("", new)
        if new != text:
            changed.add("control_chars_removed")
        text = new
    if cfg.normalize_whitespace:
        new = _normalize_whitespace(text)
        if new != text:
            changed.add("whitespace_normalized")
        text = new
    return text, changed


def normalized_key(text: str) -> str:
    """Text as compared for near-duplicates: NFKC, case-folded, invisible characters dropped,
    whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _CONTROL.sub("", text)
    return " ".join(text.split())


def normalize_label(label: str, cfg: CleanConfig) -> str:
    """Label as compared with the allowed set: cleaned, case-normalized, then mapped through the aliases."""
    label = " ".join(unicodedata.normalize("NFKC", label).split())
    label = _case(label, cfg.label_case)
    aliases = {_case(" ".join(k.split()), cfg.label_case): v for k, v in cfg.label_aliases.items()}
    if label in aliases:
        label = _case(" ".join(aliases[label].split()), cfg.label_case)
    return label


def _case(text: str, mode: str) -> str:
    if mode == "lower":
        return text.lower()
    if mode == "upper":
        return text.upper()
    return text
