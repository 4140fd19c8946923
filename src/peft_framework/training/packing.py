"""train.packing: the train split packed across the epoch into sequences of at most data.max_seq_len.

Best-fit decreasing over the whole split (trl's `pack_dataset(strategy="bfd")` idea, written here so trl
is not a dependency): rows taken longest first (ties in the split's order), each into the open pack with
the least room that still fits it. Deterministic: it depends only on the prepared split's order and
lengths. Each pack holds its rows' input_ids and labels concatenated, position_ids restarting at 0 per row
(transformers' masking turns them into a block-diagonal causal mask, so no row attends to another) and
each row's first label set to -100 (in an unpacked row the first label is never predicted; packed, it would
be predicted from the previous row's last token). The Trainer's seeded sampler shuffles packs, and a
mid-epoch resume skips batches of the same packed dataset, so both stay exact.

Memory stays flat in the split's size (1M rows fit a 24 GB machine with room to spare): lengths are read
from Arrow, the plan is two int64 arrays (`pack_plan`), and a pack is assembled from the memory-mapped split
only when the Trainer's DataLoader asks for it (`PackedSplit`); nothing of the tokens is copied up front.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator
from typing import Any

import numpy as np

from peft_framework.errors import DataError
from peft_framework.training.collator import IGNORE_INDEX

_CHUNK = 1 << 16  # rows per step when reading lengths or walking the plan: Python objects stay this few


def pack_plan(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit decreasing as compact arrays: (row indices of all packs one after another, each pack's rows
    in the split's order; offsets, pack k = rows[offsets[k]:offsets[k + 1]]). A row longer than `capacity`
    gets a pack of its own.

    Rows go longest first (ties in the split's order) into the open pack with the least free room that
    still fits, among those the one opened first. Open packs are kept by free room: a heap of pack ids per
    free-room value and a sorted list of the values in use, at most `capacity` long, so a step costs a
    bisect over at most `capacity` values and a heap operation, whatever the number of open packs."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    pack_of = np.empty(len(lengths), dtype=np.int64)
    frees: list[int] = []  # free-room values with an open pack, ascending
    by_free: dict[int, list[int]] = {}  # free room -> heap of pack ids
    packs = 0
    for start in range(0, len(order), _CHUNK):
        rows = order[start : start + _CHUNK]
        chosen = []
        for n in lengths[rows].tolist():
            at = bisect.bisect_left(frees, n)
            if at < len(frees):
                free = frees[at]
                heap = by_free[free]
                p = heapq.heappop(heap)
                if not heap:
                    del frees[at], by_free[free]
            else:
                free, p = capacity, packs
                packs += 1
            chosen.append(p)
            left = free - n
            if left > 0:
                heap = by_free.get(left)
                if heap is None:
                    bisect.insort(frees, left)
                    by_free[left] = heap = []
                heapq.heappush(heap, p)
        pack_of[rows] = chosen
    rows = np.argsort(pack_of, kind="stable")  # grouped by pack, each pack's rows in the split's order
    offsets = np.zeros(packs + 1, dtype=np.int64)
    np.cumsum(np.bincount(pack_of, minlength=packs), out=offsets[1:])
    return rows, offsets


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices per pack (`pack_plan` as lists); a row longer than `capacity` gets a pack of its own."""
    rows, offsets = pack_plan(np.asarray(lengths, dtype=np.int64), capacity)
    return [rows[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def row_lengths(split: Any) -> np.ndarray:
    """Token count of every row of a `datasets.Dataset`, read as Arrow list lengths a chunk at a time (no
    Python list of the tokens; a memory-mapped split stays on disk)."""
    import pyarrow.compute as pc

    ids = split.select_columns(["input_ids"]).with_format("arrow")
    parts = [pc.list_value_length(batch["input_ids"]).to_numpy() for batch in ids.iter(batch_size=_CHUNK)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def example_lengths(dataset: Any) -> list[int] | None:
    """Token count of every example of a train/eval dataset, without reading the examples: the packing plan's
    pack lengths, or a `datasets.Dataset`'s input_ids lengths from Arrow. None for other datasets."""
    import datasets

    if isinstance(dataset, PackedSplit):
        return dataset.lengths.tolist()
    if isinstance(dataset, datasets.Dataset) and "input_ids" in dataset.column_names:
        return row_lengths(dataset).tolist()
    return None


class PackedSplit:
    """The packed train split as a map-style dataset built on demand: pack k reads its rows from the
    (memory-mapped) split when asked, so only the plan (two int64 arrays) stays in memory. Items are dicts of
    Python lists: input_ids and labels concatenated, position_ids restarting at 0 per row, each row's
    first label -100. transformers' Trainer needs only `len()` and indexing (its samplers, and the batch
    skipping of a mid-epoch resume, work on indices)."""

    def __init__(self, split: Any, rows: np.ndarray, offsets: np.ndarray, row_tokens: np.ndarray) -> None:
        self._split = split.select_columns(["input_ids", "labels"]).with_format(None)
        self._rows = rows
        self._offsets = offsets
        #: tokens in each pack (the sum of its rows' lengths), for length-grouped sampling
        self.lengths = (
            np.add.reduceat(row_tokens[rows], offsets[:-1])
            if len(offsets) > 1
            else np.zeros(0, dtype=np.int64)
        )

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, k: int) -> dict[str, list[int]]:
        if not -len(self) <= k < len(self):
            raise IndexError(f"pack {k} out of range for {len(self)} packs")
        k %= len(self)
        part = self._split[self._rows[self._offsets[k] : self._offsets[k + 1]].tolist()]
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for row_ids, row_labels in zip(part["input_ids"], part["labels"], strict=True):
            ids.extend(row_ids)
            labels.append(IGNORE_INDEX)
            labels.extend(row_labels[1:])
            pos.extend(range(len(row_ids)))
        return {"input_ids": ids, "labels": labels, "position_ids": pos}

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        return (self[k] for k in range(len(self)))

    def to_list(self) -> list[dict[str, list[int]]]:
        """Every pack, in order (as `datasets.Dataset.to_list`; for small splits: tests, benches)."""
        return list(self)


def pack_split(split: Any, max_seq_len: int) -> tuple[PackedSplit, dict[str, Any]]:
    """(the packed split, a `PackedSplit` with input_ids / labels / position_ids, stats for the manifest)."""
    lengths = row_lengths(split)
    rows, offsets = pack_plan(lengths, max_seq_len)
    packs = len(offsets) - 1
    tokens = int(lengths.sum())
    stats = {
        "rows": len(lengths),
        "packs": packs,
        "tokens": tokens,
        "max_seq_len": max_seq_len,
        "fill_ratio": round(tokens / (packs * max_seq_len), 4) if packs else 0.0,
    }
    return PackedSplit(split, rows, offsets, lengths), stats


def pack_prepared(data: Any, config: Any) -> tuple[Any, dict[str, Any] | None]:
    """`data` with its train split packed when train.packing is on (causal LM), and the packing stats
    for the manifest; unchanged and None otherwise (make_collator rejects packing for other tasks)."""
    import dataclasses
    import logging

    if not config.train.packing or config.model.task != "causal_lm":
        return data, None
    packed, stats = pack_split(data.train, config.data.max_seq_len)
    longest = int(packed.lengths.max()) if len(packed) else 0
    if longest > config.data.max_seq_len:  # a row longer than allowed got a pack of its own
        raise DataError(
            f"data.max_seq_len: {config.data.max_seq_len}, but the prepared train split has a row of {longest} "
            f"tokens; packs may not exceed data.max_seq_len: re-run prepare with "
            f"data.max_seq_len={config.data.max_seq_len}"
        )
    logging.getLogger(__name__).info(
        "train.packing: %d rows (%d tokens) packed into %d sequences of <= %d tokens, %.1f%% filled",
        stats["rows"],
        stats["tokens"],
        stats["packs"],
        stats["max_seq_len"],
        100 * stats["fill_ratio"],
    )
    return dataclasses.replace(data, train=packed), stats
