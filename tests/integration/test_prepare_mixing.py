"""Weighted `data.source` entries through the real prepare stage (`peft_framework.data.mixing`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from peft_framework.config.loading import resolve_config
from peft_framework.config.schema import Config
from peft_framework.data import prepare
from peft_framework.errors import ConfigError, DataError


def _rows(prefix: str, n: int) -> bytes:
    return b"".join(
        json.dumps({"instruction": f"{prefix} task {i}", "output": f"answer {prefix} {i}"}).encode() + b"\n"
        for i in range(n)
    )


@pytest.fixture()
def two_sources(tmp_path) -> Path:
    (tmp_path / "a.jsonl").write_bytes(_rows("alpha", 40) + b"not json\n")
    # b: 30 new rows, and one exact copy of a row of a (rejected as a duplicate, as without mixing)
    (tmp_path / "b.jsonl").write_bytes(_rows("beta", 30) + _rows("alpha", 1))
    return tmp_path


def _prepare(root: Path, source, seed: int = 42) -> tuple[dict, dict, dict[str, Counter]]:
    config = Config.model_validate({"data": {"source": source, "split": {"seed": seed}}})
    prepare(config, root)
    out = root / config.data.output_dir
    report = json.loads((out / "report.json").read_text())
    metrics = json.loads((root / config.data.report_path).read_text())
    import datasets

    dd = datasets.load_from_disk(str(out))
    prompts = {split: Counter(dd[split]["prompt"]) for split in dd}
    return report, metrics, prompts


def test_weight_and_count_sample_exactly_and_deterministically(two_sources):
    root = two_sources
    source = [{"path": "a.jsonl", "weight": 2.5}, {"path": "b.jsonl", "count": 45}]
    report, metrics, prompts = _prepare(root / "r1", [str(root / "a.jsonl"), str(root / "b.jsonl")])
    plain_rows = report["rows"]
    assert "mixing" not in report and "rows_sampled" not in metrics

    source = [{"path": str(root / "a.jsonl"), "weight": 2.5}, {"path": str(root / "b.jsonl"), "count": 45}]
    report, metrics, prompts = _prepare(root / "r2", source)
    # reading, cleaning and dedup see every row once: same counts as the plain list
    assert {k: report["rows"][k] for k in ("read", "kept", "rejected")} == plain_rows
    a, b = report["mixing"]
    assert (a["read"], a["kept"], a["rejected"], a["sampled"]) == (41, 40, 1, 100)  # 2.5 x 40
    assert (b["read"], b["kept"], b["rejected"], b["sampled"]) == (31, 30, 1, 45)  # the alpha copy rejected
    assert report["rows"]["sampled"] == metrics["rows_sampled"] == 145
    assert sum(report["splits"].values()) == 145
    assert all(not isinstance(v, dict | list) for v in metrics.values())  # data.json stays flat numbers

    every = Counter()
    for split_prompts in prompts.values():
        every.update(split_prompts)
    alpha = [n for p, n in every.items() if "alpha" in p]
    beta = [n for p, n in every.items() if "beta" in p]
    # weight 2.5: two whole passes, then 20 of the 40 rows once more; count 45 = one pass + 15 rows
    assert sorted(Counter(alpha).items()) == [(2, 20), (3, 20)]
    assert sorted(Counter(beta).items()) == [(1, 15), (2, 15)]
    # a row and its copies share a split (the split hashes the content, not the weights)
    seen: dict[str, str] = {}
    for split, split_prompts in prompts.items():
        for p in split_prompts:
            assert seen.setdefault(p, split) == split

    # the same seed gives the same sample
    again = _prepare(root / "r3", source)
    assert again[2] == prompts


def test_weight_below_one_downsamples(two_sources):
    root = two_sources
    source = [{"path": str(root / "a.jsonl"), "weight": 0.25}, str(root / "b.jsonl")]
    report, _, prompts = _prepare(root / "out", source)
    a, b = report["mixing"]
    assert (a["kept"], a["sampled"], b["sampled"]) == (40, 10, 30)
    every = Counter()
    for split_prompts in prompts.values():
        every.update(split_prompts)
    assert sum(n for p, n in every.items() if "alpha" in p) == 10
    assert max(every.values()) == 1


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "a.jsonl", "weight": 0}, "data.source[1].weight: 0; allowed: a number > 0"),
        ({"path": "a.jsonl", "count": 2.5}, "data.source[1].count: 2.5; allowed: an integer >= 1"),
        ({"path": "a.jsonl", "weight": 1, "count": 3}, "data.source[1]: both weight (1) and count (3)"),
        ({"file": "a.jsonl"}, "data.source[1]: unknown key(s) file"),
        (7, "data.source[1]: 7 is a int"),
    ],
)
def test_bad_entries_name_the_entry_the_value_and_what_is_allowed(entry, message):
    with pytest.raises(ConfigError) as info:
        resolve_config({"data": {"source": ["b.jsonl", entry]}})
    assert message in str(info.value)


def test_a_missing_weighted_entry_names_its_index(tmp_path):
    config = Config.model_validate({"data": {"source": ["a.jsonl", {"path": "gone.jsonl", "count": 3}]}})
    (tmp_path / "a.jsonl").write_bytes(_rows("alpha", 3))
    with pytest.raises(DataError, match=r"data.source\[1\]: data.source: 'gone.jsonl' does not exist"):
        prepare(config, tmp_path)


def test_multiplicities_are_exact_passes_plus_a_seeded_sample():
    from peft_framework.data.mixing import multiplicities

    m = multiplicities(7, 17, seed=42, index=1)
    assert m.sum() == 17 and sorted(set(m.tolist())) == [2, 3] and (m == 3).sum() == 3
    assert (multiplicities(7, 17, seed=42, index=1) == m).all()
    assert multiplicities(7, 3, seed=42, index=1).tolist().count(1) == 3
    assert multiplicities(0, 5, seed=42, index=0).size == 0
