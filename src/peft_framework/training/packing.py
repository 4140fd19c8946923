"""train.packing: the train split packed across the epoch into sequences of at most data.max_seq_len.

Best-fit decreasing over the whole split (trl's `pack_dataset(strategy="bfd")` idea, written here so trl
is not a dependency): rows taken longest first (ties in the split's order), each into the open pack with
the least room that still fits it. Deterministic: it depends only on the prepared split's order and
lengths. Each pack holds its rows' input_ids and labels concatenated, position_ids restarting at 0 per row
(transformers' masking turns them into a block-diagonal causal mask, so no row attends to another) and
each row's first label set to -100 (in an unpacked row the first label is never predicted; packed, it would
be predicted from the previous row's last token). The Trainer's seeded sampler shuffles packs, and a
mid-epoch resume skips batches of the same packed dataset, so both stay exact.
"""

from __future__ import annotations

import bisect
from typing import Any

from peft_framework.training.collator import IGNORE_INDEX


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices per pack; a row longer than `capacity` gets a pack of its own."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, pack index), sorted: best fit = first that fits
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
        pack.sort()  # rows in the split's order inside a pack
    return packs


def pack_split(split: Any, max_seq_len: int) -> tuple[Any, dict[str, Any]]:
    """(packed `datasets.Dataset` with input_ids / labels / position_ids, stats for the manifest)."""
    import datasets

    columns = split.select_columns(["input_ids", "labels"]).to_dict()
    ids_col, labels_col = columns["input_ids"], columns["labels"]
    lengths = [len(r) for r in ids_col]
    packs = best_fit_decreasing(lengths, max_seq_len)
    out: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    for pack in packs:
        ids, labels, pos = [], [], []
        for i in pack:
            ids.extend(ids_col[i])
            labels.append(IGNORE_INDEX)
            labels.extend(labels_col[i][1:])
            pos.extend(range(lengths[i]))
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["position_ids"].append(pos)
    packed = datasets.Dataset.from_dict(out)
    tokens = sum(lengths)
    stats = {
        "rows": len(lengths),
        "packs": len(packs),
        "tokens": tokens,
        "max_seq_len": max_seq_len,
        "fill_ratio": round(tokens / (len(packs) * max_seq_len), 4) if packs else 0.0,
    }
    return packed, stats


def pack_prepared(data: Any, config: Any) -> tuple[Any, dict[str, Any] | None]:
    """`data` with its train split packed when train.packing is on (causal LM), and the packing stats
    for the manifest; unchanged and None otherwise (make_collator rejects packing for other tasks)."""
    import dataclasses
    import logging

    if not config.train.packing or config.model.task != "causal_lm":
        return data, None
    packed, stats = pack_split(data.train, config.data.max_seq_len)
    logging.getLogger(__name__).info(
        "train.packing: %d rows (%d tokens) packed into %d sequences of <= %d tokens, %.1f%% filled",
        stats["rows"],
        stats["tokens"],
        stats["packs"],
        stats["max_seq_len"],
        100 * stats["fill_ratio"],
    )
    return dataclasses.replace(data, train=packed), stats
