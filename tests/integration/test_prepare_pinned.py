"""Prepare's outputs on the sample data, pinned byte for byte.

The hashes were taken from the in-memory prepare (before the streaming rewrite); the streaming prepare must
write the same Arrow data, dataset info, manifest, rejected rows and report. Only `state.json` (the
`datasets` fingerprint) may differ, see `peft_framework.data.stage`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from peft_framework.config.schema import Config
from peft_framework.data import prepare, write_samples
from peft_framework.data.samples import CLASSIFICATION_DATA

ARROW_AND_INFO = {
    "instruction": {
        "dataset_dict.json": "1239dbd4ca38311b03319b672c05a6fdaacc884b0034eed047659406c62eedd4",
        "manifest.json": "b82f1a26b00efa6241bb2ec7d0bf12e8931925ca14c884436180a12a762566f2",
        "test/data-00000-of-00001.arrow": "801ff8eb090a92da9daf280e5431733fac35477860cf75530c3941c30d306f85",
        "test/dataset_info.json": "5da3c020ce527f3c2d77a61256ccd50b7ee00b4dbaa665679a30a3ce732042e7",
        "train/data-00000-of-00001.arrow": "d5badd086796d03a78819f221a93a4fc2088037e2eb0f114e6e9a78448d5c375",
        "train/dataset_info.json": "5da3c020ce527f3c2d77a61256ccd50b7ee00b4dbaa665679a30a3ce732042e7",
        "validation/data-00000-of-00001.arrow": "a1cb5d32c86ae2bf707644cff6fee10d46ae6f3fd0d995f19aa45d25aedab4aa",
        "validation/dataset_info.json": "5da3c020ce527f3c2d77a61256ccd50b7ee00b4dbaa665679a30a3ce732042e7",
        "rejected": "f03921e45a99b5d2fcb1a539891c756c244e2202cdc1f46d6655a4c3b552ba72",
    },
    "classification": {
        "dataset_dict.json": "1239dbd4ca38311b03319b672c05a6fdaacc884b0034eed047659406c62eedd4",
        "manifest.json": "9801c2a3a79e77bfd5585589b85bf8716e9bf541ca8516ad4d8fae069a694690",
        "test/data-00000-of-00001.arrow": "9b79c0d65b4d2dba72cd63066c6c091aeb12fa6ecbc04a23a73487845fd50cf4",
        "test/dataset_info.json": "a5fbc35781cfb5bb6dc87f5aa4daf62c2f55945c6eb07c8d3f1acede637c6565",
        "train/data-00000-of-00001.arrow": "d3da85b21b9cc7670d17041e27c18b80344f623316d4586cc7accb62ad36f8a0",
        "train/dataset_info.json": "a5fbc35781cfb5bb6dc87f5aa4daf62c2f55945c6eb07c8d3f1acede637c6565",
        "validation/data-00000-of-00001.arrow": "f996659cf95799b403095ee49a065197ece63423a8c26b1a2daffae0f23f62c3",
        "validation/dataset_info.json": "a5fbc35781cfb5bb6dc87f5aa4daf62c2f55945c6eb07c8d3f1acede637c6565",
        "rejected": "6a36bda7d534815c0b77b824fbe121876f386a5289ee2f0dd20f22e36f41d023",
    },
}
# the full data report (data.output_dir/report.json) less what changes with the code or the run
REPORT = {
    "instruction": "c480de6d4bfedb6be902fdf289096122d2cc5b1f7ca7fe90907866f9587e4063",
    "classification": "19f7c847ea83044003f14e18807529376a5623cc932efc4cc4d48c75cd20e134",
}
VOLATILE = ("duration_s", "code_sha256", "dataset_sha256")
# The manifest gained the tokenizer's file hashes and the chat template (issue 15a): its pin changed, the Arrow
# data's did not.
# The manifest is pinned as JSON less `config_sha256`: that hashes the WHOLE config, so every key the schema
# gains (in any section) changes it; the data section and everything the manifest says of the data stay.
MANIFEST_VOLATILE = ("config_sha256",)
# the framework's output marker (tests/faults) and the full data report (pinned as REPORT): not data
NOT_DATA = (".peft-framework-output", "report.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _outputs(root: Path, config: Config) -> tuple[dict[str, str], str]:
    out = root / config.data.output_dir
    hashes = {
        p.relative_to(out).as_posix(): _sha256(p)
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "state.json" and p.name not in NOT_DATA
    }
    manifest = json.loads((out / "manifest.json").read_text())
    for key in MANIFEST_VOLATILE:
        manifest.pop(key)
    hashes["manifest.json"] = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    hashes["rejected"] = _sha256(root / config.data.rejected_path)
    # the full report (data.report_path holds only its numbers, a DVC metric); written before the volatile keys
    report = json.loads((out / "report.json").read_text())
    for key in VOLATILE:
        report.pop(key, None)
    return hashes, hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("kind", ["instruction", "classification"])
def test_prepare_outputs_are_pinned_byte_for_byte(tmp_path, kind):
    write_samples(tmp_path / "data" / "raw")
    if kind == "instruction":
        config = Config()
    else:
        config = Config.model_validate(
            {"model": {"task": "sequence_classification"}, "data": CLASSIFICATION_DATA}
        )
    prepare(config, tmp_path)
    hashes, report = _outputs(tmp_path, config)
    assert hashes == ARROW_AND_INFO[kind]
    assert report == REPORT[kind]


@pytest.mark.slow
def test_num_proc_does_not_change_the_output(tmp_path):
    """Tokenising in worker processes (more rows than one batch) writes the same bytes as one process."""
    write_samples(tmp_path / "raw")
    sample = (tmp_path / "raw" / "instructions.jsonl").read_bytes()
    rows = b"".join(
        json.dumps({"instruction": f"Task {i}: repeat", "output": "word " * (i % 7 + 1)}).encode() + b"\n"
        for i in range(1100)
    )
    (tmp_path / "rows.jsonl").write_bytes(sample + rows + sample)  # the second copy: all duplicates
    outputs = []
    for num_proc in (1, 2):
        root = tmp_path / f"np{num_proc}"
        config = Config.model_validate(
            {"data": {"source": str(tmp_path / "rows.jsonl"), "num_proc": num_proc}}
        )
        summary = prepare(config, root)
        outputs.append(
            (summary["dataset_sha256"], _sha256(root / config.data.rejected_path), summary["rows"])
        )
    assert outputs[0] == outputs[1]
