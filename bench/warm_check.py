"""What the warm runner's exactness check costs per command (`tasks.warm.ModuleFiles.changed`).

    python bench/warm_check.py [--rounds 50]

Imports what a runner holds once its background imports are done (flows.stage, flows.pipeline and every
module of the library packages it preloads: Prefect, torch, transformers and datasets come with them),
records their files as the runner does, then times, medians over the rounds:
  check   `ModuleFiles.changed()`: one `os.stat` per imported module file, run before each fork
  anchor  what each command already costs the runner: fork a child that exits at once, and wait for it
  key     `runner_key()`: the client's own per-command check (every .py of peft_framework/tasks/flows)
Reports the check against the anchor measured in the same run; never asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tasks import warm  # noqa: E402


def _median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def _fork_and_wait() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    started = time.perf_counter()
    since = time.time_ns()
    files = warm.ModuleFiles()
    for name in [*warm.FIRST, *warm._library_modules()]:
        warm._import(name)
    files.record(since_ns=since)
    print(
        f"imported {len(sys.modules)} modules ({len(files.stats)} files) in {time.perf_counter() - started:.1f} s"
    )
    assert files.changed() is None
    check = _median_ms(files.changed, args.rounds)
    anchor = _median_ms(_fork_and_wait, args.rounds)
    key = _median_ms(warm.runner_key, args.rounds)
    print(f"check  {check:7.2f} ms per command ({check * 1000 / len(files.stats):.2f} us per file)")
    print(f"anchor {anchor:7.2f} ms (fork + exit + wait)   check/anchor {check / anchor:.2f}")
    print(f"key    {key:7.2f} ms (runner_key, client side)  check/key    {check / key:.2f}")


if __name__ == "__main__":
    main()
