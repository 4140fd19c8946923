"""train.packing at scale: wall time and peak heap of `pack_prepared` on a memory-mapped prepared split.

    python bench/packing_memory.py --rows 100000 [1000000] [--max-seq-len 1024] [--reads 2000]
        [--src PATH] [--data-dir DIR] [--grouped]

Rows: lengths drawn lognormal (median 64 tokens, sigma 1.0), capped at 1024 (as bench/packing.py), random
int32 token ids below 32,000 (a real vocabulary's: as Python ints, ids above 256 are objects of their own),
the first quarter of each row's labels -100, int8 attention mask: the columns and types `prepare` writes. Each row count is generated once into --data-dir (a `datasets.Dataset` saved with
`save_to_disk`) and every measurement loads it back with `load_from_disk`, memory-mapped, in a FRESH
subprocess that imports `peft_framework` from --src (default: this tree's src; point it at an export of an
older commit to measure that code).

In the subprocess, after the split is loaded: `pack_prepared` (train.packing on, causal LM, data.max_seq_len
= --max-seq-len) is timed, then --reads packs are read in a seeded random order (as the Trainer's shuffling
sampler asks for them) and timed per pack (with a sha256 over their contents, JSON-encoded, so two versions
can be checked to give the same packs). Heap = `RssAnon` of /proc/self/status sampled every 5 ms by a
thread (Arrow's mapped file pages are RssFile and not counted); printed as the peak above the level before
`pack_prepared` (so the imports and the loaded split are not counted).

--grouped: also times what `train.group_by_length` costs before the first step: transformers'
LengthGroupedSampler reading every pack to learn its length (what the Trainer did before
`packing.example_lengths`), against the lengths taken from the packing plan; and the same for the unpacked
split (every row read, against Arrow's list lengths). Each pair of length lists must be equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOCAB = 32000  # token ids of a real vocabulary: as Python ints they are objects, not the cached small ints


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` prepared causal-LM rows saved as a `datasets.Dataset` at `path` (built a chunk at a time)."""
    import datasets
    import numpy as np
    import pyarrow as pa

    datasets.disable_progress_bars()
    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "attention_mask": datasets.List(datasets.Value("int8")),
            "labels": datasets.List(datasets.Value("int32")),
        }
    )
    parts = []
    for start in range(0, rows, 100_000):
        n = min(100_000, rows - start)
        lengths = np.clip(np.rint(np.exp(np.log(64) + rng.standard_normal(n))), 4, 1024).astype(np.int32)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        ids = rng.integers(3, VOCAB, offsets[-1], dtype=np.int32)
        labels = ids.copy()
        prompt_end = offsets[:-1] + lengths // 4
        in_prompt = np.zeros(offsets[-1] + 1, dtype=np.int32)
        np.add.at(in_prompt, offsets[:-1], 1)
        np.add.at(in_prompt, prompt_end, -1)
        labels[np.cumsum(in_prompt)[:-1] > 0] = -100
        table = pa.table(
            {
                "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
                "attention_mask": pa.ListArray.from_arrays(
                    pa.array(offsets), pa.array(np.ones(len(ids), np.int8))
                ),
                "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels)),
            }
        )
        parts.append(datasets.Dataset(table).cast(features))
    datasets.concatenate_datasets(parts).save_to_disk(str(path))


class AnonPeak:
    """Largest RssAnon (bytes) seen by a sampling thread since the last `reset`."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon in /proc/self/status")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every_s)

    def reset(self) -> int:
        self.peak = self.now()
        return self.peak

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def child(data_dir: Path, max_seq_len: int, reads: int, grouped_lengths: bool = False) -> dict:
    import random

    import datasets

    import peft_framework.training.packing as packing
    from peft_framework.config.schema import Config
    from peft_framework.training.prepared import PreparedData

    config = Config.model_validate(
        {
            "model": {"name_or_path": "builtin:tiny-llama", "task": "causal_lm"},
            "data": {"max_seq_len": max_seq_len},
            "train": {"packing": True},
        }
    )
    split = datasets.load_from_disk(str(data_dir))
    data = PreparedData(
        dataset=datasets.DatasetDict(train=split),
        manifest={},
        directory=data_dir,
        sha256="",
        label_names=None,
        train=split,
        eval=None,
    )
    sampler = AnonPeak()
    base = sampler.reset()
    started = time.perf_counter()
    packed, stats = packing.pack_prepared(data, config)
    pack_s = time.perf_counter() - started
    pack_peak = sampler.peak
    order = random.Random(0).sample(range(len(packed.train)), min(reads, len(packed.train)))
    digest = hashlib.sha256()
    started = time.perf_counter()
    for k in order:
        pack = packed.train[k]
        digest.update(json.dumps([pack["input_ids"], pack["labels"], pack["position_ids"]]).encode())
    read_s = time.perf_counter() - started
    end = sampler.stop()
    grouped = {}
    if grouped_lengths:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        started = time.perf_counter()
        by_reading = LengthGroupedSampler(8, dataset=packed.train).lengths
        grouped["lengths_by_reading_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        from_plan = packing.example_lengths(packed.train)
        grouped["lengths_from_plan_s"] = round(time.perf_counter() - started, 4)
        assert from_plan == by_reading, "the plan's pack lengths differ from the packs' own"
        started = time.perf_counter()  # and the unpacked split (group_by_length without packing)
        by_reading = LengthGroupedSampler(8, dataset=split).lengths
        grouped["rows_lengths_by_reading_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        from_arrow = packing.example_lengths(split)
        grouped["rows_lengths_from_arrow_s"] = round(time.perf_counter() - started, 4)
        assert from_arrow == by_reading, "the Arrow row lengths differ from the rows' own"
    return {
        **grouped,
        "module": packing.__file__,
        "rows": stats["rows"],
        "packs": stats["packs"],
        "tokens": stats["tokens"],
        "fill_ratio": stats["fill_ratio"],
        "pack_s": round(pack_s, 2),
        "pack_heap_peak_gb": round((pack_peak - base) / 2**30, 3),
        "base_anon_gb": round(base / 2**30, 3),
        "reads": len(order),
        "read_ms_per_pack": round(1000 * read_s / max(1, len(order)), 3),
        "read_sha256": digest.hexdigest()[:16],  # the packs read, in order: equal across versions
        "heap_peak_overall_gb": round((max(pack_peak, end) - base) / 2**30, 3),
        "held_after_gb": round((end - base) / 2**30, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000])
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--reads", type=int, default=2000, help="packs read after packing, in random order")
    ap.add_argument(
        "--src", type=Path, default=HERE.parent / "src", help="the src/ to import peft_framework from"
    )
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/packing_memory_bench"))
    ap.add_argument("--grouped", action="store_true", help="also time the lengths group_by_length needs")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.max_seq_len, args.reads, args.grouped)))
        return
    for rows in args.rows:
        data = args.data_dir / f"rows{rows}"
        if not (data / "dataset_info.json").is_file():
            started = time.perf_counter()
            generate(data, rows)
            print(f"generated {rows} rows into {data} in {time.perf_counter() - started:.1f} s", flush=True)
        env = {**os.environ, "PYTHONPATH": str(args.src.resolve())}
        cmd = [sys.executable, __file__, "--child", str(data), "--max-seq-len", str(args.max_seq_len)]
        cmd += ["--reads", str(args.reads)] + (["--grouped"] if args.grouped else [])
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
