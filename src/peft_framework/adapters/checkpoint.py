"""Adapter checkpoints: `adapter_config.json` + `adapter_model.safetensors`, HuggingFace peft's layout.

For the types peft knows (peft_type set on the AdapterMethod) both files are exactly what
`peft.PeftModel.from_pretrained` expects, and adapters saved by peft load here. Other types write the same
two files with a `peft_framework_type` key instead of `peft_type`. Safetensors only: nothing is ever
pickled, and nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from peft_framework.adapters import registry
from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME, AdapterMethod
from peft_framework.adapters.state_dict import check_state_dict
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError, ConfigError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FRAMEWORK_TYPE_KEY = "peft_framework_type"

# our task names -> peft's TaskType values (peft's own names pass through unchanged)
_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}


def adapter_dir_for(out_dir: str | os.PathLike[str], adapter_name: str = DEFAULT_ADAPTER_NAME) -> Path:
    """peft's layout: the default adapter at the top, any other name in a subfolder of that name."""
    out_dir = Path(out_dir)
    return out_dir if adapter_name == DEFAULT_ADAPTER_NAME else out_dir / adapter_name


def peft_task_type(task_type: str | None) -> str | None:
    if task_type is None:
        return None
    return _TASK_TYPES.get(task_type, task_type)


def save_adapter(
    model: nn.Module,
    method: AdapterMethod,
    adapter_config: AdapterConfigBase,
    out_dir: str | os.PathLike[str],
    *,
    base_model_name_or_path: str | None,
    task_type: str | None,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
) -> Path:
    """Write adapter `adapter_name` of `model`; returns the directory holding the two files.

    Files are written to a temporary directory first and moved into place config-last, so a directory
    with an `adapter_config.json` always has the matching weights. Other files in `out_dir` are kept.
    """
    state = {
        k: v.detach().to("cpu").contiguous().clone()
        for k, v in method.adapter_state_dict(model, adapter_name).items()
    }
    _check_tensors(method, state, adapter_name)
    saved = {
        **method.saved_config(adapter_config, model=model, adapter_name=adapter_name),
        "task_type": peft_task_type(task_type),
        "base_model_name_or_path": base_model_name_or_path,
    }
    if method.peft_type is not None:
        saved.update(peft_type=method.peft_type, revision=None, inference_mode=True)
        saved.pop(FRAMEWORK_TYPE_KEY, None)
    else:
        saved.pop("peft_type", None)
        saved[FRAMEWORK_TYPE_KEY] = method.name
    text = json.dumps(saved, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    final = adapter_dir_for(out_dir, adapter_name)
    final.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter.tmp-", dir=final))
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        # the old config goes first: a crash in between leaves no config, i.e. visibly no adapter
        (final / CONFIG_NAME).unlink(missing_ok=True)
        os.replace(tmp / WEIGHTS_NAME, final / WEIGHTS_NAME)
        os.replace(tmp / CONFIG_NAME, final / CONFIG_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_tensors(method: AdapterMethod, state: dict[str, torch.Tensor], adapter_name: str) -> None:
    if not state:
        raise AdapterError(f"refusing to save adapter {adapter_name!r}: it has no tensors")
    empty = sorted(k for k, v in state.items() if v.numel() == 0)
    # a type may legitimately write some 0-row tensors (AdaLoRA: a module pruned to rank 0), never only those
    if empty and (not method.may_save_empty_tensors or len(empty) == len(state)):
        raise AdapterError(
            f"refusing to save adapter {adapter_name!r}: empty tensors {empty[:5]} (sharded parameters, e.g. "
            f"DeepSpeed ZeRO-3, must be gathered before saving)"
        )
    not_finite = sorted(
        k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    )
    if not_finite:
        raise AdapterError(f"refusing to save adapter {adapter_name!r}: NaN/inf in {not_finite[:5]}")
    method.validate_for_save(state)  # type-specific checks (e.g. LoRA: A can never be all zero)


def read_adapter_config(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(
            f"{path}: no {CONFIG_NAME} here; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(saved, dict):
        raise AdapterError(f"{path}: expected a JSON object, got {type(saved).__name__}")
    return saved


def method_for_saved(saved: dict[str, Any], where: str = CONFIG_NAME) -> AdapterMethod:
    """The AdapterMethod named by a saved config: `peft_type` (peft's types) or `peft_framework_type`."""
    if "peft_type" in saved:
        method = registry.by_peft_type(str(saved["peft_type"]))
        if method is None:
            known = sorted({m.peft_type for m in registry.all_methods().values() if m.peft_type})
            raise AdapterError(
                f"{where}: peft_type {saved['peft_type']!r} is not supported; allowed: {', '.join(known)}"
            )
        return method
    if FRAMEWORK_TYPE_KEY in saved:
        try:
            return registry.get(str(saved[FRAMEWORK_TYPE_KEY]))
        except ConfigError as exc:
            raise AdapterError(f"{where}: {FRAMEWORK_TYPE_KEY}: {'; '.join(exc.problems) or exc}") from exc
    raise AdapterError(
        f"{where}: neither 'peft_type' nor '{FRAMEWORK_TYPE_KEY}' is set; cannot tell the adapter type"
    )


def load_adapter(
    model: nn.Module,
    adapter_dir: str | os.PathLike[str],
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    *,
    is_trainable: bool = False,
) -> tuple[AdapterMethod, AdapterConfigBase]:
    """Inject the adapter saved in `adapter_dir` into `model` under `adapter_name` and load its tensors.

    A non-default `adapter_name` is read from `adapter_dir/<adapter_name>/` when that exists (peft's layout
    for several adapters), else from `adapter_dir` itself.

    Accepts our checkpoints and peft's (`save_pretrained`). Strict: missing or unexpected tensors are an
    AdapterError naming them. Unless `is_trainable`, the whole model is frozen afterwards (inference).
    """
    adapter_dir = Path(adapter_dir)
    if adapter_name != DEFAULT_ADAPTER_NAME and (adapter_dir / adapter_name / CONFIG_NAME).is_file():
        adapter_dir = adapter_dir / adapter_name  # peft's layout for non-default names
    saved = read_adapter_config(adapter_dir)
    weights = adapter_dir / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [p.name for p in adapter_dir.glob("adapter_model.bin")]
        hint = (
            " (a pickle checkpoint is there; it is never loaded: convert it to safetensors)"
            if pickled
            else ""
        )
        raise AdapterError(f"{weights}: missing{hint}")
    method = method_for_saved(saved, str(adapter_dir / CONFIG_NAME))
    config = method.config_from_saved(saved)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{weights}: not a readable safetensors file ({exc})") from exc
    method.inject(model, config, adapter_name)
    expected = method.adapter_state_dict(model, adapter_name)
    check_state_dict(expected, state, str(weights), f"the {method.name!r} adapter built from its config")
    method.load_adapter_state_dict(model, state, adapter_name)
    if not is_trainable:
        for param in model.parameters():
            param.requires_grad = False
    return method, config
