"""What several bench scripts measure the same way: step times alternated between variants in one process,
paired ratios, and the training-memory growth of a variant in a fresh subprocess (Linux /proc)."""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from typing import Protocol


class Steps(Protocol):
    def step(self) -> float: ...


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM, ...)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def training_growth(stepper: Steps, steps: int) -> dict[str, float | None]:
    """Call in a fresh process right after building `stepper`: the RSS once built, the peak before training
    (the build's), and the peak RSS growth during `steps` training steps over the built RSS (None where
    VmHWM cannot be reset)."""
    built, build_peak = status_kb("VmRSS") / 1024, status_kb("VmHWM") / 1024
    reset = reset_peak_rss()
    for _ in range(steps):
        stepper.step()
    hwm = status_kb("VmHWM") / 1024
    return {
        "built_rss_mb": built,
        "peak_rss_mb": max(build_peak, hwm),
        "training_growth_mb": hwm - built if reset else None,
    }


def run_child(cmd: Sequence[str]) -> dict:
    """Run a bench script's child mode; its last stdout line is a JSON object."""
    out = subprocess.run(list(cmd), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def alternate(steppers: Mapping[str, Steps], steps: int, warmup: int = 0) -> dict[str, list[float]]:
    """Step times of every variant, warm-up steps first; each round runs every variant once, the order
    rotating so no variant always runs first (slow drifts of a shared machine hit all alike)."""
    variants = list(steppers)
    for _ in range(warmup):
        for v in variants:
            steppers[v].step()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for i in range(steps):
        k = i % len(variants)
        for v in variants[k:] + variants[:k]:
            times[v].append(steppers[v].step())
    return times


def paired_ratio(times: Mapping[str, Sequence[float]], a: str, b: str) -> float:
    """Median over rounds of t_a / t_b: the variants of a round ran back to back, so the machine's speed
    drifts cancel in the ratio."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))
