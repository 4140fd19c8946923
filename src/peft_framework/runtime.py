"""Where a stage or the inference API runs a model: the device choice in one place."""

from __future__ import annotations

import torch

from peft_framework.errors import ConfigError


def pick_device(name: str | torch.device | None = "auto", *, key: str | None = None) -> torch.device:
    """'auto' (or None): CUDA when there is one, else the CPU; any other name as torch spells it.

    `key`: the config key the name came from; given, a CUDA device on a machine without one is a
    ConfigError naming it (instead of torch's failure at the first tensor moved there).
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if key is not None and str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "invalid config", [f"{key}: {name!r} but no CUDA device is available; allowed: auto, cpu"]
        )
    return torch.device(name)
