"""The sample data: deterministic, small, and holding a defect of every kind."""

from __future__ import annotations

from peft_framework.data.samples import write_samples

INSTRUCTION_DEFECTS = {
    "invalid_json",
    "invalid_utf8",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "empty_field",
    "duplicate_exact",
    "duplicate_normalized",
    "too_long_chars",
    "no_response_tokens",
}


def test_samples_are_deterministic_and_small(tmp_path):
    first = write_samples(tmp_path / "a")
    second = write_samples(tmp_path / "b")
    for name in ("instructions.jsonl", "classification.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert first[name]["expected"] == second[name]["expected"]
    assert sum(info["bytes"] for info in first.values()) < 1_000_000


def test_samples_hold_every_defect_kind(tmp_path):
    info = write_samples(tmp_path)
    inst = info["instructions.jsonl"]["expected"]
    assert set(inst["rejected_by_reason"]) == INSTRUCTION_DEFECTS
    assert inst["truncated"] > 0 and inst["blank_lines"] > 0
    assert all(n > 0 for n in inst["cleaned"].values())
    assert inst["kept"] >= 300 and inst["rejected"] / inst["read"] < 0.5
    raw = (tmp_path / "instructions.jsonl").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # byte order mark
    assert b"caf\xe9" in raw and b"\\ud83d" in raw  # a Latin-1 byte, a lone surrogate escape
    assert b"\\u0007" in raw and b"\\u0000" in raw and "\u200b".encode() in raw  # control characters

    cls = info["classification.jsonl"]["expected"]
    assert {"invalid_label", "wrong_type", "missing_field", "empty_field", "duplicate_exact"} <= set(
        cls["rejected_by_reason"]
    )
    assert cls["cleaned"]["labels_normalized"] > 0 and cls["kept"] >= 250
