"""The dirty preference sets of `sample-data` are accounted for row by row (issue 25: nothing lost): every
input line is kept (in one split) or in data/rejected.jsonl with its reason, its line number and its raw
content, and the counts add up in the stage's summary and reports/data.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_framework.config import load_config
from peft_framework.data.samples import write_samples
from peft_framework.data.stage import prepare

ROOT = Path(__file__).resolve().parents[2]
UNPAIRED = [
    "data.kind=unpaired_preference",
    "data.source=data/raw/preferences_unpaired.jsonl",
    "train.objective=kto",
]


@pytest.mark.parametrize(
    ("name", "overrides"),
    [("preferences.jsonl", []), ("preferences_unpaired.jsonl", UNPAIRED)],
)
def test_every_row_is_kept_or_rejected_with_its_reason(
    tmp_path: Path, name: str, overrides: list[str]
) -> None:
    expected = write_samples(tmp_path / "data" / "raw")[name]["expected"]
    config = load_config(ROOT / "params" / "dpo.yaml", ["train.init_adapter=null", *overrides])
    summary = prepare(config, tmp_path)

    rows = summary["rows"]
    assert rows["read"] == expected["read"] and rows["kept"] == expected["kept"]
    assert rows["read"] == rows["kept"] + rows["rejected"]
    assert rows["kept"] == rows["train"] + rows["validation"] + rows["test"]
    assert summary["rejected_by_reason"] == expected["rejected_by_reason"]
    report = json.loads((tmp_path / config.data.report_path).read_text())
    assert (report["rows_read"], report["rows_kept"], report["rows_rejected"]) == (
        rows["read"],
        rows["kept"],
        rows["rejected"],
    )

    lines = (tmp_path / "data" / "raw" / name).read_text().splitlines()
    rejected = [json.loads(line) for line in (tmp_path / config.data.rejected_path).read_text().splitlines()]
    assert len(rejected) == rows["rejected"]
    by_reason: dict[str, int] = {}
    for row in rejected:
        [reason] = row["reasons"]
        by_reason[reason] = by_reason.get(reason, 0) + 1
        assert row["details"] and all(row["details"])  # what was wrong, in words
        assert row["source"].endswith(name)
        original = lines[row["line"] - 1]  # the line number points at the rejected input line
        assert row["raw"] == (original if reason == "invalid_json" else json.loads(original)), row
    assert by_reason == expected["rejected_by_reason"]
