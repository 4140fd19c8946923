"""Property: over random malformed inputs, every row is kept or rejected, never both, never neither."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_framework.config.schema import CleanConfig, DataConfig
from peft_framework.data.formatting import IGNORE_INDEX
from peft_framework.data.pipeline import process
from peft_framework.data.rows import Reason
from peft_framework.data.sources import read_source, resolve_sources
from peft_framework.data.stream import run
from peft_framework.models.tiny import tiny_tokenizer

TOK = tiny_tokenizer()
REASONS = {v for k, v in vars(Reason).items() if k.isupper()}

# Text with the troublemakers: control characters, odd spaces, combining marks, full-width forms, surrogates.
text = st.text(
    alphabet=st.one_of(
        st.sampled_from("ab AB 12\t\n\r\x00\x07\u200b\u00a0\u0301\uff21\ufb01\ud83d"),
        st.characters(codec="utf-8"),
    ),
    max_size=30,
)
json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
instruction_row = st.fixed_dictionaries(
    {"instruction": text, "output": st.one_of(text, json_value)},
    optional={"input": st.one_of(text, st.none())},
)
classification_row = st.fixed_dictionaries(
    {"text": text, "label": st.sampled_from(["pos", "NEG", "x", "", 1, True])}
)


def encoded_line(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


line = st.one_of(
    instruction_row.map(encoded_line),
    instruction_row.map(lambda row: json.dumps(row).encode("ascii")),  # surrogates as \ud83d escapes
    classification_row.map(encoded_line),
    json_value.map(encoded_line),
    st.binary(max_size=40),
    text.map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def lines_with_duplicates(draw_lines: list[bytes], picks: list[int]) -> list[bytes]:
    out = list(draw_lines)
    for p in picks:
        out.append(out[p % len(out)])
    return out


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("DATA_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    lines=st.lists(line, min_size=1, max_size=25),
    picks=st.lists(st.integers(min_value=0), max_size=5),
    kind=st.sampled_from(["instruction", "classification"]),
    dedup=st.sampled_from(["none", "exact", "normalized"]),
)
def test_every_row_is_kept_or_rejected_exactly_once(lines, picks, kind, dedup):
    data = b"\n".join(lines_with_duplicates(lines, picks)) + b"\n"
    physical = data.split(b"\n")[:-1]
    if physical and physical[0].startswith(b"\xef\xbb\xbf"):
        physical[0] = physical[0][3:]
    expected_lines = {i + 1 for i, raw in enumerate(physical) if raw.rstrip(b"\r").strip()}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "rows.jsonl").write_bytes(data)
        cfg = DataConfig(source="rows.jsonl", kind=kind, max_seq_len=400, clean=CleanConfig(dedup=dedup))
        (src,) = resolve_sources(cfg.source, cfg.format, root)
        result = process(read_source(src), cfg, TOK)

        kept = {ex.record.line for ex in result.kept}
        rejected = {r.record.line for r in result.rejected}
        assert result.read == len(expected_lines) == src.rows
        assert len(result.kept) + len(result.rejected) == result.read
        assert not kept & rejected
        assert kept | rejected == expected_lines
        for r in result.rejected:
            assert r.reasons and set(r.reasons) <= REASONS and len(r.details) == len(r.reasons)
        assert sum(result.rejected_by_reason().values()) == len(result.rejected)
        for ex in result.kept:
            enc = ex.encoded
            if kind == "instruction":
                assert len(enc.labels) == len(enc.input_ids) <= cfg.max_seq_len
                assert any(label != IGNORE_INDEX for label in enc.labels)
            else:
                assert 0 <= enc.labels < len(result.label_names)

        # The streaming pipeline (what prepare runs) decides every row as the in-memory one does, stores
        # what it keeps and writes what it rejects, one row per line, in input order.
        work = root / "work"
        work.mkdir()
        (src,) = resolve_sources(cfg.source, cfg.format, root)
        stats, splits = run(read_source(src), cfg, TOK, work, root / "rejected.jsonl")
        assert stats.read == result.read and stats.kept == len(result.kept)
        assert dict(stats.first_reasons) == result.rejected_by_reason()
        for split, ds in splits.items():
            assert list(ds["source"]) == [ex.record.where for ex in result.kept if ex.split == split]
            assert list(ds["input_ids"]) == [ex.encoded.input_ids for ex in result.kept if ex.split == split]
        back = [
            json.loads(x) for x in (root / "rejected.jsonl").read_text(encoding="utf-8").splitlines()
        ]  # one row per line
        assert [(b["line"], b["row"], b["reasons"], b["details"]) for b in back] == [
            (r.record.line, r.record.index, r.reasons, r.details) for r in result.rejected
        ]
