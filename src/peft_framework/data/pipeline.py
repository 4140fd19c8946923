"""The row pipeline: validate, clean, filter, tokenize, de-duplicate and split, with nothing lost.

Every record that goes in comes out either as a kept `Example` or as a `Rejected` with its reasons, in
input order. The filters run in this order, and a row is rejected at the first stage it fails (all
problems of that stage are listed): parse -> fields and types -> cleaning and empty fields -> labels ->
length in characters -> tokenization and length in tokens -> de-duplication against the rows kept so far.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from peft_framework.config.schema import DataConfig
from peft_framework.data import preference, prompt, vision
from peft_framework.data.clean import clean_text, normalize_label, normalized_key
from peft_framework.data.formatting import Encoded, Formatter
from peft_framework.data.preference import PREFERENCE_KINDS
from peft_framework.data.rows import Reason, Record, Rejected
from peft_framework.data.validate import extract_fields

SPLITS = ("train", "validation", "test")


@dataclass
class Example:
    record: Record
    encoded: Encoded
    split: str


@dataclass
class _Candidate:
    record: Record
    fields: dict[str, Any]
    changed: set[str]


@dataclass
class Result:
    kept: list[Example]
    rejected: list[Rejected]
    read: int
    label_names: list[str] | None
    template: str
    prompt_add_special_tokens: bool
    cleaned: Counter = field(default_factory=Counter)
    columns_seen: Counter = field(default_factory=Counter)

    @property
    def truncated(self) -> int:
        return sum(ex.encoded.truncated for ex in self.kept)

    def rejected_by_reason(self) -> dict[str, int]:
        """Each rejected row counted once, under its first reason: the counts sum to `len(rejected)`."""
        return dict(sorted(Counter(r.reasons[0] for r in self.rejected).items()))

    def reason_counts(self) -> dict[str, int]:
        """Every reason of every rejected row (a row with two reasons counts twice)."""
        return dict(sorted(Counter(reason for r in self.rejected for reason in r.reasons).items()))


def assign_split(key: str, cfg: DataConfig) -> str:
    """Split from a hash of seed + content: a row's split never depends on the other rows."""
    digest = hashlib.sha256(f"{cfg.split.seed}\0{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < cfg.split.test:
        return "test"
    if u < cfg.split.test + cfg.split.validation:
        return "validation"
    return "train"


def _text_values(fields: dict[str, Any], kind: str) -> list[str]:
    if kind == "prompt":
        return prompt.text_values(fields)
    if kind == "vision":
        return vision.text_values(fields)
    if kind in PREFERENCE_KINDS:
        return preference.text_values(fields, kind)
    if kind == "instruction":
        return [fields["instruction"], fields["input"], fields["output"]]
    if kind == "chat":
        return [v for m in fields["messages"] for v in (m["role"], m["content"])]
    if kind == "classification":
        return [fields["text"], fields["label"]]
    return [fields["text"]]


def _n_chars(fields: dict[str, Any], kind: str) -> int:
    if kind == "prompt":
        return prompt.n_chars(fields)
    if kind == "vision":
        return sum(len(vision.message_text(m["content"])) for m in fields["messages"])
    if kind in PREFERENCE_KINDS:
        return preference.n_chars(fields, kind)
    if kind == "instruction":
        return len(fields["instruction"]) + len(fields["input"]) + len(fields["output"])
    if kind == "chat":
        return sum(len(m["content"]) for m in fields["messages"])
    return len(fields["text"])


def _prompt_values(fields: dict[str, Any], kind: str) -> list[str]:
    """The input side of a row: rows sharing it share a split (no test prompt is seen in training)."""
    if kind == "prompt":
        return prompt.prompt_values(fields)
    if kind in PREFERENCE_KINDS:
        return preference.prompt_values(fields)
    if kind == "instruction":
        return [fields["instruction"], fields["input"]]
    if kind == "vision":
        return vision.prompt_values(fields)
    if kind == "chat":
        return [v for m in fields["messages"][:-1] for v in (m["role"], m["content"])]
    return [fields["text"]]


def _clean_fields(
    fields: dict[str, Any], cfg: DataConfig
) -> tuple[dict[str, Any], set[str], list[tuple[str, str]]]:
    """Cleaned fields, the cleaning steps that changed something, and empty-field problems."""
    if cfg.kind in PREFERENCE_KINDS:
        return preference.clean(fields, cfg)
    if cfg.kind == "prompt":
        return prompt.clean(fields, cfg)
    changed: set[str] = set()
    problems: list[tuple[str, str]] = []

    def clean(value: str) -> str:
        new, steps = clean_text(value, cfg.clean)
        changed.update(steps)
        return new

    out = dict(fields)
    if cfg.kind == "chat":
        out["messages"] = [{"role": m["role"], "content": clean(m["content"])} for m in fields["messages"]]
        if cfg.clean.drop_empty:
            for i, m in enumerate(out["messages"]):
                if not m["content"].strip() and m["role"] != "system":
                    problems.append((Reason.EMPTY_FIELD, f"message {i} ({m['role']}) is empty"))
    else:
        for name in ("instruction", "input", "output", "text"):
            if name in out:
                out[name] = clean(out[name])
        required = {"instruction": ("instruction", "output")}.get(cfg.kind, ("text",))
        if cfg.clean.drop_empty:
            for name in required:
                if not out[name].strip():
                    problems.append((Reason.EMPTY_FIELD, f"field {name!r} is empty after cleaning"))
    if cfg.kind == "classification":
        label = normalize_label(fields["label"], cfg.clean)
        if label != fields["label"]:
            changed.add("labels_normalized")
        out["label"] = label
        if not label:
            problems.append((Reason.EMPTY_FIELD, "field 'label' is empty"))
    return out, changed, problems


def allowed_label_set(cfg: DataConfig) -> set[str] | None:
    if cfg.validate_.labels is None:
        return None
    return {normalize_label(x, cfg.clean) for x in cfg.validate_.labels}


def screen(
    rec: Record, cfg: DataConfig, allowed_labels: set[str] | None
) -> tuple[_Candidate | None, list[tuple[str, str]]]:
    """The checks that need no tokenizer: parse, fields and types, cleaning, labels, length in characters.

    Returns the cleaned candidate, or None and the problems of the first stage the row fails."""
    if rec.error is not None:
        return None, [rec.error]
    if cfg.kind == "vision":  # data/vision.py: parts, images opened and verified
        if not isinstance(rec.data, dict):
            return None, [(Reason.NOT_AN_OBJECT, "a row must be a JSON object")]
        base_dir = Path(rec.base_dir) if rec.base_dir else None
        fields, problems, changed = vision.vision_fields(rec.data, cfg, base_dir)
        rec.data = vision.json_safe(rec.data)  # image bytes: described, not copied into reports
        if fields is None:
            return None, problems
        problems = vision.clean_messages(fields["messages"], cfg, changed)
    else:
        fields, problems = extract_fields(rec.data, cfg)
        if fields is None:
            return None, problems
        fields, changed, problems = _clean_fields(fields, cfg)
    if problems:
        return None, problems
    if cfg.kind == "classification" and allowed_labels is not None and fields["label"] not in allowed_labels:
        detail = f"label {fields['label']!r} is not allowed; allowed: {sorted(allowed_labels)}"
        return None, [(Reason.INVALID_LABEL, detail)]
    n_chars = _n_chars(fields, cfg.kind)
    if n_chars < cfg.clean.min_chars:
        return None, [
            (Reason.TOO_SHORT_CHARS, f"{n_chars} characters, data.clean.min_chars is {cfg.clean.min_chars}")
        ]
    if cfg.clean.max_chars is not None and n_chars > cfg.clean.max_chars:
        return None, [
            (Reason.TOO_LONG_CHARS, f"{n_chars} characters, data.clean.max_chars is {cfg.clean.max_chars}")
        ]
    return _Candidate(rec, fields, changed), []


def label_names_for(cfg: DataConfig, allowed_labels: set[str] | None, seen: set[str]) -> list[str] | None:
    """Class names of classification data: the allowed set, or else every label seen (sorted)."""
    if cfg.kind != "classification":
        return None
    return sorted(allowed_labels if allowed_labels is not None else seen)


def token_problem(enc: Encoded, cfg: DataConfig, formatter: Formatter) -> tuple[str, str] | None:
    """The checks on the tokenized row: formatted at all, length in tokens, a response token left to train on."""
    if enc.problem is not None:
        return (enc.problem.reason, enc.problem.detail)
    if enc.n_tokens < cfg.clean.min_tokens:
        return (
            Reason.TOO_FEW_TOKENS,
            f"{enc.n_tokens} tokens, data.clean.min_tokens is {cfg.clean.min_tokens}",
        )
    if cfg.clean.max_tokens is not None and enc.n_tokens > cfg.clean.max_tokens:
        return (
            Reason.TOO_MANY_TOKENS,
            f"{enc.n_tokens} tokens, data.clean.max_tokens is {cfg.clean.max_tokens}",
        )
    if cfg.kind == "vision" and enc.truncated:
        return (
            Reason.TOO_MANY_TOKENS,
            f"{enc.n_tokens} tokens, data.max_seq_len is {cfg.max_seq_len}: image rows are never truncated "
            "(an image's tokens must stay whole)",
        )
    problem = formatter.no_response_problem(enc)
    return None if problem is None else (problem.reason, problem.detail)


def _digest(values: list[str]) -> bytes:
    # ASCII JSON is an injective encoding of the list (lone surrogates included); 128 bits: no collisions
    return hashlib.blake2b(json.dumps(values).encode("ascii"), digest_size=16).digest()


def row_keys(fields: dict[str, Any], cfg: DataConfig) -> tuple[bytes, bytes, str]:
    """Exact and normalized de-duplication digests of a row, and its split."""
    values = _text_values(fields, cfg.kind)
    split_key = json.dumps([normalized_key(v) for v in _prompt_values(fields, cfg.kind)])
    return _digest(values), _digest([normalized_key(v) for v in values]), assign_split(split_key, cfg)


class Deduper:
    """The rows kept so far, as digests only: each maps to a handle (an int) the caller resolves to a place.

    With `dedup: normalized` one map suffices: kept rows have distinct normalized keys, so an exact copy
    of a kept row is the row its normalized key maps to, with the same exact digest."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._exact: dict[bytes, int] = {}
        self._normalized: dict[bytes, tuple[bytes, int]] = {}

    def check(self, exact: bytes, normalized: bytes) -> tuple[str, int] | None:
        """(reason, handle of the earlier row) when the row repeats a kept row; None otherwise."""
        if self.mode == "exact" and exact in self._exact:
            return Reason.DUPLICATE_EXACT, self._exact[exact]
        if self.mode == "normalized" and normalized in self._normalized:
            first_exact, handle = self._normalized[normalized]
            return (Reason.DUPLICATE_EXACT if first_exact == exact else Reason.DUPLICATE_NORMALIZED), handle
        return None

    def add(self, exact: bytes, normalized: bytes, handle: int) -> None:
        if self.mode == "exact":
            self._exact[exact] = handle
        elif self.mode == "normalized":
            self._normalized[normalized] = (exact, handle)


def duplicate_detail(reason: str, where: str) -> str:
    if reason == Reason.DUPLICATE_EXACT:
        return f"duplicate of {where}"
    return f"same text after normalization as {where}"


def process(
    records: Iterable[Record],
    cfg: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int = 512,
    prompt_needs: prompt.PromptNeeds | None = None,
) -> Result:
    """Run every record through the pipeline in memory (small data; `prepare` streams through `stream`).
    `prompt_needs`: data.kind prompt, what the run's rewards and completion length ask of each row."""
    rejected: list[tuple[int, Rejected]] = []  # (position in input order, rejection)
    candidates: list[tuple[int, _Candidate]] = []
    columns_seen: Counter = Counter()
    allowed_labels = allowed_label_set(cfg)
    read = 0
    for pos, rec in enumerate(records):
        read += 1
        if rec.error is None and isinstance(rec.data, dict):
            columns_seen.update(str(k) for k in rec.data)
        cand, problems = screen(rec, cfg, allowed_labels)
        if cand is None:
            rejected.append((pos, Rejected(rec, [r for r, _ in problems], [d for _, d in problems])))
        else:
            candidates.append((pos, cand))

    seen = {c.fields["label"] for _, c in candidates} if cfg.kind == "classification" else set()
    label_names = label_names_for(cfg, allowed_labels, seen)
    formatter = Formatter(cfg, tokenizer, label_names or ())
    if cfg.kind == "prompt":
        types: dict[str, Counter] = {}
        for _, cand in candidates:
            prompt.observe(types, cand.fields)
        formatter.prompt_needs, formatter.column_types = prompt_needs, prompt.column_types(types)

    kept: list[tuple[int, Example]] = []
    deduper = Deduper(cfg.clean.dedup)
    cleaned: Counter = Counter()
    for start in range(0, len(candidates), batch_size):
        batch = candidates[start : start + batch_size]
        encoded = formatter.encode_batch([c.fields for _, c in batch])
        for (pos, cand), enc in zip(batch, encoded):
            rec = cand.record
            problem = token_problem(enc, cfg, formatter)
            if problem is not None:
                rejected.append((pos, Rejected(rec, [problem[0]], [problem[1]])))
                continue
            exact, normalized, split = row_keys(cand.fields, cfg)
            dup = deduper.check(exact, normalized)
            if dup is not None:
                detail = duplicate_detail(dup[0], kept[dup[1]][1].record.where)
                rejected.append((pos, Rejected(rec, [dup[0]], [detail])))
                continue
            deduper.add(exact, normalized, len(kept))
            kept.append((pos, Example(rec, enc, split)))
            cleaned.update(cand.changed)

    rejected.sort(key=lambda item: item[0])
    return Result(
        kept=[ex for _, ex in kept],
        rejected=[rej for _, rej in rejected],
        read=read,
        label_names=label_names,
        template=formatter.template,
        prompt_add_special_tokens=formatter.prompt_add_special_tokens,
        cleaned=cleaned,
        columns_seen=columns_seen,
    )
