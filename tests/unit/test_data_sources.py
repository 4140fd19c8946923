"""Finding and reading the inputs: formats, globs, directories, column mapping, and clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from peft_framework.config.schema import DataConfig
from peft_framework.data.pipeline import process
from peft_framework.data.sources import read_source, resolve_sources
from peft_framework.errors import DataError
from peft_framework.models.tiny import tiny_tokenizer

ROWS = [
    {"instruction": "Add.", "input": "1 + 2", "output": "3"},
    {"instruction": "Upper.", "input": "ab", "output": "AB"},
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def read_all(root: Path, dc: DataConfig):
    sources = resolve_sources(dc.source, dc.format, root)
    return sources, [rec for src in sources for rec in read_source(src, dc.hf_split, dc.hf_config)]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_json_array_object_with_list_and_json_lines_named_json(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS))
    (tmp_path / "b.json").write_text(json.dumps({"data": ROWS}))
    write_jsonl(tmp_path / "c.json", ROWS)
    for name in ("a.json", "b.json", "c.json"):
        _, recs = read_all(tmp_path, DataConfig(source=name))
        assert [r.data for r in recs] == ROWS, name
    _, recs = read_all(tmp_path, DataConfig(source="a.json"))
    assert [(r.index, r.line) for r in recs] == [(0, None), (1, None)] and recs[1].where == "a.json#1"


def test_csv_with_other_column_names_through_column_mapping(tmp_path, tok):
    (tmp_path / "qa.csv").write_text('question,context,answer\nAdd.,1 + 2,3\n"Say, hi",,hi\nCount.,a b,2\n')
    dc = DataConfig(
        source="qa.csv", columns={"instruction": "question", "input": "context", "output": "answer"}
    )
    sources, recs = read_all(tmp_path, dc)
    result = process(iter(recs), dc, tok)
    assert not result.rejected and len(result.kept) == 3
    assert [ex.encoded.text["response"] for ex in result.kept] == ["3", "hi", "2"]  # '3' stays text, not int
    assert "### Input:\n1 + 2" in result.kept[0].encoded.text["prompt"]
    assert "### Input" not in result.kept[1].encoded.text["prompt"]  # empty cell: the no-input template
    assert [ex.record.line for ex in result.kept] == [2, 3, 4]


def test_wrong_column_mapping_rejects_rows_as_missing(tmp_path, tok):
    (tmp_path / "qa.csv").write_text("question,answer\nAdd.,3\n")
    dc = DataConfig(source="qa.csv")
    _, recs = read_all(tmp_path, dc)
    result = process(iter(recs), dc, tok)
    assert result.rejected[0].reasons == ["missing_field", "missing_field"]
    assert set(result.columns_seen) == {"question", "answer"}


def test_tsv_and_gzip(tmp_path):
    (tmp_path / "rows.tsv").write_text("instruction\toutput\nAdd.\t3\n")
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as f:
        f.write(json.dumps(ROWS[0]) + "\n")
    _, recs = read_all(tmp_path, DataConfig(source="rows.tsv"))
    assert recs[0].data == {"instruction": "Add.", "output": "3"}
    sources, recs = read_all(tmp_path, DataConfig(source="rows.jsonl.gz"))
    assert sources[0].format == "jsonl" and recs[0].data == ROWS[0]


def test_parquet_and_saved_dataset_through_datasets(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "rows.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "extra": ds.select([0])}).save_to_disk(str(tmp_path / "saved_dict"))
    _, recs = read_all(tmp_path, DataConfig(source="rows.parquet"))
    assert [r.data for r in recs] == ROWS
    sources, recs = read_all(tmp_path, DataConfig(source="saved"))
    assert sources[0].format == "saved" and [r.data for r in recs] == ROWS
    _, recs = read_all(tmp_path, DataConfig(source="saved_dict", hf_split="extra"))
    assert [r.data for r in recs] == ROWS[:1]
    with pytest.raises(DataError, match="data.hf_split: 'nope'.*allowed: train, extra|allowed: extra, train"):
        read_all(tmp_path, DataConfig(source="saved_dict", hf_split="nope"))


def test_hf_dataset_id_path_loads_with_load_dataset(tmp_path):
    """`hf:` goes through datasets.load_dataset; a local dataset directory works offline."""
    write_jsonl(tmp_path / "hub" / "train.jsonl", ROWS)
    sources, recs = read_all(tmp_path, DataConfig(source=f"hf:{tmp_path / 'hub'}"))
    assert sources[0].format == "hf" and [r.data for r in recs] == ROWS
    with pytest.raises(DataError, match="cannot load HuggingFace dataset"):
        read_all(tmp_path, DataConfig(source=f"hf:{tmp_path / 'hub'}", hf_split="nope"))


def test_directories_globs_and_lists_are_sorted_and_deduplicated(tmp_path):
    write_jsonl(tmp_path / "d" / "b.jsonl", ROWS[1:])
    write_jsonl(tmp_path / "d" / "a.jsonl", ROWS[:1])
    write_jsonl(tmp_path / "d" / "sub" / "c.jsonl", ROWS)
    (tmp_path / "d" / "notes.txt").write_text("not data")
    sources, _ = read_all(tmp_path, DataConfig(source="d"))
    assert [s.display for s in sources] == ["d/a.jsonl", "d/b.jsonl", "d/sub/c.jsonl"]
    sources, _ = read_all(tmp_path, DataConfig(source="d/*.jsonl"))
    assert [s.display for s in sources] == ["d/a.jsonl", "d/b.jsonl"]
    sources, recs = read_all(tmp_path, DataConfig(source=["d/b.jsonl", "d/**/*.jsonl"]))
    assert [s.display for s in sources] == ["d/b.jsonl", "d/a.jsonl", "d/sub/c.jsonl"]
    assert [s.rows for s in sources] == [1, 1, 2] and len(recs) == 4


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("data/raw/instructions.jsonl", "does not exist.*peft-framework sample-data"),
        ("missing/*.jsonl", "matches no data file"),
        ("empty_dir", "holds no data file"),
        ("notes.txt", "cannot tell the format"),
        ([], "data.source is empty"),
    ],
)
def test_unusable_sources_are_clear_errors(tmp_path, source, message):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=message):
        resolve_sources(source, "auto", tmp_path)


def test_explicit_format_overrides_the_extension(tmp_path):
    write_jsonl(tmp_path / "rows.txt", ROWS)
    _, recs = read_all(tmp_path, DataConfig(source="rows.txt", format="jsonl"))
    assert [r.data for r in recs] == ROWS


def test_columns_and_template_must_fit_the_kind():
    with pytest.raises(ValidationError, match="unknown field 'label' for kind 'instruction'; allowed: instr"):
        DataConfig(columns={"label": "y"})
    with pytest.raises(ValidationError, match="'alpaca' cannot format chat data"):
        DataConfig(kind="chat", template="alpaca")
    assert DataConfig(kind="chat", columns={"messages": "conversations", "role": "from"}).columns
