"""Hash-based splits: deterministic by seed, and a row keeps its split when other rows are added."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from peft_framework.config.schema import DataConfig, SplitConfig
from peft_framework.data.pipeline import assign_split, process
from peft_framework.data.sources import read_source, resolve_sources
from peft_framework.models.tiny import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def rows(rng: random.Random, n: int, tag: str) -> list[dict]:
    return [
        {"instruction": f"Task {tag}{i}.", "input": str(rng.random()), "output": str(rng.randint(0, 99))}
        for i in range(n)
    ]


def splits_of(tmp_path: Path, data: list[dict], tok, **cfg) -> dict[str, str]:
    """Process `data` as a JSON Lines file; map each kept row's instruction+input to its split."""
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    dc = DataConfig(source="rows.jsonl", **cfg)
    (src,) = resolve_sources(dc.source, dc.format, tmp_path)
    result = process(read_source(src), dc, tok)
    assert not result.rejected
    return {ex.encoded.text["prompt"]: ex.split for ex in result.kept}


def test_fractions_are_respected_on_many_keys():
    cfg = DataConfig(split=SplitConfig(validation=0.1, test=0.2))
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(5000):
        counts[assign_split(f"row {i}", cfg)] += 1
    assert abs(counts["validation"] / 5000 - 0.1) < 0.02
    assert abs(counts["test"] / 5000 - 0.2) < 0.02


def test_seed_changes_the_assignment_and_zero_fractions_mean_all_train():
    a = [assign_split(f"k{i}", DataConfig(split=SplitConfig(seed=1))) for i in range(200)]
    b = [assign_split(f"k{i}", DataConfig(split=SplitConfig(seed=2))) for i in range(200)]
    assert a != b
    assert a == [assign_split(f"k{i}", DataConfig(split=SplitConfig(seed=1))) for i in range(200)]
    none = DataConfig(split=SplitConfig(validation=0.0, test=0.0))
    assert {assign_split(f"k{i}", none) for i in range(200)} == {"train"}


def test_adding_rows_moves_no_existing_row(tmp_path, tok):
    rng = random.Random(0)
    base = rows(rng, 120, "a")
    before = splits_of(tmp_path, base, tok)
    assert set(before.values()) == {"train", "validation", "test"}
    grown = list(base)
    for row in rows(rng, 80, "b"):  # new rows anywhere, including before the old ones
        grown.insert(rng.randint(0, len(grown)), row)
    after = splits_of(tmp_path, grown, tok)
    assert len(after) == 200
    assert {prompt: after[prompt] for prompt in before} == before
    # Order of the input does not matter either.
    shuffled = list(grown)
    rng.shuffle(shuffled)
    assert splits_of(tmp_path, shuffled, tok) == after


def test_rows_sharing_a_prompt_share_a_split(tmp_path, tok):
    data = [{"instruction": f"Q{i}", "output": f"answer {j}"} for i in range(40) for j in range(3)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    dc = DataConfig(source="rows.jsonl")
    (src,) = resolve_sources(dc.source, dc.format, tmp_path)
    result = process(read_source(src), dc, tok)
    by_prompt: dict[str, set[str]] = {}
    for ex in result.kept:
        by_prompt.setdefault(ex.encoded.text["prompt"], set()).add(ex.split)
    assert len(by_prompt) == 40 and all(len(s) == 1 for s in by_prompt.values())
