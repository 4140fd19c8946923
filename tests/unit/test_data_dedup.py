"""De-duplication from numpy arrays of digests (`dedup.duplicates`) and split row files (`split_rows`):
the same outcome as the row-by-row `pipeline.Deduper` and `Dataset.select(list)`."""

from __future__ import annotations

import hashlib
import random

import datasets
import pytest

from peft_framework.data import dedup, split_rows
from peft_framework.data.pipeline import Deduper
from peft_framework.data.rows import Reason

FEATURES = datasets.Features(
    {
        "problem": datasets.Value("string"),
        "exact": datasets.Value("binary"),
        "normalized": datasets.Value("binary"),
        "source": datasets.Value("string"),
    }
)


def _digest(i: int) -> bytes:
    return hashlib.blake2b(b"%d" % i, digest_size=16).digest()


def _rows(n: int, seed: int) -> list[dict]:
    """Rows drawn from a small pool of texts (many repeats), some with a token problem. Digests that share
    one 8-byte half with another digest are in the pool too: only equality of all 16 bytes is a repeat."""
    rng = random.Random(seed)
    a, b = _digest(1), _digest(2)
    pool = [_digest(i) for i in range(3, 12)] + [a, b, a[:8] + b[8:], b[:8] + a[8:]]
    rows = []
    for i in range(n):
        normalized = rng.choice(pool)
        exact = normalized if rng.random() < 0.5 else rng.choice(pool)
        rows.append(
            {
                "problem": "too_few_tokens" if rng.random() < 0.2 else None,
                "exact": exact,
                "normalized": normalized,
                "source": f"f.jsonl:{i + 1}",
            }
        )
    return rows


def _reference(rows: list[dict], mode: str) -> list[tuple[int, int]]:
    """(row, row it repeats) by checking each row against the rows kept so far, as `process` does."""
    deduper, out = Deduper(mode), []
    for i, row in enumerate(rows):
        if row["problem"] is not None:
            continue
        dup = deduper.check(row["exact"], row["normalized"])
        if dup is None:
            deduper.add(row["exact"], row["normalized"], i)
        else:
            out.append((i, dup[1]))
    return out


@pytest.mark.parametrize("mode", ["exact", "normalized", "none"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_duplicates_match_row_by_row_dedup(mode, seed, monkeypatch):
    monkeypatch.setattr(dedup, "_READ_BATCH", 7)  # digests read across many batches
    rows = _rows(300, seed)
    ds = datasets.Dataset.from_list(rows, features=FEATURES)
    dup_rows, first_rows = dedup.duplicates(ds, mode)
    got = list(zip(dup_rows.tolist(), first_rows.tolist()))
    assert got == _reference(rows, mode)
    if mode != "none":
        assert got  # the pool makes repeats
    # the exact-vs-normalized reason of `Deduper` follows from the first row's exact digest
    deduper = Deduper(mode)
    for i, row in enumerate(rows):
        if row["problem"] is None and deduper.check(row["exact"], row["normalized"]) is None:
            deduper.add(row["exact"], row["normalized"], i)
    for row, first in got:
        reason = deduper.check(rows[row]["exact"], rows[row]["normalized"])[0]
        same = mode == "exact" or rows[first]["exact"] == rows[row]["exact"]
        assert reason == (Reason.DUPLICATE_EXACT if same else Reason.DUPLICATE_NORMALIZED)


def test_duplicates_of_nothing():
    empty = datasets.Dataset.from_dict({name: [] for name in FEATURES}, features=FEATURES)
    assert [len(a) for a in dedup.duplicates(empty, "exact")] == [0, 0]
    one = datasets.Dataset.from_list(_rows(1, 0), features=FEATURES)
    assert [len(a) for a in dedup.duplicates(one, "normalized")] == [0, 0]


def _arrow_files(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.arrow"))}


@pytest.mark.parametrize(
    "rows",
    [[], [5], list(range(3, 40)), [0, 2, 3, 7, 8, 9, 30, 59], list(range(0, 60, 3))],
    ids=["none", "one", "contiguous", "gaps", "every-third"],
)
def test_split_rows_select_like_select_of_a_list(rows, tmp_path, monkeypatch):
    monkeypatch.setattr(split_rows, "_BLOCK", 4)  # several blocks in the file
    ds = datasets.Dataset.from_dict({"x": list(range(100, 160)), "t": [f"r{i}" for i in range(60)]})
    writer = split_rows.SplitRows(tmp_path / "rows-train.arrow")
    for row in rows:
        writer.add(row)
    writer.close()
    got, want = writer.select(ds), ds.select(rows)
    assert got.to_dict() == want.to_dict()
    if rows:
        got.save_to_disk(str(tmp_path / "got"))
        want.save_to_disk(str(tmp_path / "want"))
        assert _arrow_files(tmp_path / "got") == _arrow_files(tmp_path / "want")
    if len(rows) > 1:  # a further select (weighted sources) composes with the mapping
        assert got.select([1, 0, 1]).to_dict() == want.select([1, 0, 1]).to_dict()
