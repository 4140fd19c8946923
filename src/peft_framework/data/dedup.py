"""De-duplication of the encoded rows at once, from their digests, in numpy arrays instead of a dict.

`prepare`'s rule (`pipeline.Deduper`, applied in input order): a row is kept unless it has a token
problem or repeats a row kept before it. So the row kept for a digest is the first problem-free row
with that digest, and every later problem-free row with the same digest repeats exactly that row; the
outcome depends only on the digests, not on the order they are looked at. `duplicates` computes it
with one stable sort of the full 128-bit digests (exact: the same equality as the dict's), holding about
30 bytes per row while it runs and only the duplicate pairs after, where a dict of digests held ~250
bytes per kept row through the whole pass (issue 15: the heap flat in the row count).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_DIGEST_BYTES = 16  # pipeline._digest's digest_size
_READ_BATCH = 65_536


def _digest_words(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """(rows, 2) uint64 view of a column of 16-byte digests (the words' order does not matter for equality)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    fixed = column.cast(pa.binary(_DIGEST_BYTES))  # fails on a value of another length
    data = fixed.buffers()[1]
    words = np.frombuffer(data, dtype=np.uint64, count=2 * len(fixed), offset=fixed.offset * _DIGEST_BYTES)
    return words.reshape(-1, 2)


def duplicates(encoded, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, firsts): the rows of `encoded` that repeat a kept row under `mode` ("none", "exact" or
    "normalized"), ascending, and for each the row it repeats. `encoded` has the columns `problem`
    (null when the row passed the token checks), `exact` and `normalized` (16-byte digests)."""
    none = np.zeros(0, dtype=np.int64)
    n = len(encoded)
    if mode == "none" or n == 0:
        return none, none
    key = "exact" if mode == "exact" else "normalized"
    # the two 8-byte halves of the digests of the rows without a token problem, in input order
    halves = np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.uint64)
    eligible = np.zeros(n, dtype=bool)
    m = at = 0
    columns = encoded.select_columns(["problem", key]).with_format("arrow")
    for batch in columns.iter(batch_size=_READ_BATCH):
        ok = batch.column("problem").is_null().to_numpy()
        words = _digest_words(batch.column(key))[ok]
        for half, column in zip(halves, words.T):
            half[m : m + len(words)] = column
        eligible[at : at + len(ok)] = ok
        m += len(words)
        at += len(ok)
    if m < 2:
        return none, none
    hi, lo = (half[:m] for half in halves)
    del halves
    order = np.lexsort((lo, hi))  # stable: equal digests stay in input order
    # whether the digest at order[i + 1] equals the one at order[i]; each half freed once compared
    sorted_half = hi[order]
    del hi
    same = sorted_half[1:] == sorted_half[:-1]
    sorted_half = lo[order]
    del lo
    same &= sorted_half[1:] == sorted_half[:-1]
    del sorted_half
    starts = np.concatenate(([True], ~same))  # the first of each run of equal digests in `order`
    del same
    head = np.arange(m)  # position in `order` of the first of each position's run
    head[~starts] = 0
    np.maximum.accumulate(head, out=head)
    repeat = np.flatnonzero(~starts)
    del starts
    rows = np.flatnonzero(eligible)  # row in `encoded` of each digest
    dup_rows, first_rows = rows[order[repeat]], rows[order[head[repeat]]]
    by_row = np.argsort(dup_rows, kind="stable")
    return dup_rows[by_row], first_rows[by_row]
