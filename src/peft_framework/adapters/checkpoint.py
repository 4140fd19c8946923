"""Adapter checkpoints: `adapter_config.json` + `adapter_model.safetensors`, HuggingFace peft's layout.

For the types peft knows (peft_type set on the AdapterMethod) both files are exactly what
`peft.PeftModel.from_pretrained` expects, and adapters saved by peft load here. Other types write the same
two files with a `peft_framework_type` key instead of `peft_type`. Safetensors only: nothing is ever
pickled, and nothing is ever unpickled.
"""

from __future__ import annotations

import copy
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
from peft_framework.adapters.trainable_tokens import is_peft_base_weight, load_peft_base_weights
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError, ConfigError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FRAMEWORK_TYPE_KEY = "peft_framework_type"

# our task names -> peft's TaskType values (peft's own names pass through unchanged). peft has no task type
# for vision-language models: none, so that PeftModel.from_pretrained(vlm, dir) wraps it as its docs do
_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS", "image_text_to_text": None}


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


#: adapter_config.json is a few KB (a big model's rank_pattern: some hundred KB); larger is refused unread
MAX_ADAPTER_CONFIG_BYTES = 8 * 1024 * 1024
#: the JSON header of a safetensors file lists names, dtypes and shapes: a few MB for any real adapter
MAX_HEADER_BYTES = 64 * 1024 * 1024


def read_adapter_config(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(
            f"{path}: no {CONFIG_NAME} here; an adapter directory holds {CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    size = path.stat().st_size
    if size > MAX_ADAPTER_CONFIG_BYTES:
        raise AdapterError(
            f"{path}: {size} bytes; an adapter config may be at most {MAX_ADAPTER_CONFIG_BYTES}"
        )
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise AdapterError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise AdapterError(f"{path}: nested too deeply to read (hostile or corrupt JSON)") from None
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


def safetensors_header(path: str | os.PathLike[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) from a safetensors file's header, read without loading any tensor; an
    AdapterError when the file is truncated or malformed (its tensors would not fit in the file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
                raise AdapterError(f"{path}: not a safetensors file, or truncated (bad header length)")
            header = json.loads(f.read(n).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise AdapterError(f"{path}: not a safetensors file, or truncated ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path}: not a safetensors file (header is not a JSON object)")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
            start, stop = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise AdapterError(f"{path}: malformed safetensors header entry for {name!r}") from None
        if not 0 <= start <= stop:
            raise AdapterError(f"{path}: malformed data offsets for {name!r}")
        end = max(end, stop)
        out[name] = (dtype, shape)
    if 8 + n + end > size:
        raise AdapterError(
            f"{path}: truncated: its header promises {8 + n + end} bytes, the file has {size}; "
            "the file was cut short (an interrupted copy or download?)"
        )
    return out


def meta_skeleton(model: nn.Module) -> nn.Module | None:
    """An empty (meta-device) model of the same class and config as `model`, or None when `model` cannot
    be rebuilt from its config: a place to try an adapter config at no memory cost."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return None
    try:
        with torch.device("meta"):
            return type(model)(copy.deepcopy(model.config))
    except Exception:  # noqa: BLE001 - an exotic model class: the check after injection still applies
        return None


def check_adapter_shapes(
    skeleton: nn.Module | None,
    method: AdapterMethod,
    config: AdapterConfigBase,
    shapes: dict[str, tuple[int, ...]],
    where: str,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
) -> None:
    """Compare the tensors an adapter config would build (on a meta `skeleton`, so nothing is allocated)
    with the shapes in its weights file. Called before the real model gets the adapter: a hostile or
    broken config (`r: 1e12`) is an AdapterError here instead of an allocation of terabytes there."""
    if skeleton is None:
        return
    method.inject(skeleton, config, adapter_name)
    expected = {k: tuple(v.shape) for k, v in method.adapter_state_dict(skeleton, adapter_name).items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"{where} does not match the {method.name!r} adapter built from its config",
            [f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected],
        )
    wrong = [f"{k}: file {shapes[k]}, model {v}" for k, v in expected.items() if shapes[k] != v]
    if wrong:
        raise AdapterError(
            f"{where}: tensor shapes do not match the model built from its {CONFIG_NAME}", wrong
        )


def adapter_weights_file(adapter_dir: str | os.PathLike[str]) -> Path:
    """`adapter_dir/adapter_model.safetensors`; an AdapterError saying why when it is not there (a pickle
    `adapter_model.bin` is never loaded)."""
    weights = Path(adapter_dir) / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [p.name for p in Path(adapter_dir).glob("adapter_model.bin")]
        hint = (
            " (a pickle checkpoint is there; it is never loaded: convert it to safetensors)"
            if pickled
            else ""
        )
        raise AdapterError(f"{weights}: missing{hint}")
    return weights


def read_adapter_weights(adapter_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of `adapter_dir`, after the header was checked (truncated files are an AdapterError)."""
    weights = adapter_weights_file(adapter_dir)
    safetensors_header(weights)
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{weights}: not a readable safetensors file ({exc})") from exc


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
    weights = adapter_weights_file(adapter_dir)
    method = method_for_saved(saved, str(adapter_dir / CONFIG_NAME))
    config = method.config_from_saved(saved)
    header = {k: shape for k, (_, shape) in safetensors_header(weights).items() if not is_peft_base_weight(k)}
    check_adapter_shapes(meta_skeleton(model), method, config, header, str(weights), adapter_name)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"{weights}: not a readable safetensors file ({exc})") from exc
    method.inject(model, config, adapter_name)
    # peft saves whole resized embedding matrices beside trainable token rows: they go into the base
    state = load_peft_base_weights(model, state, getattr(method, "disk_prefix", ""))
    expected = method.adapter_state_dict(model, adapter_name)
    check_state_dict(expected, state, str(weights), f"the {method.name!r} adapter built from its config")
    method.load_adapter_state_dict(model, state, adapter_name)
    if not is_trainable:
        for param in model.parameters():
            param.requires_grad = False
    return method, config
