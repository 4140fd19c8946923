"""bitsandbytes is imported only by runs that quantize (`model.quantization`).

transformers' Trainer imports peft when peft is installed, and peft imports bitsandbytes when that is
installed; bitsandbytes' import then looks for kernels on the Hub and logs a trust warning, in runs that
never quantize anything (issue 28). A run without quantization marks bitsandbytes as not importable for
its process (`sys.modules[name] = None`, Python's own way to block an import: `import` raises
ImportError, which peft and transformers treat as "not installed", and `importlib.util.find_spec`
answers None); a quantized run lifts the mark again (a warm runner's forked child may inherit it).
Standard library only: the pipeline calls it before torch is imported.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

GATED = "bitsandbytes"


def gate_bitsandbytes(quantized: bool) -> bool:
    """Allow importing bitsandbytes when `quantized`, else block it unless it is imported already, for the
    rest of the process (the warm runner); True when this call blocked it."""
    if quantized:
        if GATED in sys.modules and sys.modules[GATED] is None:
            del sys.modules[GATED]
        return False
    if GATED not in sys.modules:
        sys.modules[GATED] = None  # type: ignore[assignment]
        return True
    return False


@contextlib.contextmanager
def bitsandbytes_gate(quantized: bool) -> Iterator[None]:
    """`gate_bitsandbytes` for the enclosed stage only: a block it set is lifted at the end, so a process
    that runs a quantized stage after a plain one in-process (the test suite, a notebook) still can."""
    blocked = gate_bitsandbytes(quantized)
    try:
        yield
    finally:
        if blocked and GATED in sys.modules and sys.modules[GATED] is None:
            del sys.modules[GATED]


def is_gated(module: str) -> bool:
    """Whether `module` is bitsandbytes or one of its submodules (what a blocked process cannot import)."""
    return module == GATED or module.startswith(GATED + ".")
