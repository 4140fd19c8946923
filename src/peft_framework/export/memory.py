"""Peak resident-memory growth of a block of code (torch allocations included).

Python's tracemalloc does not see torch's allocator, so this measures the process's resident set:
- Linux: the kernel's high-water mark `VmHWM` is reset on entry (`/proc/self/clear_refs` <- "5") and
  read on exit; exact, whatever the allocation pattern.
- elsewhere (or when the reset is not permitted): psutil's RSS sampled by a thread every few ms
  (can miss very short spikes).
Growth = peak during the block - RSS on entry.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from pathlib import Path
from types import TracebackType

import psutil

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def release_free_heap() -> None:
    """glibc: hand free heap pages back to the OS (malloc_trim), so the baseline RSS is honest."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """`with PeakRSS() as m: ...` then `m.growth_bytes`, `m.peak_bytes`, `m.start_bytes`, `m.method`."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self._process = psutil.Process(os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0
        self.start_bytes = 0
        self.peak_bytes = 0
        self.method = "sampled"

    def _rss(self) -> int:
        return self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled_peak = max(self._sampled_peak, self._rss())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        release_free_heap()  # freed-but-resident heap would hide growth (reused without new pages)
        self.start_bytes = self._rss()
        self._sampled_peak = self.start_bytes
        if _status_kib("VmHWM") is not None and _reset_high_water_mark():
            self.method = "VmHWM"
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sampled_peak = max(self._sampled_peak, self._rss())
        peak = self._sampled_peak
        if self.method == "VmHWM":
            hwm = _status_kib("VmHWM")
            if hwm is not None:
                peak = max(peak, hwm * 1024)
        self.peak_bytes = peak

    @property
    def growth_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)
