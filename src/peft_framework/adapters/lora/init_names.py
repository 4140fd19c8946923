"""The names `adapter.init` accepts, checked without torch (config validation must not import it)."""

from __future__ import annotations

import re

PISSA_NITER = re.compile(r"pissa_niter_([1-9][0-9]*)")
BASIC_INITS = ("kaiming", "gaussian")


def is_valid(init: str) -> bool:
    return init in BASIC_INITS or init in ("pissa", "olora") or PISSA_NITER.fullmatch(init) is not None


def mutates_base(init: str) -> bool:
    """Whether the init rewrites the base weight into a residual (the saved adapter is then converted)."""
    return init == "olora" or init.startswith("pissa")
