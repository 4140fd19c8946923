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
from typing import Any

from transformers import PreTrainedTokenizerBase

from peft_framework.config.schema import DataConfig
from peft_framework.data.clean import clean_text, normalize_label, normalized_key
from peft_framework.data.formatting import Encoded, Formatter
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
    if kind == "instruction":
        return [fields["instruction"], fields["input"], fields["output"]]
    if kind == "chat":
        return [v for m in fields["messages"] for v in (m["role"], m["content"])]
    if kind == "classification":
        return [fields["text"], fields["label"]]
    return [fields["text"]]


def _n_chars(fields: dict[str, Any], kind: str) -> int:
    if kind == "instruction":
        return len(fields["instruction"]) + len(fields["input"]) + len(fields["output"])
    if kind == "chat":
        return sum(len(m["content"]) for m in fields["messages"])
    return len(fields["text"])


def _prompt_values(fields: dict[str, Any], kind: str) -> list[str]:
    """The input side of a row: rows sharing it share a split (no test prompt is seen in training)."""
    if kind == "instruction":
        return [fields["instruction"], fields["input"]]
    if kind == "chat":
        return [v for m in fields["messages"][:-1] for v in (m["role"], m["content"])]
    return [fields["text"]]


def _clean_fields(
    fields: dict[str, Any], cfg: DataConfig
) -> tuple[dict[str, Any], set[str], list[tuple[str, str]]]:
    """Cleaned fields, the cleaning steps that changed something, and empty-field problems."""
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


def process(
    records: Iterable[Record], cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, batch_size: int = 512
) -> Result:
    """Run every record through the pipeline; see the module docstring for the order of the filters."""
    rejected: list[tuple[int, Rejected]] = []  # (position in input order, rejection)
    candidates: list[tuple[int, _Candidate]] = []
    columns_seen: Counter = Counter()
    allowed_labels = (
        {normalize_label(x, cfg.clean) for x in cfg.validate_.labels}
        if cfg.validate_.labels is not None
        else None
    )
    read = 0
    for pos, rec in enumerate(records):
        read += 1

        def reject(reasons: list[tuple[str, str]], rec: Record = rec, pos: int = pos) -> None:
            rejected.append((pos, Rejected(rec, [r for r, _ in reasons], [d for _, d in reasons])))

        if rec.error is not None:
            reject([rec.error])
            continue
        if isinstance(rec.data, dict):
            columns_seen.update(str(k) for k in rec.data)
        fields, problems = extract_fields(rec.data, cfg)
        if fields is None:
            reject(problems)
            continue
        fields, changed, problems = _clean_fields(fields, cfg)
        if problems:
            reject(problems)
            continue
        if (
            cfg.kind == "classification"
            and allowed_labels is not None
            and fields["label"] not in allowed_labels
        ):
            reject(
                [
                    (
                        Reason.INVALID_LABEL,
                        f"label {fields['label']!r} is not allowed; allowed: {sorted(allowed_labels)}",
                    )
                ]
            )
            continue
        n_chars = _n_chars(fields, cfg.kind)
        if n_chars < cfg.clean.min_chars:
            reject(
                [
                    (
                        Reason.TOO_SHORT_CHARS,
                        f"{n_chars} characters, data.clean.min_chars is {cfg.clean.min_chars}",
                    )
                ]
            )
            continue
        if cfg.clean.max_chars is not None and n_chars > cfg.clean.max_chars:
            reject(
                [
                    (
                        Reason.TOO_LONG_CHARS,
                        f"{n_chars} characters, data.clean.max_chars is {cfg.clean.max_chars}",
                    )
                ]
            )
            continue
        candidates.append((pos, _Candidate(rec, fields, changed)))

    label_names = None
    if cfg.kind == "classification":
        seen = {c.fields["label"] for _, c in candidates}
        label_names = sorted(allowed_labels if allowed_labels is not None else seen)
    formatter = Formatter(cfg, tokenizer, label_names or ())

    kept: list[tuple[int, Example]] = []
    exact_seen: dict[str, Record] = {}
    normalized_seen: dict[str, Record] = {}
    cleaned: Counter = Counter()
    for start in range(0, len(candidates), batch_size):
        batch = candidates[start : start + batch_size]
        encoded = formatter.encode_batch([c.fields for _, c in batch])
        for (pos, cand), enc in zip(batch, encoded):
            rec = cand.record
            if enc.n_tokens < cfg.clean.min_tokens:
                detail = f"{enc.n_tokens} tokens, data.clean.min_tokens is {cfg.clean.min_tokens}"
                rejected.append((pos, Rejected(rec, [Reason.TOO_FEW_TOKENS], [detail])))
                continue
            if cfg.clean.max_tokens is not None and enc.n_tokens > cfg.clean.max_tokens:
                detail = f"{enc.n_tokens} tokens, data.clean.max_tokens is {cfg.clean.max_tokens}"
                rejected.append((pos, Rejected(rec, [Reason.TOO_MANY_TOKENS], [detail])))
                continue
            problem = formatter.no_response_problem(enc)
            if problem is not None:
                rejected.append((pos, Rejected(rec, [problem.reason], [problem.detail])))
                continue
            values = _text_values(cand.fields, cfg.kind)
            exact = json.dumps(values, ensure_ascii=False)
            normalized = json.dumps([normalized_key(v) for v in values], ensure_ascii=False)
            if cfg.clean.dedup != "none" and exact in exact_seen:
                detail = f"duplicate of {exact_seen[exact].where}"
                rejected.append((pos, Rejected(rec, [Reason.DUPLICATE_EXACT], [detail])))
                continue
            if cfg.clean.dedup == "normalized" and normalized in normalized_seen:
                detail = f"same text after normalization as {normalized_seen[normalized].where}"
                rejected.append((pos, Rejected(rec, [Reason.DUPLICATE_NORMALIZED], [detail])))
                continue
            exact_seen.setdefault(exact, rec)
            normalized_seen.setdefault(normalized, rec)
            split_key = json.dumps([normalized_key(v) for v in _prompt_values(cand.fields, cfg.kind)])
            kept.append((pos, Example(rec, enc, assign_split(split_key, cfg))))
            cleaned.update(cand.changed)

    kept.sort(key=lambda item: item[0])
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
