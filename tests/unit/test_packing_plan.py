"""train.packing at scale: the array packer and the lazy packed split give exactly the packs and packed rows
of the straightforward implementation they replaced (kept here as the reference)."""

from __future__ import annotations

import bisect
import random
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from peft_framework.training.collator import IGNORE_INDEX, make_collator
from peft_framework.training.packing import (
    best_fit_decreasing,
    example_lengths,
    pack_plan,
    pack_split,
    row_lengths,
)


def reference_best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """The packer as first written: open packs in one sorted list of (free room, pack index)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    room: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(room, (n, -1))
        if at < len(room):
            free, p = room.pop(at)
        else:
            free, p = capacity, len(packs)
            packs.append([])
        packs[p].append(i)
        if free - n > 0:
            bisect.insort(room, (free - n, p))
    for pack in packs:
        pack.sort()
    return packs


def reference_pack_rows(rows: list[dict], capacity: int) -> list[dict]:
    """The packed rows as first written: Python lists built from the whole split."""
    lengths = [len(r["input_ids"]) for r in rows]
    out = []
    for pack in reference_best_fit_decreasing(lengths, capacity):
        ids, labels, pos = [], [], []
        for i in pack:
            ids.extend(rows[i]["input_ids"])
            labels.append(IGNORE_INDEX)
            labels.extend(rows[i]["labels"][1:])
            pos.extend(range(lengths[i]))
        out.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return out


def _lengths(rng: random.Random, n: int, capacity: int, empty: float = 0.01) -> list[int]:
    """Long-tailed lengths with many ties, a few longer than the capacity and a share of empty rows (the
    plan places them too; prepared rows always hold at least the EOS token)."""
    out = [max(1, min(int(rng.lognormvariate(np.log(capacity / 8), 1.0)), capacity + 5)) for _ in range(n)]
    return [0 if rng.random() < empty else x for x in out]


@pytest.mark.parametrize("seed", range(6))
def test_plan_equals_the_reference_on_random_lengths(seed):
    rng = random.Random(seed)
    capacity = rng.choice([7, 32, 100, 1024])
    lengths = _lengths(rng, rng.choice([1, 50, 3000]), capacity)
    expected = reference_best_fit_decreasing(lengths, capacity)
    assert best_fit_decreasing(lengths, capacity) == expected
    rows, offsets = pack_plan(np.array(lengths), capacity)
    assert rows.dtype == offsets.dtype == np.int64 and offsets[0] == 0 and offsets[-1] == len(lengths)
    assert [rows[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])] == expected


def _split(n: int, capacity: int, seed: int) -> tuple[datasets.Dataset, list[dict]]:
    rng = random.Random(seed)
    rows = []
    for length in _lengths(rng, n, capacity, empty=0.0):
        ids = [rng.randrange(3, 250) for _ in range(length)]
        prompt = length // 3
        rows.append(
            {"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * prompt + ids[prompt:]}
        )
    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "attention_mask": datasets.List(datasets.Value("int8")),
            "labels": datasets.List(datasets.Value("int32")),
        }
    )
    return datasets.Dataset.from_list(rows, features=features), rows


def test_packed_rows_equal_the_reference_from_a_memory_mapped_split(tmp_path: Path):
    split, rows = _split(400, 64, seed=1)
    split.save_to_disk(str(tmp_path / "train"))
    mapped = datasets.load_from_disk(str(tmp_path / "train"))
    packed, stats = pack_split(mapped, 64)
    expected = reference_pack_rows(rows, 64)
    assert packed.to_list() == expected
    assert len(packed) == stats["packs"] == len(expected)
    assert packed[len(packed) - 1] == packed[-1] == expected[-1]
    assert stats["tokens"] == sum(len(r["input_ids"]) for r in rows)
    with pytest.raises(IndexError):
        packed[len(packed)]
    # a DataLoader worker gets the packed split pickled (train.num_workers > 0): the same batches
    collate = make_collator(True, "causal_lm", 0)
    loader = torch.utils.data.DataLoader(packed, batch_size=8, num_workers=1, collate_fn=collate)
    for batch, start in zip(loader, range(0, len(expected), 8)):
        assert torch.equal(batch["input_ids"], collate(expected[start : start + 8])["input_ids"])


def test_split_with_an_indices_mapping_packs_its_own_row_order():
    split, rows = _split(300, 32, seed=2)
    order = list(range(299, -1, -3)) + list(range(0, 300, 3))  # select() keeps an indices mapping
    picked = split.select(order)
    assert row_lengths(picked).tolist() == [len(rows[i]["input_ids"]) for i in order]
    assert pack_split(picked, 32)[0].to_list() == reference_pack_rows([rows[i] for i in order], 32)


def test_length_grouping_gets_the_lengths_transformers_would_read_example_by_example(monkeypatch):
    """train.group_by_length: the sampler is transformers' LengthGroupedSampler with the same lengths it
    computes itself (so the same order), taken from the plan / Arrow without building a single pack."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    split, rows = _split(300, 48, seed=3)
    packed, _ = pack_split(split, 48)
    by_reading = LengthGroupedSampler(8, dataset=packed).lengths
    assert example_lengths(split) == [len(r["input_ids"]) for r in rows]
    monkeypatch.setattr(type(packed), "__getitem__", lambda self, k: pytest.fail("a pack was built"))
    assert example_lengths(packed) == by_reading
    assert example_lengths([{"input_ids": [1]}]) is None  # anything else: the Trainer reads it as usual
