"""Heap growth of `prepare` per row: the RssAnon peak of the prepare child at several row counts.

    python bench/prepare_memory.py --rows 20000 200000 [--code before=/tmp/before after=.] [--json out.json]

For each code tree (`NAME=DIR`: a checkout whose `src/` goes first on the child's PYTHONPATH; default: this
one) and each row count, runs `prepare_scale.py`'s prepare child on the same generated rows and samples
`RssAnon` of the child and its workers every `--interval` seconds (the heap, without the memory-mapped
Arrow pages that `ru_maxrss` counts). Prints one JSON line per run and, per tree, the heap bytes per extra
row between the smallest and the largest row count: what grows with the data and stays in memory.
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
    return {**os.environ, "PYTHONPATH": ":".join(paths)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--code", nargs="+", default=[f"this={Path(__file__).resolve().parent.parent}"])
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between RssAnon samples")
    ap.add_argument("--num-proc", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    trees = dict(item.split("=", 1) for item in args.code)
    rows = sorted(args.rows)
    peaks: dict[str, dict[int, int]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for n in rows:
            source = Path(tmp) / f"rows-{n}.jsonl"
            generate(source, n)
            for name, code in trees.items():  # the trees back to back on the same rows
                got = run_child(
                    "prepare", source, args.num_proc, interval=args.interval, env=_env(Path(code))
                )
                peaks[name][n] = got["peak_anon_kb"]
                print(json.dumps({"code": name, "rows": n, **got}), flush=True)
            source.unlink()
    summary = {}
    for name, by_rows in peaks.items():
        lo, hi = rows[0], rows[-1]
        per_row = (by_rows[hi] - by_rows[lo]) * 1024 / (hi - lo) if hi > lo else None
        summary[name] = {"peak_anon_kb": by_rows, "heap_bytes_per_extra_row": per_row and round(per_row, 1)}
    print(json.dumps(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
