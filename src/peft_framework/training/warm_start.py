"""`train.init_adapter`: start training from the weights of an existing adapter directory.

The directory is one this framework wrote (`train.output_dir`) or one HuggingFace peft saved
(`save_pretrained`): `adapter_config.json` + `adapter_model.safetensors`. Its tensors must be exactly
those of the adapter configured in `adapter.*` (same type, target modules, rank and so on): every
missing, unexpected or differently shaped tensor is named in the error. The configured adapter is
injected as usual and the saved tensors copied into it, so everything else (optimizer, schedule,
data order) starts fresh; a resumed checkpoint of the run still wins over the initial weights.

The weights file's sha256 enters the run fingerprint (checkpoints of a run from other initial weights are
not continued) and the manifest, and the directory is an input of the Prefect train task (its cache key).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from peft_framework.adapters.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    method_for_saved,
    read_adapter_config,
    read_adapter_weights,
)
from peft_framework.adapters.state_dict import check_state_dict
from peft_framework.config.schema import Config
from peft_framework.errors import AdapterError, UserError
from peft_framework.io import file_sha256
from peft_framework.paths import resolve

log = logging.getLogger(__name__)

_ALLOWED = (
    f"allowed: null, or an adapter directory ({CONFIG_NAME} + {WEIGHTS_NAME}) written by this framework "
    "or by peft's save_pretrained"
)


def load_init_adapter(model: nn.Module, method: Any, config: Config, root: Path) -> dict[str, Any] | None:
    """Copy the tensors of `train.init_adapter` into the injected adapter of `model`; returns
    {path, sha256, peft_type} for the manifest, or None when `train.init_adapter` is null."""
    value = config.train.init_adapter
    if value is None:
        return None
    path = resolve(root, value)
    if not path.is_dir():
        raise UserError(f"train.init_adapter: {value!r} is not a directory (resolved to {path}); {_ALLOWED}")
    try:
        saved = read_adapter_config(path)
        saved_method = method_for_saved(saved, str(path / CONFIG_NAME))
        if saved_method.name != method.name:
            raise UserError(
                f"train.init_adapter: {value!r} holds a {saved_method.name!r} adapter, but adapter.type is "
                f"{config.adapter.type!r}; allowed: an adapter of the configured type"
            )
        state = read_adapter_weights(path)
        expected = method.adapter_state_dict(model)
        check_state_dict(
            expected,
            state,
            f"train.init_adapter: {value!r}",
            f"the {config.adapter.type!r} adapter configured in adapter.* (same targets and sizes needed)",
        )
    except AdapterError as exc:
        if str(exc).startswith("train.init_adapter"):
            raise
        raise AdapterError(f"train.init_adapter: {value!r}: {exc.args[0]}", exc.problems) from None
    method.load_adapter_state_dict(model, state)
    digest = file_sha256(path / WEIGHTS_NAME)
    log.info("train.init_adapter: starting from the weights of %s (sha256 %s)", path, digest[:12])
    return {"path": value, "sha256": digest, "peft_type": saved.get("peft_type")}


def init_sha256(init: dict[str, Any] | None) -> str | None:
    return None if init is None else init["sha256"]
