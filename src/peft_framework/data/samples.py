"""Deterministic sample data for the default pipeline, with realistic defects of every kind.

`write_samples()` writes JSON Lines files (about 130 KB together); the two preference files are described
in `sample_preferences.py`, the GRPO prompts (`prompts.jsonl`) in `sample_prompts.py`:

- `instructions.jsonl`: short instruction tasks a tiny model can learn (uppercase a text, reverse the
  word order, add two numbers, count words, name a country's capital), plus defective rows: invalid
  JSON, invalid UTF-8, lone surrogate escapes, non-object rows, missing fields, wrong types, empty
  outputs, exact / normalized / NFKC duplicates, control characters, odd whitespace, decomposed
  Unicode, overlong rows, blank lines and a byte order mark.
- `classification.jsonl`: short product/experience reviews labelled positive/negative (separable with
  all-MiniLM-L6-v2 embeddings), with label case variants and aliases, invalid labels and the usual defects.

The return value lists, per file, what `prepare` must report for it under the matching data config
(`DataConfig()` for the instructions, `CLASSIFICATION_DATA` for the classification file); the tests
check that it does.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

from peft_framework.data.clean import normalized_key
from peft_framework.data.sample_preferences import (
    preference_lines,
    preference_sft_lines,
    unpaired_preference_lines,
)
from peft_framework.data.sample_prompts import prompt_lines, prompt_sft_lines
from peft_framework.data.sample_vocab import (
    ADD,
    CAPITAL,
    CAPITALS,
    COUNT,
    INTENSIFIERS,
    NEGATIVE,
    POSITIVE,
    REVERSE,
    REVIEW_TEMPLATES,
    SUBJECTS,
    UPPER,
    WORDS,
)
from peft_framework.errors import UserError

SEED = 20240611

# The data section of a config that prepares `classification.jsonl` (used by the classification preset).
CLASSIFICATION_LABELS = ["negative", "positive"]
CLASSIFICATION_ALIASES = {"pos": "positive", "neg": "negative", "good": "positive", "bad": "negative"}
CLASSIFICATION_DATA: dict[str, Any] = {
    "source": "data/raw/classification.jsonl",
    "kind": "classification",
    "max_seq_len": 64,
    "clean": {"label_aliases": CLASSIFICATION_ALIASES},
    "validate": {"labels": CLASSIFICATION_LABELS},
}


def _row(instruction: str, input_text: str, output: str) -> dict[str, str]:
    row = {"instruction": instruction}
    if input_text:
        row["input"] = input_text
    row["output"] = output
    return row


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _key(*values: str) -> str:
    return json.dumps([normalized_key(v) for v in values])


def _good_instructions(rng: random.Random) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(row: dict[str, str]) -> bool:
        key = _key(row["instruction"], row.get("input", ""), row["output"])
        if key in seen:
            return False
        seen.add(key)
        rows.append(row)
        return True

    for country, capital in CAPITALS.items():
        add(_row(CAPITAL.format(country), "", capital))
    targets = {UPPER: 80, REVERSE: 80, ADD: 80, COUNT: 60}
    for task, n in targets.items():
        made = 0
        while made < n:
            if task == UPPER:
                text = " ".join(rng.sample(WORDS, rng.randint(1, 3)))
                made += add(_row(UPPER, text, text.upper()))
            elif task == REVERSE:
                words = rng.sample(WORDS, rng.randint(2, 4))
                made += add(_row(REVERSE, " ".join(words), " ".join(reversed(words))))
            elif task == ADD:
                a, b = rng.randint(0, 49), rng.randint(0, 49)
                made += add(_row(ADD, f"{a} + {b}", str(a + b)))
            else:
                words = [rng.choice(WORDS) for _ in range(rng.randint(1, 7))]
                made += add(_row(COUNT, " ".join(words), str(len(words))))
    rng.shuffle(rows)
    return rows


def _insert(lines: list[bytes], line: bytes, rng: random.Random, after: int = 0) -> int:
    """Insert at a random position > `after` (position 0 is kept for the BOM row); returns the position."""
    pos = rng.randint(max(after, 0) + 1, len(lines))
    lines.insert(pos, line)
    return pos


def instruction_lines(rng: random.Random) -> tuple[list[bytes], dict[str, Any]]:
    good = _good_instructions(rng)
    lines = [_line(row) for row in good]
    rejected: dict[str, int] = {}

    def defect(reason: str | None, line: bytes, after: int = 0) -> int:
        if reason is not None:
            rejected[reason] = rejected.get(reason, 0) + 1
        return _insert(lines, line, rng, after)

    def position_of(row: dict[str, str]) -> int:
        return lines.index(_line(row))

    # Unparseable lines.
    defect("invalid_json", b'{"instruction": "Add the two numbers.", "input": "3 + 4", "output": "7"')
    defect(
        "invalid_json", b"{'instruction': 'Reverse the order of the words.', 'input': 'a b', 'output': 'b a'}"
    )
    defect(
        "invalid_json", b'{"instruction": "Convert the text to uppercase.", "input": "owl", "output": "OWL",}'
    )
    defect(
        "invalid_utf8",
        b'{"instruction": "Convert the text to uppercase.", "input": "caf\xe9", "output": "CAF\xc9"}',
    )
    defect(
        "invalid_utf8",
        b'{"instruction": "Count the words in the text.", "input": "\xe2\x82 tea", "output": "2"}',
    )
    defect(
        "invalid_utf8",
        b'{"instruction": "Convert the text to uppercase.", "input": "hi \\ud83d", "output": "HI"}',
    )
    defect("not_an_object", b'["Add the two numbers.", "1 + 2", "3"]')
    defect("not_an_object", b'"Convert the text to uppercase."')
    # Wrong shape.
    defect("missing_field", _line({"instruction": REVERSE, "input": "cup pen"}))
    defect("missing_field", _line({"input": "tea cup", "output": "TEA CUP"}))
    defect("missing_field", _line({"instruction": ADD, "input": "2 + 2", "output": None}))
    defect("wrong_type", _line({"instruction": ADD, "input": "40 + 2", "output": 42}))
    defect("wrong_type", _line({"instruction": ["Convert", "uppercase"], "input": "owl", "output": "OWL"}))
    defect("wrong_type", _line({"instruction": COUNT, "input": {"text": "a b"}, "output": "2"}))
    # Empty after cleaning.
    defect("empty_field", _line({"instruction": UPPER, "input": "bee hat", "output": ""}))
    defect("empty_field", _line({"instruction": REVERSE, "input": "sun moon", "output": "  \n "}))
    defect("empty_field", _line({"instruction": "\u200b", "input": "fox", "output": "FOX"}))
    # Duplicates of earlier rows: exact copies, and copies equal after normalization.
    originals = good[:12]
    defect("duplicate_exact", _line(originals[0]), after=position_of(originals[0]))
    defect("duplicate_exact", _line(originals[1]), after=position_of(originals[1]))
    reordered = json.dumps(dict(reversed(list(originals[2].items()))), indent=None, separators=(", ", ":  "))
    defect("duplicate_exact", reordered.encode(), after=position_of(originals[2]))
    variant = dict(originals[3], instruction=originals[3]["instruction"].upper())
    defect("duplicate_normalized", _line(variant), after=position_of(originals[3]))
    variant = dict(originals[4], instruction=originals[4]["instruction"].replace(" ", "   "))
    defect("duplicate_normalized", _line(variant), after=position_of(originals[4]))
    lettered = next(r for r in originals[5:] if r["output"].swapcase() != r["output"])
    variant = dict(lettered, output=lettered["output"].swapcase())
    defect("duplicate_normalized", _line(variant), after=position_of(lettered))
    # NFKC variants: full-width digits and a ligature, equal to an earlier row after NFKC.
    add_row = next(r for r in good if r["instruction"] == ADD)
    fullwidth = add_row["input"].translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789+"})
    defect("duplicate_normalized", _line(dict(add_row, input=fullwidth)), after=position_of(add_row))
    finland = _row(CAPITAL.format("Finland"), "", "Helsinki")
    ligature = _row(CAPITAL.format("\ufb01nland"), "", "Helsinki")
    defect("duplicate_normalized", _line(ligature), after=position_of(finland))
    # Too long: over data.clean.max_chars; a prompt too long to leave any response token.
    defect("too_long_chars", _line(_row(REVERSE, " ".join(["stone"] * 3600), "stone")))
    long_text = " ".join(["river"] * 110)
    defect("no_response_tokens", _line(_row(UPPER, long_text, long_text.upper())))
    # Kept after cleaning or truncation (reason None); none of them repeats a good row once cleaned.
    good_keys = {_key(r["instruction"], r.get("input", ""), r["output"]) for r in good}

    def kept(row: dict[str, Any]) -> None:
        from peft_framework.config.schema import CleanConfig
        from peft_framework.data.clean import clean_text

        clean = [clean_text(row.get(k, ""), CleanConfig())[0] for k in ("instruction", "input", "output")]
        assert _key(*clean) not in good_keys, f"sample row {row} repeats a good row"
        defect(None, _line(row))

    cleaned = {"control_chars_removed": 0, "whitespace_normalized": 0, "unicode_normalized": 0}
    for row in (
        _row(UPPER, "bell\x07 ring fox", "BELL RING FOX"),
        _row(COUNT, "tea\x00 cup", "2"),
        _row(REVERSE, "map\u200b key\r\nbox", "box key map"),
    ):
        kept(row)
        cleaned["control_chars_removed"] += 1
    for row in (_row(f"  {COUNT} ", "moon salt lamp", "3"), _row(ADD, "17 +\u00a021", " 38 ")):
        kept(row)
        cleaned["whitespace_normalized"] += 1
    kept(_row(UPPER, "cafe\u0301 tea", "CAFE\u0301 TEA"))
    cleaned["unicode_normalized"] += 1
    for word in ("go", "hop"):
        kept(_row(f"Write the word '{word}' 200 times.", "", " ".join([word] * 200)))
    kept(dict(_row(UPPER, "wolf bear", "WOLF BEAR"), id=7, source="forum"))
    # Blank lines are not rows (counted apart); a byte order mark opens the file.
    for blank in (b"", b"   "):
        _insert(lines, blank, rng)
    lines[0] = b"\xef\xbb\xbf" + lines[0]

    read = sum(1 for line in lines if line.strip())
    n_rejected = sum(rejected.values())
    expected = {
        "read": read,
        "kept": read - n_rejected,
        "rejected": n_rejected,
        "rejected_by_reason": dict(sorted(rejected.items())),
        "truncated": 2,
        "blank_lines": 2,
        "cleaned": cleaned,
    }
    return lines, expected


def _good_reviews(rng: random.Random, n_per_label: int) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for label, adjectives in (("positive", POSITIVE), ("negative", NEGATIVE)):
        texts: set[str] = set()
        while len(texts) < n_per_label:
            subject = rng.choice(SUBJECTS)
            text = rng.choice(REVIEW_TEMPLATES).format(
                S=subject[0].upper() + subject[1:],
                s=subject,
                i=rng.choice(INTENSIFIERS),
                a=rng.choice(adjectives),
            )
            texts.add(text)
        rows += [{"text": t, "label": label} for t in sorted(texts)]
    rng.shuffle(rows)
    return rows


def classification_lines(rng: random.Random) -> tuple[list[bytes], dict[str, Any]]:
    good = _good_reviews(rng, 150)
    variants = {
        "positive": ["Positive", "POSITIVE", " positive ", "pos", "good"],
        "negative": ["Negative", "NEG", "bad"],
    }
    labels_normalized = 0
    for i, row in enumerate(good):
        if i % 9 == 0:
            row["label"] = rng.choice(variants[row["label"]])
            labels_normalized += 1
    lines = [_line(row) for row in good]
    rejected: dict[str, int] = {}

    def defect(reason: str, line: bytes, after: int = 0) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1
        _insert(lines, line, rng, after)

    defect("invalid_label", _line({"text": "The hotel was fine, I guess.", "label": "neutral"}))
    defect("invalid_label", _line({"text": "Not sure what to think of the app.", "label": "maybe"}))
    defect("invalid_label", _line({"text": "The coffee was hot.", "label": 5}))
    defect("wrong_type", _line({"text": "The trip was lovely.", "label": True}))
    defect("wrong_type", _line({"text": 123, "label": "positive"}))
    defect("missing_field", _line({"text": "The staff was superb."}))
    defect("missing_field", _line({"label": "negative"}))
    defect("empty_field", _line({"text": "", "label": "positive"}))
    defect("empty_field", _line({"text": "The museum was boring.", "label": "  "}))
    defect("invalid_json", b'{"text": "The show was great.", "label": "positive"')
    defect("invalid_utf8", b'{"text": "The caf\xe9 was awful.", "label": "negative"}')
    for row in good[:2]:
        defect("duplicate_exact", _line(row), after=lines.index(_line(row)))
    for row in good[2:4]:
        variant = {"text": "  " + row["text"].upper(), "label": row["label"]}
        defect("duplicate_normalized", _line(variant), after=lines.index(_line(row)))

    read = len(lines)
    n_rejected = sum(rejected.values())
    expected = {
        "read": read,
        "kept": read - n_rejected,
        "rejected": n_rejected,
        "rejected_by_reason": dict(sorted(rejected.items())),
        "truncated": 0,
        "blank_lines": 0,
        "cleaned": {"labels_normalized": labels_normalized},
    }
    return lines, expected


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_samples(out_dir: str | os.PathLike[str] = "data/raw", overwrite: bool = True) -> dict[str, Any]:
    """Write `instructions.jsonl` and `classification.jsonl` (the same bytes on every run).

    `overwrite=False` (the `sample-data` command): a file of that name already in `out_dir` with other
    content is someone's own data; nothing is written and a UserError names it. The pipeline's
    sample_data stage replaces its own output. Returns, per file, its path, size and what `prepare` must
    report for it."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {str(out_dir)!r} exists and is not a directory; allowed: a directory path")
    files: list[tuple[str, bytes, dict[str, Any], int]] = []
    for name, make in (
        ("instructions.jsonl", instruction_lines),
        ("classification.jsonl", classification_lines),
        ("preferences.jsonl", preference_lines),  # data/sample_preferences.py
        ("preferences_sft.jsonl", preference_sft_lines),
        ("preferences_unpaired.jsonl", unpaired_preference_lines),  # KTO
        ("prompts.jsonl", prompt_lines),  # data/sample_prompts.py: GRPO prompts with checkable answers
        ("prompts_sft.jsonl", prompt_sft_lines),  # the GRPO demo's SFT warm start (params/grpo-sft.yaml)
    ):
        lines, expected = make(random.Random(f"{SEED}:{name}"))
        files.append((name, b"\n".join(lines) + b"\n", expected, len(lines)))
    if not overwrite:
        for name, data, _, _ in files:
            _check_replaceable(out / name, data)
    summary: dict[str, Any] = {}
    for name, data, expected, n_lines in files:
        path = out / name
        _write_bytes(path, data)
        summary[name] = {"path": str(path), "bytes": len(data), "lines": n_lines, "expected": expected}
    from peft_framework.data.vision_samples import write_vision_samples

    summary["vision/shapes.jsonl"] = write_vision_samples(out, _write_bytes, SEED)  # images drawn with PIL
    return summary


def _check_replaceable(path: Path, data: bytes) -> None:
    """Only a missing file, or the sample itself (same bytes), may be written over."""
    if not (path.exists() or path.is_symlink()):
        return
    try:
        same = path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        same = False
    if not same:
        raise UserError(
            f"--out: {str(path)!r} already exists and is not this sample (peft-framework did not write it); "
            "refusing to overwrite it. Allowed: a directory without instructions.jsonl and "
            "classification.jsonl, or one holding only these samples; move the file away or choose "
            "another --out"
        )
