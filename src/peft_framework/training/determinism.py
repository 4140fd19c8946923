"""Trainer's `full_determinism` flips process-wide switches; a library call must not leave them flipped."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

_ENV_KEYS = (
    "CUDA_LAUNCH_BLOCKING",
    "CUBLAS_WORKSPACE_CONFIG",
    "ASCEND_LAUNCH_BLOCKING",
    "HCCL_DETERMINISTIC",
    "FLASH_ATTENTION_DETERMINISTIC",
)


@contextlib.contextmanager
def restore_global_determinism() -> Iterator[None]:
    """Put back the environment variables and torch's determinism switches as they were on entry."""
    env = {k: os.environ.get(k) for k in _ENV_KEYS}
    algorithms = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
