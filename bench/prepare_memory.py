"""Heap growth of `prepare` per row: the RssAnon peak of the prepare child at several row counts.

    python bench/prepare_memory.py --rows 20000 200000 [--code before=/tmp/before after=.] [--json out.json]

For each code tree (`NAME=DIR`: a checkout whose `src/` goes first on the child's PYTHONPATH; default: this
one) and each row count, runs `prepare_scale.py`'s prepare child on the same generated rows and samples
`RssAnon` of the child and its workers every `--interval` seconds (the heap, without the memory-mapped
Arrow pages that `ru_maxrss` counts). Prints one JSON line per run and, per tree, the heap bytes per extra
row between the smallest and the largest row count: what grows with the data and stays in memory; the
same for the peak from the de-duplicate-and-split pass on (`decide_`: that pass and the save), which
tells the pass's growth from the tokenise pass's sample-to-sample wobble (~10 MB) that sets the overall peak;
and the `tracemalloc` peak of that pass alone (`decide_traced_`: Python objects and numpy arrays, not Arrow
buffers; the child traces only `stream._decide_pass`).

    python bench/prepare_memory.py --component --rows 200000 1000000

`--component`: only the decide pass's bookkeeping, in this process, on an Arrow file of distinct synthetic
digests (no tokenizer; seconds per million rows): the `tracemalloc` peak (Python objects and numpy
arrays, not Arrow buffers) of the row-by-row way (`pipeline.Deduper` dict, a list of row numbers per
split, `Dataset.select(list)`) beside `dedup.duplicates` + `split_rows.SplitRows`, per row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from prepare_scale import generate, run_child  # noqa: E402


def _env(code: Path) -> dict[str, str]:
    paths = [str(code / "src"), str(code)] + [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]
    return {**os.environ, "PYTHONPATH": ":".join(paths), "PREPARE_TRACE_DECIDE": "1"}


def _binary16(words):
    """A binary column of 16-byte values from a (rows, 2) int64 array."""
    import pyarrow as pa

    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(words), [None, pa.py_buffer(words.tobytes())]
    )
    return fixed.cast(pa.binary())


def _synthetic(path: Path, rows: int):
    """A memory-mapped dataset of `rows` rows with distinct random digests, no token problem, splits 8:1:1."""
    import datasets
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    digests = {k: rng.integers(0, 2**63, size=(rows, 2), dtype=np.int64) for k in ("exact", "normalized")}
    columns = {
        "problem": pa.nulls(rows, pa.string()),
        **{k: _binary16(v) for k, v in digests.items()},
        "split": pa.array(np.array(["train"] * 8 + ["validation", "test"])[np.arange(rows) % 10]),
    }
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, pa.table(columns).schema) as writer:
        writer.write_table(pa.table(columns), max_chunksize=1000)
    return datasets.Dataset.from_file(str(path))


def _row_by_row(ds, work: Path) -> None:
    """The decide pass's bookkeeping before: a dict of digests and a list of row numbers per split."""
    from peft_framework.data.pipeline import SPLITS, Deduper

    deduper, indices, row = Deduper("normalized"), {s: [] for s in SPLITS}, 0
    for batch in ds.select_columns(["exact", "normalized", "split"]).iter(batch_size=1000):
        for exact, normalized, split in zip(batch["exact"], batch["normalized"], batch["split"]):
            if deduper.check(exact, normalized) is None:
                deduper.add(exact, normalized, row)
                indices[split].append(row)
            row += 1
    [ds.select(rows) for rows in indices.values()]


def _at_once(ds, work: Path) -> None:
    """The decide pass's bookkeeping now: duplicates from numpy arrays, row numbers spooled to files."""
    from peft_framework.data.dedup import duplicates
    from peft_framework.data.pipeline import SPLITS
    from peft_framework.data.split_rows import SplitRows

    dup_rows, _ = duplicates(ds, "normalized")
    assert len(dup_rows) == 0
    splits, row = {s: SplitRows(work / f"rows-{s}.arrow") for s in SPLITS}, 0
    for batch in ds.select_columns(["split"]).iter(batch_size=1000):
        for split in batch["split"]:
            splits[split].add(row)
            row += 1
    for rows in splits.values():
        rows.close()
    [rows.select(ds) for rows in splits.values()]


def component(rows_list: list[int]) -> None:
    import gc
    import tracemalloc

    import peft_framework.data.dedup  # noqa: F401  (imports outside the traced span)
    import peft_framework.data.pipeline  # noqa: F401
    import peft_framework.data.split_rows  # noqa: F401

    out = []
    for rows in rows_list:
        entry: dict = {"rows": rows}
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            ds = _synthetic(Path(tmp) / "encoded.arrow", rows)
            for name, fn in (("row_by_row", _row_by_row), ("at_once", _at_once)):
                gc.collect()
                tracemalloc.start()
                start = tracemalloc.get_traced_memory()[0]
                fn(ds, Path(tmp))
                peak = tracemalloc.get_traced_memory()[1] - start
                tracemalloc.stop()
                entry[name] = {"peak_mib": round(peak / 2**20, 1), "bytes_per_row": round(peak / rows, 1)}
        print(json.dumps(entry), flush=True)
        out.append(entry)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--code", nargs="+", default=[f"this={Path(__file__).resolve().parent.parent}"])
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between RssAnon samples")
    ap.add_argument("--num-proc", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--component", action="store_true", help="the decide pass's bookkeeping alone")
    args = ap.parse_args()
    if args.component:
        component(args.rows)
        return
    trees = dict(item.split("=", 1) for item in args.code)
    rows = sorted(args.rows)
    peaks: dict[str, dict[int, int]] = {name: {} for name in trees}
    decide: dict[str, dict[int, int]] = {name: {} for name in trees}  # from the decide pass on
    traced: dict[str, dict[int, int]] = {name: {} for name in trees}  # tracemalloc, the decide pass
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for n in rows:
            source = Path(tmp) / f"rows-{n}.jsonl"
            generate(source, n)
            for name, code in trees.items():  # the trees back to back on the same rows
                got = run_child(
                    "prepare", source, args.num_proc, interval=args.interval, env=_env(Path(code))
                )
                peaks[name][n] = got["peak_anon_kb"]
                decide[name][n] = got["peak_anon_decide_kb"]
                traced[name][n] = got.get("decide_traced_kb", 0)
                print(json.dumps({"code": name, "rows": n, **got}), flush=True)
            source.unlink()
    summary = {}
    for name, by_rows in peaks.items():
        lo, hi = rows[0], rows[-1]
        summary[name] = {"peak_anon_kb": by_rows, "peak_anon_decide_kb": decide[name]}
        if hi > lo:
            summary[name]["decide_traced_kb"] = traced[name]
            for label, peak in (("", by_rows), ("decide_", decide[name]), ("decide_traced_", traced[name])):
                summary[name][f"{label}heap_bytes_per_extra_row"] = round(
                    (peak[hi] - peak[lo]) * 1024 / (hi - lo), 1
                )
    print(json.dumps(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
