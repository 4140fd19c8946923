"""prepare at scale vs plain `datasets`: wall time and peak RSS on generated instruction rows.

    python bench/prepare_scale.py --rows 100000 300000 [--num-proc 1] [--json out.json]

Rows: generated instruction/input/output rows (distinct, so none is dropped as a duplicate), about 340 bytes
of JSON each. Variants, each in a fresh subprocess (peak RSS = the largest process's VmHWM, via
`getrusage` in the subprocess, itself and its workers; time = load to saved, imports not counted):

- **prepare**: `peft_framework.data.prepare` (parse, validate, clean, filter, format, tokenize, de-duplicate,
  split, save the DatasetDict, rejected rows and report), builtin tiny-llama tokenizer, defaults otherwise.
- **baseline**: `load_dataset("json")` -> batched `map` formatting the same Alpaca prompt and tokenizing
  prompt + response with the same tokenizer (truncated to max_seq_len) -> `save_to_disk`.
Both use `data.num_proc` / `num_proc` = --num-proc.

Memory is reported two ways. `peak_rss_gb` is `ru_maxrss`: it counts the memory-mapped Arrow pages the
process touched (file-backed page cache the kernel can drop), so it grows with the data even when the heap
does not. `peak_anon_gb` is the heap: the parent samples `RssAnon` (and `RssFile`) from /proc/<pid>/status
of the child and all its descendants every 0.2 s and keeps the largest sum seen.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORDS = (
    "time person year way day thing man world life hand part child eye woman place work week case point "
    "government company number group problem fact river stone cloud bread apple table window garden music "
    "answer question reason result change morning evening system program market figure paper history"
).split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            instruction = f"Task {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(5, 15)))
            input_text = " ".join(rng.choices(WORDS, k=rng.randint(0, 20)))
            output = " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))
            f.write(json.dumps({"instruction": instruction, "input": input_text, "output": output}) + "\n")


def child_prepare(source: Path, work: Path, num_proc: int) -> float:
    import peft_framework.models.loading  # noqa: F401  (imported before the clock, as the baseline's is)
    from peft_framework.config.schema import Config
    from peft_framework.data import prepare

    config = Config.model_validate({"data": {"source": str(source), "num_proc": num_proc}})
    if os.environ.get("PREPARE_TRACE_DECIDE") == "1":
        trace_decide()
    started = time.perf_counter()
    summary = prepare(config, work)
    assert summary["rows"]["kept"] > 0.99 * summary["rows"]["read"], summary["rows"]
    return time.perf_counter() - started


_TRACED: dict[str, int] = {}


def trace_decide() -> None:
    """Record the `tracemalloc` peak (Python objects, numpy arrays; not Arrow buffers) of prepare's
    de-duplicate-and-split pass, `stream._decide_pass`, in `_TRACED` (PREPARE_TRACE_DECIDE=1 in the child)."""
    import tracemalloc

    from peft_framework.data import stream

    inner = stream._decide_pass

    def traced(*args, **kwargs):
        tracemalloc.start()
        try:
            result = inner(*args, **kwargs)
            _TRACED["decide_traced_kb"] = tracemalloc.get_traced_memory()[1] // 1024
            return result
        finally:
            tracemalloc.stop()

    stream._decide_pass = traced


def child_baseline(source: Path, work: Path, num_proc: int) -> float:
    import datasets

    from peft_framework.config.schema import Config
    from peft_framework.data.formatting import format_instruction
    from peft_framework.models.loading import load_tokenizer

    config = Config()
    tok = load_tokenizer(config.model)
    max_len, eos = config.data.max_seq_len, tok.eos_token_id
    datasets.disable_progress_bars()

    def tokenize(batch):
        prompts = [format_instruction(i, x, "alpaca") for i, x in zip(batch["instruction"], batch["input"])]
        texts = [p + r for p, r in zip(prompts, batch["output"])]
        ids = [x[: max_len - 1] + [eos] for x in tok(texts, verbose=False)["input_ids"]]
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": ids}

    started = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(work / "cache"))
    ds = ds.map(tokenize, batched=True, num_proc=num_proc if num_proc > 1 else None)
    ds.save_to_disk(str(work / "out"))
    return time.perf_counter() - started


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (workers of num_proc), from /proc/<pid>/task/*/children."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return pids


def _rss_kb(pids: list[int]) -> tuple[int, int]:
    """Summed RssAnon and RssFile (kB) of `pids`; processes that ended in between are skipped."""
    anon = file = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
                elif line.startswith("RssFile:"):
                    file += int(line.split()[1])
        except OSError:
            pass
    return anon, file


def run_child(
    variant: str,
    source: Path,
    num_proc: int,
    log_every: float = 0.0,
    interval: float = 0.2,
    env: dict[str, str] | None = None,
) -> dict:
    """Run one variant in a fresh subprocess; `interval`: seconds between RssAnon samples; `env`: its
    environment (default: this one's)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{variant}-") as work:
        cmd = [sys.executable, __file__, "--child", variant, "--source", str(source), "--work", work]
        cmd += ["--num-proc", str(num_proc)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env or {**os.environ})
        peak = {"anon": 0, "file": 0, "anon_decide": 0}
        done = threading.Event()
        # prepare opens this spool as its de-duplicate-and-split pass starts (before and after issue 15's
        # rework): the heap from then on (that pass, the save) is `peak_anon_decide_kb`
        decide_spool = f"{Path(work).name}/data/.prepared.work-*/rejected-decide.spool"

        def sample() -> None:
            started = last = time.monotonic()
            deciding = False
            while not done.is_set():
                anon, file = _rss_kb(_tree(proc.pid))
                peak["anon"], peak["file"] = max(peak["anon"], anon), max(peak["file"], file)
                deciding = deciding or any(Path(work).parent.glob(decide_spool))
                if deciding:
                    peak["anon_decide"] = max(peak["anon_decide"], anon)
                if log_every and time.monotonic() - last >= log_every:  # the heap over a long run
                    last = time.monotonic()
                    t = round(last - started)
                    print(
                        f"[{variant} t={t}s] RssAnon {anon / 2**20:.3f} GB, RssFile {file / 2**20:.2f} GB",
                        file=sys.stderr,
                        flush=True,
                    )
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, _ = proc.communicate()
        done.set()
        sampler.join()
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
    got = json.loads(stdout.strip().splitlines()[-1])
    return {
        "seconds": round(got["seconds"], 1),
        "peak_rss_gb": round(got["peak_kb"] / 2**20, 2),
        "peak_anon_gb": round(peak["anon"] / 2**20, 3),
        "peak_anon_kb": peak["anon"],
        "peak_anon_decide_kb": peak["anon_decide"],
        **{k: v for k, v in got.items() if k == "decide_traced_kb"},
        "peak_file_gb": round(peak["file"] / 2**20, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000])
    ap.add_argument("--num-proc", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--variants", nargs="+", choices=["baseline", "prepare"], default=["baseline", "prepare"])
    ap.add_argument("--log-every", type=float, default=0.0, help="seconds between RssAnon lines on stderr")
    ap.add_argument("--child", choices=["prepare", "baseline"])
    ap.add_argument("--source")
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.child:
        fn = child_prepare if args.child == "prepare" else child_baseline
        seconds = fn(Path(args.source), Path(args.work), args.num_proc)
        peak_kb = max(  # this process, and its largest worker (num_proc)
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
        )
        print(json.dumps({"seconds": seconds, "peak_kb": peak_kb, **_TRACED}))
        return

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-rows-") as tmp:
        for rows in args.rows:
            source = Path(tmp) / f"rows-{rows}.jsonl"
            generate(source, rows)
            entry = {"rows": rows, "mb": round(source.stat().st_size / 1e6, 1)}
            for variant in args.variants:
                entry[variant] = run_child(variant, source, args.num_proc, args.log_every)
                print(json.dumps({"rows": rows, variant: entry[variant]}), file=sys.stderr, flush=True)
            if len(entry) == 4:
                entry["time_ratio"] = round(entry["prepare"]["seconds"] / entry["baseline"]["seconds"], 2)
            print(json.dumps(entry), flush=True)
            results.append(entry)
            source.unlink()
            if args.json:  # after each size, so a long run that is stopped keeps what it finished
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
