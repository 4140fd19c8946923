"""One test per data defect kind: a bad row is rejected with reason, file and line, or repaired and kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_framework.config.schema import CleanConfig, DataConfig, ValidateConfig
from peft_framework.data.pipeline import Result, process
from peft_framework.data.sources import read_source, resolve_sources
from peft_framework.models.tiny import tiny_tokenizer

GOOD = {"instruction": "Add the two numbers.", "input": "1 + 2", "output": "3"}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def run(
    tmp_path: Path, lines: list[bytes | dict | list | str], tok, name: str = "rows.jsonl", **cfg
) -> Result:
    """Write `lines` as a JSON Lines file (dicts/lists/str dumped as JSON, bytes as is) and process it."""
    raw = [
        line if isinstance(line, bytes) else json.dumps(line, ensure_ascii=False).encode() for line in lines
    ]
    (tmp_path / name).write_bytes(b"\n".join(raw) + b"\n")
    dc = DataConfig(source=name, **cfg)
    sources = resolve_sources(dc.source, dc.format, tmp_path)
    result = process((r for s in sources for r in read_source(s)), dc, tok)
    assert len(result.kept) + len(result.rejected) == result.read
    return result


def only_rejection(result: Result):
    assert len(result.rejected) == 1, [r.to_json() for r in result.rejected]
    return result.rejected[0]


def test_invalid_json_line_is_rejected_with_its_line(tmp_path, tok):
    res = run(
        tmp_path,
        [GOOD, b'{"instruction": "x", "output": "y"', {**GOOD, "input": "2 + 2", "output": "4"}],
        tok,
    )
    rej = only_rejection(res)
    assert rej.reasons == ["invalid_json"]
    assert (rej.record.source, rej.record.line) == ("rows.jsonl", 2)
    assert rej.to_json()["raw"] == '{"instruction": "x", "output": "y"'
    assert len(res.kept) == 2


def test_invalid_utf8_bytes_are_rejected_per_line(tmp_path, tok):
    res = run(tmp_path, [GOOD, b'{"instruction": "caf\xe9", "output": "y"}'], tok)
    rej = only_rejection(res)
    assert rej.reasons == ["invalid_utf8"]
    assert rej.record.line == 2
    assert "\\xe9" in rej.to_json()["raw"]  # the bad byte is shown, escaped


def test_lone_surrogate_escape_is_invalid_utf8(tmp_path, tok):
    res = run(tmp_path, [GOOD, b'{"instruction": "hi \\ud83d", "output": "y"}'], tok)
    assert only_rejection(res).reasons == ["invalid_utf8"]


def test_row_that_is_not_an_object(tmp_path, tok):
    res = run(tmp_path, [GOOD, ["a", "b"], "text", 3], tok)
    assert [r.reasons for r in res.rejected] == [["not_an_object"]] * 3


def test_missing_and_null_fields_list_every_problem(tmp_path, tok):
    res = run(tmp_path, [GOOD, {"input": "x"}, {"instruction": "x", "output": None}], tok)
    first, second = res.rejected
    assert first.reasons == ["missing_field", "missing_field"]
    assert "'instruction' is missing" in first.details[0] and "'output' is missing" in first.details[1]
    assert second.reasons == ["missing_field"] and "is null" in second.details[0]


def test_wrong_types_are_rejected_not_coerced(tmp_path, tok):
    res = run(
        tmp_path,
        [GOOD, {**GOOD, "output": 3}, {**GOOD, "instruction": ["a"]}, {**GOOD, "input": {"a": 1}}],
        tok,
    )
    assert [r.reasons for r in res.rejected] == [["wrong_type"]] * 3
    assert "got int 3" in res.rejected[0].details[0]


def test_empty_output_is_rejected_and_kept_when_allowed(tmp_path, tok):
    rows = [GOOD, {**GOOD, "input": "5 + 5", "output": "   "}]
    assert only_rejection(run(tmp_path, rows, tok)).reasons == ["empty_field"]
    kept = run(tmp_path, rows, tok, clean=CleanConfig(drop_empty=False))
    assert len(kept.kept) == 2 and not kept.rejected


def test_exact_duplicate_keeps_the_first(tmp_path, tok):
    res = run(tmp_path, [GOOD, {"output": "3", "input": "1 + 2", "instruction": "Add the two numbers."}], tok)
    rej = only_rejection(res)
    assert rej.reasons == ["duplicate_exact"] and rej.record.line == 2
    assert "rows.jsonl:1" in rej.details[0]
    assert res.kept[0].record.line == 1


def test_normalized_duplicate_needs_normalized_dedup(tmp_path, tok):
    variant = {**GOOD, "instruction": "ADD  the two   numbers."}
    assert only_rejection(run(tmp_path, [GOOD, variant], tok)).reasons == ["duplicate_normalized"]
    exact_only = run(tmp_path, [GOOD, variant], tok, clean=CleanConfig(dedup="exact"))
    assert len(exact_only.kept) == 2
    none = run(tmp_path, [GOOD, GOOD], tok, clean=CleanConfig(dedup="none"))
    assert len(none.kept) == 2


def test_nfkc_variant_is_a_duplicate(tmp_path, tok):
    fullwidth = {**GOOD, "input": "\uff11 \uff0b \uff12"}  # "１ ＋ ２"
    # NFC cleaning keeps the full-width form: caught by normalized de-duplication.
    assert only_rejection(run(tmp_path, [GOOD, fullwidth], tok)).reasons == ["duplicate_normalized"]
    # NFKC cleaning folds it: then it is an exact duplicate of what would be trained.
    res = run(tmp_path, [GOOD, fullwidth], tok, clean=CleanConfig(unicode_normalization="NFKC"))
    assert only_rejection(res).reasons == ["duplicate_exact"]


def test_decomposed_unicode_is_normalized_and_kept(tmp_path, tok):
    res = run(tmp_path, [{**GOOD, "input": "cafe\u0301"}], tok)
    assert not res.rejected
    assert "caf\u00e9" in res.kept[0].encoded.text["prompt"]
    assert res.cleaned["unicode_normalized"] == 1


def test_control_characters_are_removed_and_counted(tmp_path, tok):
    res = run(tmp_path, [{**GOOD, "input": "1\x00 +\x07 2\u200b", "output": "3\r\n"}], tok)
    assert not res.rejected
    text = res.kept[0].encoded.text
    assert "1 + 2\n" in text["prompt"] and text["response"] == "3"
    assert res.cleaned["control_chars_removed"] == 1
    raw = run(tmp_path, [{**GOOD, "input": "1\x00 + 2"}], tok, clean=CleanConfig(remove_control_chars=False))
    assert "\x00" in raw.kept[0].encoded.text["prompt"]


def test_odd_whitespace_is_normalized(tmp_path, tok):
    res = run(
        tmp_path, [{**GOOD, "instruction": "  Add\u00a0the two numbers.\t ", "output": "3\n\n\n\n"}], tok
    )
    text = res.kept[0].encoded.text
    assert "\nAdd the two numbers.\n" in text["prompt"] and text["response"] == "3"
    assert res.cleaned["whitespace_normalized"] == 1


def test_zero_width_only_field_is_empty(tmp_path, tok):
    assert only_rejection(run(tmp_path, [{**GOOD, "output": "\u200b"}], tok)).reasons == ["empty_field"]


def test_length_in_characters(tmp_path, tok):
    rows = [GOOD, {**GOOD, "input": "9" * 50}]
    res = run(tmp_path, rows, tok, clean=CleanConfig(max_chars=40))
    assert (
        only_rejection(res).reasons == ["too_long_chars"]
        and "data.clean.max_chars" in res.rejected[0].details[0]
    )
    res = run(tmp_path, rows, tok, clean=CleanConfig(min_chars=30))
    assert only_rejection(res).reasons == ["too_short_chars"]


def test_length_in_tokens(tmp_path, tok):
    rows = [GOOD, {**GOOD, "input": "9" * 150}]  # about 200 and 350 tokens
    res = run(tmp_path, rows, tok, clean=CleanConfig(max_tokens=300))
    assert only_rejection(res).reasons == ["too_many_tokens"]
    res = run(tmp_path, rows, tok, clean=CleanConfig(min_tokens=300))
    assert only_rejection(res).reasons == ["too_few_tokens"]


def test_overlong_row_is_truncated_and_counted(tmp_path, tok):
    res = run(tmp_path, [GOOD, {**GOOD, "input": "7 + 7", "output": "x" * 600}], tok, max_seq_len=300)
    assert not res.rejected and res.truncated == 1
    long = res.kept[1].encoded
    assert len(long.input_ids) == 300 and long.n_tokens > 300 and long.truncated


def test_prompt_longer_than_max_seq_len_leaves_nothing_to_learn(tmp_path, tok):
    res = run(tmp_path, [GOOD, {**GOOD, "input": "8" * 400}], tok, max_seq_len=300)
    rej = only_rejection(res)
    assert rej.reasons == ["no_response_tokens"] and "data.max_seq_len is 300" in rej.details[0]


def test_chat_roles_and_order(tmp_path, tok):
    def conv(*roles):
        return {"messages": [{"role": r, "content": f"{r} {i}"} for i, r in enumerate(roles)]}

    rows = [
        conv("system", "user", "assistant"),
        conv("user", "wizard", "assistant"),
        conv("user", "assistant", "system", "assistant"),
        conv("assistant", "user", "assistant"),
        conv("user", "assistant", "user"),
        conv("user", "user", "assistant"),
        {"messages": [{"role": "user"}, {"role": "assistant", "content": 3}]},
        {"messages": []},
    ]
    res = run(tmp_path, rows, tok, kind="chat")
    assert len(res.kept) == 1
    assert [r.reasons for r in res.rejected] == [
        ["invalid_role"],
        ["invalid_role_order"],
        ["invalid_role_order"],
        ["invalid_role_order"],
        ["invalid_role_order"],
        ["missing_field", "wrong_type"],
        ["empty_field"],
    ]


def test_role_aliases_map_sharegpt_roles(tmp_path, tok):
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    res = run(
        tmp_path,
        [row],
        tok,
        kind="chat",
        columns={"messages": "conversations", "role": "from", "content": "value"},
        clean=CleanConfig(role_aliases={"human": "user", "gpt": "assistant"}),
    )
    assert not res.rejected and res.kept[0].encoded.text["response"] == "hello"


def test_labels_are_normalized_and_checked_against_the_allowed_set(tmp_path, tok):
    rows = [
        {"text": "good film", "label": "Positive"},
        {"text": "bad film", "label": " NEG "},
        {"text": "fine film", "label": "neutral"},
        {"text": "odd film", "label": 1},
        {"text": "what", "label": True},
        {"text": "blank", "label": "  "},
    ]
    res = run(
        tmp_path,
        rows,
        tok,
        kind="classification",
        clean=CleanConfig(label_aliases={"neg": "negative"}),
        validate=ValidateConfig(labels=["negative", "POSITIVE"]),
    )
    assert res.label_names == ["negative", "positive"]
    assert [(ex.encoded.text["label_text"], ex.encoded.labels) for ex in res.kept] == [
        ("positive", 1),
        ("negative", 0),
    ]
    assert [r.reasons for r in res.rejected] == [
        ["invalid_label"],
        ["invalid_label"],
        ["wrong_type"],
        ["empty_field"],
    ]
    assert "allowed: ['negative', 'positive']" in res.rejected[0].details[0]
    assert res.cleaned["labels_normalized"] == 2


def test_without_an_allowed_set_every_label_seen_is_a_class(tmp_path, tok):
    rows = [{"text": "a", "label": "b"}, {"text": "c", "label": "A"}, {"text": "d", "label": 2}]
    res = run(tmp_path, rows, tok, kind="classification")
    assert res.label_names == ["2", "a", "b"]
    assert [ex.encoded.labels for ex in res.kept] == [2, 1, 0]


def test_malformed_csv_row_is_rejected_with_its_line(tmp_path, tok):
    (tmp_path / "rows.csv").write_bytes(
        b'instruction,output\nSay hi,hi\n"multi\nline",ok\nonly one field\nbad,caf\xe9\n'
    )
    dc = DataConfig(source="rows.csv")
    sources = resolve_sources(dc.source, dc.format, tmp_path)
    res = process((r for s in sources for r in read_source(s)), dc, tok)
    assert [ex.record.line for ex in res.kept] == [2, 3]
    assert [(r.reasons, r.record.line) for r in res.rejected] == [(["invalid_csv"], 5), (["invalid_utf8"], 6)]


def test_blank_lines_and_byte_order_mark_are_not_rows(tmp_path, tok):
    (tmp_path / "rows.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n\n   \r\n")
    dc = DataConfig(source="rows.jsonl")
    (src,) = resolve_sources(dc.source, dc.format, tmp_path)
    res = process(read_source(src), dc, tok)
    assert res.read == 1 and len(res.kept) == 1 and src.blank_lines == 2
