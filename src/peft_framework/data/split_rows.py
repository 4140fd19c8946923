"""The row numbers of a split, spooled to an Arrow file as they are found, and the split selected from it.

`Dataset.select(rows)` turns `rows` into a Python list (and an in-memory indices table) whatever it is
given: ~40 bytes per row of heap for a million-row split. Here the row numbers go to an indices file as
`datasets` itself writes them (an Arrow stream with one uint64 column, `indices`) in blocks, and the
split is the dataset over the same Arrow table with that file memory-mapped as its indices mapping: the
same rows, in the same order, as `select` gives, and `save_to_disk` writes the same bytes.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np
import pyarrow as pa

_SCHEMA = pa.schema([pa.field("indices", pa.uint64())])
_BLOCK = 65_536


class SplitRows:
    """Ascending row numbers of one split of a dataset, written to `path` in blocks of `_BLOCK` rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None
        self._block = array("Q")
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, _SCHEMA)

    def add(self, row: int) -> None:
        if self.first is None:
            self.first = row
        self.last = row
        self.count += 1
        self._block.append(row)
        if len(self._block) >= _BLOCK:
            self._flush()

    def _flush(self) -> None:
        if self._block:
            column = pa.array(np.frombuffer(self._block, dtype=np.uint64))
            self._writer.write_batch(pa.record_batch([column], schema=_SCHEMA))
            self._block = array("Q")

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._sink.close()

    def select(self, ds):
        """`ds.select(rows)` for these rows, without a list of them in memory (call after `close`).

        `ds` must have no indices mapping of its own. Contiguous rows (or none) go through `select` itself,
        which slices the table for them, as it would for the list."""
        import datasets
        from datasets.table import MemoryMappedTable

        if self.count == 0:
            return ds.select([])
        if self.last - self.first + 1 == self.count:  # ascending and distinct: contiguous
            return ds.select(range(self.first, self.last + 1))
        if ds._indices is not None:
            raise ValueError("SplitRows.select needs a dataset without an indices mapping")
        return datasets.Dataset(
            ds.data,
            info=ds.info.copy(),
            split=ds.split,
            indices_table=MemoryMappedTable.from_file(str(self.path)),
            fingerprint=f"{ds._fingerprint}-{self.path.stem}",
        )
