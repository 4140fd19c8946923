"""Weighted mixing of `data.source` entries: `{path: ..., weight: W}` or `{path: ..., count: N}`.

Semantics (exact and deterministic):

- Mixing runs on the rows each entry KEEPS, after reading, cleaning, validation, tokenisation and
  de-duplication. Those steps see every row once, as without mixing, so the rejected file and the
  read/kept/rejected counts are the same as for a plain list, and a copy made by mixing is never
  rejected as a duplicate of itself. Rows that repeat another entry's row are still de-duplicated as
  usual (the first occurrence, in `data.source` order, is kept; weights do not change which).
- An entry's target is `count`, or `floor(weight * kept + 0.5)`; a plain entry keeps each row once.
  With `kept` rows and target `t`: every kept row `t // kept` times (whole passes), plus `t % kept`
  distinct rows drawn without replacement by `random.Random("<data.split.seed>:mix:<i>")` (i: the
  entry's index in data.source). So `count: N` gives exactly N rows, `weight: 2` each row twice,
  `weight: 0.5` half of them, the same ones on every run.
- Each copy stays in its row's split (the split is a hash of the row's content, not of the weights), so
  no prompt straddles train and test. Within a split rows keep their input order, copies next to their
  row (training shuffles). The split sizes in the manifest and report count the copies.
- An entry is the files it names (a glob or directory may name several); a file named by two entries is
  an error naming both (it would otherwise belong to the first, and the second's weight would get
  nothing). Weights (finite, <= 1000) and counts (<= 1e8) are bounded at validate time, the rows they
  give together (at most 1e8) before any copy is made.

Memory: one small integer per kept row (its multiplicity), as for the split row lists; the prepared rows
themselves stay in Arrow files (`Dataset.select`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from peft_framework.config.schema import DataConfig
from peft_framework.config.source_entries import MAX_MIXED_ROWS
from peft_framework.data.pipeline import SPLITS
from peft_framework.data.sources import Source, resolve_sources
from peft_framework.errors import DataError

_BATCH = 10_000


def entry_path(entry: Any) -> str:
    """The path of a `data.source` list entry (a string or a weighted entry)."""
    return entry if isinstance(entry, str) else entry.path


def source_paths(source: Any) -> str | list[str]:
    """`data.source` with weighted entries reduced to their paths (what `resolve_sources` takes)."""
    return source if isinstance(source, str) else [entry_path(e) for e in source]


def resolve(dc: DataConfig, root: Path) -> list[Source]:
    """`resolve_sources` of `data.source`; with weighted entries, an entry that names no data is an error
    naming `data.source[i]`."""
    if is_mixed(dc):
        named_by: dict[str, int] = {}
        for i, entry in enumerate(dc.source):
            try:
                files = resolve_sources(entry_path(entry), dc.format, root)
            except DataError as exc:
                raise DataError(f"data.source[{i}]: {exc.args[0]}", exc.problems) from None
            for src in files:
                j = named_by.setdefault(src.display, i)
                if j != i:  # the file would belong to entry j: entry i's weight or count would get nothing
                    raise DataError(
                        f"data.source[{i}]: {entry_path(entry)!r} names {src.display}, which "
                        f"data.source[{j}] ({entry_path(dc.source[j])!r}) names already; allowed: each file "
                        "in one entry (give that entry the weight or count)"
                    )
    return resolve_sources(source_paths(dc.source), dc.format, root)


def is_mixed(dc: DataConfig) -> bool:
    """Whether any entry has a weight or a count (else prepare runs exactly as for a plain list)."""
    return not isinstance(dc.source, str) and any(not isinstance(e, str) for e in dc.source)


def _target(entry: Any, kept: int) -> int:
    if isinstance(entry, str) or (entry.weight is None and entry.count is None):
        return kept
    if entry.count is not None:
        return entry.count
    return int(np.floor(entry.weight * kept + 0.5))


def multiplicities(kept: int, target: int, seed: int, index: int) -> np.ndarray:
    """How often each of `kept` rows is taken for `target` rows (see the module docstring)."""
    if kept == 0:
        return np.zeros(0, dtype=np.int64)
    passes, rest = divmod(target, kept)
    mult = np.full(kept, passes, dtype=np.int64)
    if rest:
        chosen = random.Random(f"{seed}:mix:{index}").sample(range(kept), rest)
        mult[np.asarray(chosen, dtype=np.int64)] += 1
    return mult


def _entry_of_display(dc: DataConfig, sources: list[Source], root: Path) -> dict[str, int]:
    """display name of each source file -> index of the first `data.source` entry that names it."""
    owner: dict[str, int] = {}
    for i, entry in enumerate(dc.source):
        for src in resolve_sources(entry_path(entry), dc.format, root):
            owner.setdefault(src.display, i)
    return {s.display: owner[s.display] for s in sources}


def _row_entries(ds, owner: dict[str, int]) -> np.ndarray:
    """The entry index of every row of a prepared split, from its `source` column (file:line / file#i)."""
    out = np.empty(len(ds), dtype=np.int64)
    at = 0
    for batch in ds.select_columns(["source"]).iter(batch_size=_BATCH):
        for where in batch["source"]:
            head = where.rpartition(":")[0]
            if head not in owner:
                head = where.rpartition("#")[0]
            out[at] = owner[head]
            at += 1
    return out


def _check_total(dc: DataConfig, kepts: list[int], targets: list[int]) -> None:
    """The mix stays within MAX_MIXED_ROWS rows (weights are bounded at validate time, but the rows they
    give depend on how many rows each entry keeps)."""
    if sum(targets) <= MAX_MIXED_ROWS:
        return
    parts = ", ".join(
        f"data.source[{i}]: {kept} kept x weight {entry.weight:g} = {target}"
        for i, (entry, kept, target) in enumerate(zip(dc.source, kepts, targets, strict=True))
        if not isinstance(entry, str) and entry.weight is not None
    )
    raise DataError(
        f"data.source: the weights and counts give {sum(targets)} rows ({parts}); allowed: at most "
        f"{MAX_MIXED_ROWS} in all: lower the weights"
    )


def apply(splits: dict[str, Any], stats: Any, sources: list[Source], dc: DataConfig, root: Path):
    """The splits with each entry's rows repeated/sampled per its weight or count, `stats.splits` set to
    the new sizes; returns (splits, per-entry report or None when no entry is weighted)."""
    if not is_mixed(dc):
        return splits, None
    owner = _entry_of_display(dc, sources, root)
    entries = {split: _row_entries(ds, owner) for split, ds in splits.items()}
    # every kept row of an entry, in (split, row) order: the order the sample is drawn in
    mult = {split: np.ones(len(ds), dtype=np.int64) for split, ds in splits.items()}
    wheres = [{split: np.flatnonzero(entries[split] == i) for split in splits} for i in range(len(dc.source))]
    kepts = [sum(len(rows) for rows in where.values()) for where in wheres]
    targets = [_target(entry, kept) for entry, kept in zip(dc.source, kepts, strict=True)]
    _check_total(dc, kepts, targets)
    report = []
    for i, entry in enumerate(dc.source):
        where, kept, target = wheres[i], kepts[i], targets[i]
        m = multiplicities(kept, target, dc.split.seed, i)
        at = 0
        for split in SPLITS:
            rows = where.get(split)
            if rows is None:
                continue
            mult[split][rows] = m[at : at + len(rows)]
            at += len(rows)
        files = [s for s in sources if owner[s.display] == i]
        read = sum(s.rows for s in files)
        row: dict[str, Any] = {"path": entry_path(entry)}
        if not isinstance(entry, str):
            row.update(weight=entry.weight, count=entry.count)
        row.update(
            files=len(files),
            read=read,
            kept=kept,
            rejected=read - kept,
            sampled=int(m.sum()),
            sampled_by_split={
                split: int(mult[split][where[split]].sum()) for split in SPLITS if split in where
            },
        )
        report.append(row)
    out = {}
    for split, ds in splits.items():
        out[split] = ds.select(np.repeat(np.arange(len(ds), dtype=np.int64), mult[split]))
        stats.splits[split] = len(out[split])
    return out, report


def add_to_report(report: dict[str, Any], mixing: list[dict[str, Any]] | None) -> None:
    """The per-entry counts into the full report (`report.json`), only when sources are mixed (so a plain
    list's report is byte-identical to before)."""
    if mixing is None:
        return
    report["mixing"] = mixing
    report["rows"]["sampled"] = sum(row["sampled"] for row in mixing)  # -> rows_sampled in data.json
    for i, row in enumerate(mixing):
        if row["files"] == 0:
            report["warnings"].append(
                f"data.source[{i}] ({row['path']}): every file it names belongs to an earlier entry "
                "(a file is read once, for the first entry naming it); nothing sampled for it"
            )
        elif row["kept"] == 0 and (row.get("count") or row.get("weight")):
            report["warnings"].append(f"data.source[{i}] ({row['path']}): no row kept, nothing to sample")
