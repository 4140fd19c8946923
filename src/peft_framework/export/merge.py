"""Merge an adapter into a base checkpoint one safetensors shard at a time.

For each shard of the base checkpoint:
1. build the model's skeleton on the meta device (no memory),
2. read that shard's tensors (plus the other tensors of the modules it touches, e.g. a bias stored in the
   next shard) in float32 and put them into the skeleton,
3. inject the adapter with the adapter type's own `inject`, keep its tensors real only next to real base
   weights (meta elsewhere), load its checkpoint, and call the type's own `merge` and `unload`,
4. write the shard's tensors, now merged, in the export dtype.

Peak memory is about one shard (twice, while safetensors serialises it) plus the adapter, whatever the
model's size, and any adapter type with `merge`/`unload` works: nothing here knows LoRA's maths.
Tensors the model has but the checkpoint lacks (a classification head on top of a causal-LM checkpoint)
are written to one extra shard when the adapter supplies them (`modules_to_save`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from peft_framework.adapters.base import DEFAULT_ADAPTER_NAME, AdapterMethod
from peft_framework.adapters.checkpoint import (
    WEIGHTS_NAME,
    check_adapter_shapes,
    method_for_saved,
    read_adapter_config,
    read_adapter_weights,
)
from peft_framework.errors import UserError
from peft_framework.export.expert_keys import FusedKey, checkpoint_view
from peft_framework.export.memory import release_free_heap
from peft_framework.models.added_tokens import grow_rows

log = logging.getLogger(__name__)

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"


# ------------------------------------------------------------------------------------------ checkpoint
@dataclass
class Checkpoint:
    """A safetensors checkpoint on disk: its shard files, in order, and which keys each one holds."""

    directory: Path
    shards: list[str]
    keys: dict[str, list[str]]  # shard file -> tensor names

    @property
    def weight_map(self) -> dict[str, str]:
        return {key: shard for shard, keys in self.keys.items() for key in keys}

    def bytes(self) -> int:
        return sum((self.directory / s).stat().st_size for s in self.shards)


def open_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint:
    directory = Path(directory)
    index = directory / SAFE_INDEX
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
        keys: dict[str, list[str]] = defaultdict(list)
        for key, shard in weight_map.items():
            keys[shard].append(key)
        return Checkpoint(directory, shards, {s: sorted(keys[s]) for s in shards})
    single = directory / SAFE_SINGLE
    if single.is_file():
        with safe_open(str(single), framework="pt") as f:
            return Checkpoint(directory, [SAFE_SINGLE], {SAFE_SINGLE: sorted(f.keys())})
    pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    hint = (
        f" (found {', '.join(pickled[:3])}: pickle weights are loaded only with model.allow_pickle_weights: true, "
        "since unpickling can run arbitrary code; convert them to safetensors)"
        if pickled
        else ""
    )
    raise UserError(
        f"model.name_or_path: {directory} has no safetensors checkpoint ({SAFE_INDEX} or {SAFE_SINGLE}){hint}"
    )


def read_tensors(checkpoint: Checkpoint, keys: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors, in float32 (the merge precision), read shard file by shard file."""
    by_shard: dict[str, list[str]] = defaultdict(list)
    weight_map = checkpoint.weight_map
    for key in keys:
        by_shard[weight_map[key]].append(key)
    out: dict[str, torch.Tensor] = {}
    for shard, shard_keys in by_shard.items():
        with safe_open(str(checkpoint.directory / shard), framework="pt", device="cpu") as f:
            for key in shard_keys:
                tensor = f.get_tensor(key)
                out[key] = tensor.to(torch.float32) if tensor.is_floating_point() else tensor
    return out


# --------------------------------------------------------------------------------------------- skeleton
def build_skeleton(model_class: Any, hf_config: Any) -> nn.Module:
    """The model with every tensor on the meta device: structure and names, no memory."""
    hf_config = copy.deepcopy(hf_config)  # from_config(dtype=...) writes the dtype into the config
    with torch.device("meta"):
        model = model_class.from_config(hf_config, dtype=torch.float32)
    return model.eval()


def tied_groups(model: nn.Module) -> list[set[str]]:
    """Names that share one parameter (tied embeddings): writing one of them is enough."""
    by_id: dict[int, set[str]] = defaultdict(set)
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id[id(param)].add(name)
    return [names for names in by_id.values() if len(names) > 1]


def checkpoint_renamings(model: nn.Module) -> list[Any]:
    """transformers' renamings of legacy checkpoint names for `model`'s class (e.g. LLaVA's
    `language_model.model.*` -> `model.language_model.*`), as `from_pretrained` applies them; [] if none."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # pragma: no cover - transformers without conversion mappings
        return []
    return [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]


def map_keys(
    checkpoint_keys: list[str], model_keys: set[str], prefix: str, renamings: list[Any] = ()
) -> tuple[dict[str, str], list[str]]:
    """checkpoint name -> model state-dict name (base-model prefix added or removed as needed, legacy names
    renamed as transformers renames them); names the model does not have are returned apart (transformers
    ignores them too)."""
    mapping: dict[str, str] = {}
    unused: list[str] = []
    for key in checkpoint_keys:
        if renamings and key not in model_keys:
            from transformers.core_model_loading import apply_renamings

            renamed = apply_renamings(key, list(renamings))
            if renamed in model_keys:
                mapping[key] = renamed
                continue
        if key in model_keys:
            mapping[key] = key
        elif prefix and f"{prefix}.{key}" in model_keys:
            mapping[key] = f"{prefix}.{key}"
        elif prefix and key.startswith(prefix + ".") and key[len(prefix) + 1 :] in model_keys:
            mapping[key] = key[len(prefix) + 1 :]
        else:
            unused.append(key)
    return mapping, unused


def _swap(module: nn.Module, name: str, tensor: torch.Tensor, new: torch.Tensor) -> None:
    """Move a tensor to `new`'s device/storage keeping the object (code may hold references to it);
    where torch cannot swap in place, the module's attribute is replaced instead."""
    replacement = (
        nn.Parameter(new, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else new
    )
    try:
        torch.utils.swap_tensors(tensor, replacement)
    except RuntimeError:
        (module._parameters if name in module._parameters else module._buffers)[name] = replacement


def place_adapter_tensors(model: nn.Module, base_ids: set[int]) -> None:
    """Adapter tensors (those not in `base_ids`) live where the base weights they act on live: real next
    to real base weights, on the meta device next to meta ones (so merges there are free no-ops).

    'Next to' = the nearest enclosing module that also holds base tensors (e.g. the wrapper layer)."""
    modules = dict(model.named_modules())
    has_base: dict[str, bool] = {}
    has_real: dict[str, bool] = {}
    for path in sorted(modules, key=lambda p: -p.count(".") if p else 1):  # children before parents
        module = modules[path]
        own = [
            t
            for t in (*module._parameters.values(), *module._buffers.values())
            if t is not None and id(t) in base_ids
        ]
        children = [f"{path}.{n}" if path else n for n, c in module._modules.items() if c is not None]
        has_base[path] = bool(own) or any(has_base.get(c, False) for c in children)
        has_real[path] = any(not t.is_meta for t in own) or any(has_real.get(c, False) for c in children)
    for path, module in modules.items():
        for name, tensor in (*module._parameters.items(), *module._buffers.items()):
            if tensor is None or id(tensor) in base_ids:
                continue
            anchor = path
            while anchor and not has_base.get(anchor, False):
                anchor = anchor.rpartition(".")[0]
            real = has_real.get(anchor, False)
            if real and tensor.is_meta:
                _swap(module, name, tensor, torch.zeros(tensor.shape, dtype=tensor.dtype))
            elif not real and not tensor.is_meta:
                _swap(module, name, tensor, torch.empty(tensor.shape, dtype=tensor.dtype, device="meta"))


@dataclass
class Adapter:
    directory: Path
    method: AdapterMethod
    config: Any
    state: dict[str, torch.Tensor]

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> Adapter:
        directory = Path(directory)
        saved = read_adapter_config(directory)
        method = method_for_saved(saved, str(directory))
        state = read_adapter_weights(directory)
        return cls(directory, method, method.config_from_saved(saved), state)

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


def merge_into(model: nn.Module, adapter: Adapter) -> nn.Module:
    """Inject, load, merge and unload `adapter` on a partly real, partly meta model."""
    base_ids = {id(t) for t in (*model.parameters(), *model.buffers())}
    adapter.method.inject(model, adapter.config, DEFAULT_ADAPTER_NAME)
    place_adapter_tensors(model, base_ids)
    adapter.method.load_adapter_state_dict(model, adapter.state, DEFAULT_ADAPTER_NAME)
    adapter.method.merge(model, DEFAULT_ADAPTER_NAME)
    return adapter.method.unload(model)


def warm_up(model_class: Any, hf_config: Any, adapter: Adapter) -> None:
    """Run every step once on an all-meta model: imports the modelling and adapter code (tens of MB of
    modules) before memory is measured, at no memory cost of its own."""
    shapes = {k: tuple(v.shape) for k, v in adapter.state.items()}
    where = str(adapter.directory / WEIGHTS_NAME)
    check_adapter_shapes(
        build_skeleton(model_class, hf_config), adapter.method, adapter.config, shapes, where
    )
    merge_into(build_skeleton(model_class, hf_config), adapter)


# ------------------------------------------------------------------------------------------------ merge
@dataclass
class MergeResult:
    shards: list[str] = field(default_factory=list)
    weight_map: dict[str, str] = field(default_factory=dict)
    total_bytes: int = 0
    largest_shard_bytes: int = 0
    seconds: float = 0.0
    unused_keys: list[str] = field(default_factory=list)  # in the checkpoint, not in the model: dropped
    from_adapter: list[str] = field(default_factory=list)  # not in the checkpoint, supplied by the adapter
    left_out: list[str] = field(default_factory=list)  # in neither: the loader initialises them


def _module_of(key: str) -> str:
    return key.rpartition(".")[0]


def stream_merge(
    checkpoint: Checkpoint,
    model_class: Any,
    hf_config: Any,
    adapter: Adapter,
    out_dir: Path,
    dtype: torch.dtype,
) -> MergeResult:
    """Write the merged model's safetensors shards (+ index) into `out_dir`, one base shard at a time."""
    started = time.perf_counter()
    skeleton = build_skeleton(model_class, hf_config)
    model_shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    model_keys = set(model_shapes)
    prefix = getattr(skeleton, "base_model_prefix", "") or ""
    ties = tied_groups(skeleton)
    renamings = checkpoint_renamings(skeleton)
    del skeleton
    all_keys = [k for keys in checkpoint.keys.values() for k in keys]
    # MoE: per-expert checkpoint tensors -> the model's fused ones (export/expert_keys.py)
    renamed, fused = checkpoint_view(all_keys, getattr(hf_config, "model_type", None))
    named, _ = map_keys(list(renamed.values()), model_keys, prefix, renamings)
    mapping = {key: named[name] for key, name in renamed.items() if name in named}
    unused = [k for k in renamed if k not in mapping]
    fused_to, _ = map_keys([f.name for f in fused], model_keys, prefix, renamings)
    unused += [k for f in fused if f.name not in fused_to for k in f.sources]
    fused = [f for f in fused if f.name in fused_to]
    for f in fused:
        f.name = fused_to[f.name]  # from here on: the model's name
    covered = set(mapping.values()) | set(fused_to.values())
    for group in ties:
        if group & covered:
            covered |= group
    missing = sorted(model_keys - covered)
    by_module: dict[str, list[str]] = defaultdict(list)
    for key, model_key in mapping.items():
        by_module[_module_of(model_key)].append(key)

    result = MergeResult(unused_keys=sorted(unused))
    extra: dict[str, torch.Tensor] = {}
    if missing:  # first, so that the number of output shards is known before the first one is named
        extra, result.left_out = _merge_missing(
            missing, mapping, by_module, checkpoint, model_class, hf_config, adapter
        )
        extra = {k: v.to(dtype).contiguous() for k, v in extra.items()}
        result.from_adapter = sorted(extra)
    n_out = len(checkpoint.shards) + (1 if extra else 0)

    def shard_name(i: int) -> str:
        return SAFE_SINGLE if n_out == 1 else f"model-{i + 1:05d}-of-{n_out:05d}.safetensors"

    def write(i: int, tensors: dict[str, torch.Tensor]) -> None:
        name = shard_name(i)
        save_file(tensors, str(out_dir / name), metadata={"format": "pt"})
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        result.shards.append(name)
        result.total_bytes += size
        result.largest_shard_bytes = max(result.largest_shard_bytes, size)
        result.weight_map.update({k: name for k in tensors})

    # an experts module's fused tensors are merged and written with the shard holding its first source
    shard_of = checkpoint.weight_map
    fused_modules: dict[str, list[FusedKey]] = defaultdict(list)
    for f in fused:
        fused_modules[f.module].append(f)
    position = {k: n for n, k in enumerate(all_keys)}
    fused_home = {
        m: shard_of[min((k for f in fs for k in f.sources), key=position.__getitem__)]
        for m, fs in fused_modules.items()
    }
    for i, shard in enumerate(checkpoint.shards):
        own = [k for k in checkpoint.keys[shard] if k in mapping]
        own_fused = [f for m, fs in fused_modules.items() if fused_home[m] == shard for f in fs]
        # the other tensors of the modules this shard touches (a Linear's bias may sit in the next shard)
        needed = sorted({k for key in own for k in by_module[_module_of(mapping[key])]})
        needed += sorted({k for f in own_fused for k in [*f.sources, *by_module[f.module]]} - set(needed))
        tensors = read_tensors(checkpoint, needed)
        state_in = {
            mapping[k]: v
            for k, v in grown_embeddings(
                {k: tensors[k] for k in tensors if k in mapping}, mapping, model_shapes
            ).items()
        }
        state_in.update({f.name: f.fuse(tensors) for f in own_fused})
        del tensors
        model = build_skeleton(model_class, hf_config)
        model.load_state_dict(state_in, strict=False, assign=True)
        del state_in
        model = merge_into(model, adapter)
        state = model.state_dict()
        out = {mapping[k]: state[mapping[k]].detach().to(dtype).contiguous() for k in own}
        out.update({f.name: state[f.name].detach().to(dtype).contiguous() for f in own_fused})
        del model, state
        write(i, out)
        del out  # plain refcounting frees the shard here (no gc.collect: slow with big module graphs)
        release_free_heap()  # else glibc keeps the freed shard mapped and RSS creeps up shard after shard
        log.info("merged shard %d/%d (%s)", i + 1, len(checkpoint.shards), shard)
    if extra:
        write(n_out - 1, extra)
    if result.left_out:
        log.warning(
            "export: %d tensors are in neither the base checkpoint nor the adapter (transformers will initialise "
            "them when loading): %s",
            len(result.left_out),
            ", ".join(result.left_out[:5]),
        )
    if n_out > 1:
        index = {
            "metadata": {"total_size": result.total_bytes},
            "weight_map": dict(sorted(result.weight_map.items())),
        }
        (out_dir / SAFE_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    result.seconds = time.perf_counter() - started
    return result


def grown_embeddings(
    tensors: dict[str, torch.Tensor], mapping: dict[str, str], shapes: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Checkpoint tensors with rows appended where the model has more (embeddings grown for
    `model.add_tokens`: the new rows start as in `load_base_model`; the adapter's token rows replace them)."""
    out = {}
    for key, tensor in tensors.items():
        want = shapes.get(mapping[key])
        if want is not None and len(want) == tensor.dim() == 2 and want[1:] == tuple(tensor.shape[1:]):
            tensor = grow_rows(tensor, want[0])
        out[key] = tensor
    return out


def _merge_missing(
    missing: list[str],
    mapping: dict[str, str],
    by_module: dict[str, list[str]],
    checkpoint: Checkpoint,
    model_class: Any,
    hf_config: Any,
    adapter: Adapter,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors of the model that the base checkpoint lacks: those the adapter supplies (e.g. a trained
    classification head in modules_to_save), and the names of the others."""
    model = build_skeleton(model_class, hf_config)
    meta_state = model.state_dict()
    siblings = sorted({k for key in missing for k in by_module.get(_module_of(key), [])})
    real = {mapping[k]: v for k, v in read_tensors(checkpoint, siblings).items()}
    placeholders = {key: torch.zeros(meta_state[key].shape, dtype=meta_state[key].dtype) for key in missing}
    model.load_state_dict({**real, **placeholders}, strict=False, assign=True)
    before = {key: model.get_parameter(key) if _is_param(model, key) else None for key in missing}
    model = merge_into(model, adapter)
    state = model.state_dict(keep_vars=True)  # the tensor objects themselves: was a module replaced?
    supplied: dict[str, torch.Tensor] = {}
    left_out: list[str] = []
    for key in missing:
        tensor = state.get(key)
        replaced = tensor is not None and before[key] is not None and tensor is not before[key]
        if tensor is not None and not tensor.is_meta and (replaced or bool(tensor.any())):
            supplied[key] = tensor.detach()
        else:
            left_out.append(key)
    return supplied, left_out


def _is_param(model: nn.Module, key: str) -> bool:
    try:
        model.get_parameter(key)
    except AttributeError:
        return False
    return True
