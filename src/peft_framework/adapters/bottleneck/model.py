"""Find the transformer blocks of a model, place bottleneck adapters in them, and name their tensors.

Blocks are the entries of the model's first `nn.ModuleList` whose entries all have one recognised layout:

| layout | block has                                   | attention sublayer   | feed-forward sublayer |
|--------|---------------------------------------------|----------------------|-----------------------|
| llama  | `self_attn`, `mlp` (Llama, Mistral, Qwen..) | `self_attn`          | `mlp`                 |
| gpt2   | `attn`, `mlp` (GPT-2, ...)                  | `attn`               | `mlp`                 |
| bert   | `attention.output`, `output`, both          | `attention.output`   | `output`              |
|        | dense -> dropout -> LayerNorm(h + input)    |                      |                       |

Any other layout is refused with an AdapterError naming the model class and these layouts.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from peft_framework.adapters.bottleneck.config import BottleneckConfig
from peft_framework.adapters.bottleneck.layer import BottleneckSublayer, Kind
from peft_framework.adapters.lora.layer import ModulesToSave
from peft_framework.adapters.lora.model import effective_modules_to_save, resolve_modules_to_save
from peft_framework.adapters.model_state import adapter_state, find_record
from peft_framework.adapters.targeting import replace_module
from peft_framework.errors import AdapterError

STATE_ATTR = "_peft_framework_bottleneck"
Position = Literal["attention", "ffn"]
POSITIONS: dict[str, tuple[Position, ...]] = {"houlsby": ("attention", "ffn"), "pfeiffer": ("ffn",)}
SUPPORTED_LAYOUTS = (
    "llama-style blocks (self_attn + mlp: Llama, Mistral, Qwen2, ...), GPT-2-style blocks (attn + mlp), "
    "BERT-style blocks (attention.output + output: BERT, RoBERTa, MiniLM, ...)"
)


@dataclass(frozen=True)
class Placement:
    path: str  # module path of the wrapped sublayer, as in the base model
    block: int
    position: Position
    kind: Kind


@dataclass
class BottleneckRecord:
    config: BottleneckConfig
    placements: list[Placement]
    hidden_size: int
    bottleneck_size: int
    saved_modules: list[str] = field(default_factory=list)


def _state(model: nn.Module) -> dict:
    return adapter_state(model, STATE_ATTR)


def records(model: nn.Module) -> dict[str, BottleneckRecord]:
    return _state(model)["adapters"]


def record(model: nn.Module, adapter_name: str) -> BottleneckRecord:
    return find_record(records(model), adapter_name, "bottleneck")


def active_adapter(model: nn.Module) -> str | None:
    return _state(model)["active"]


# ------------------------------------------------------------------------------------------ layouts
def _unwrap(module: nn.Module | None) -> nn.Module | None:
    return module.base_layer if isinstance(module, BottleneckSublayer) else module


def _is_post_ln_output(module: nn.Module | None) -> bool:
    """BERT's BertSelfOutput/BertOutput: dense -> dropout -> LayerNorm(h + input_tensor)."""
    module = _unwrap(module)
    if module is None:
        return False
    if not (
        isinstance(getattr(module, "dense", None), nn.Linear)
        and isinstance(getattr(module, "LayerNorm", None), nn.LayerNorm)
        and isinstance(getattr(module, "dropout", None), nn.Module)
    ):
        return False
    params = list(inspect.signature(module.forward).parameters)
    return params[:2] == ["hidden_states", "input_tensor"]


def block_layout(block: nn.Module) -> dict[Position, tuple[str, Kind]] | None:
    """Sublayer paths (relative to the block) and wrapping kind, or None for an unknown layout."""
    children = dict(block.named_children())
    if "self_attn" in children and "mlp" in children:
        return {"attention": ("self_attn", "output"), "ffn": ("mlp", "output")}
    if "attn" in children and "mlp" in children:
        return {"attention": ("attn", "output"), "ffn": ("mlp", "output")}
    attention = children.get("attention")
    if (
        attention is not None
        and _is_post_ln_output(getattr(attention, "output", None))
        and _is_post_ln_output(children.get("output"))
    ):
        return {"attention": ("attention.output", "post_ln"), "ffn": ("output", "post_ln")}
    return None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            layouts = [block_layout(block) for block in module]
            if layouts[0] is not None and all(layout == layouts[0] for layout in layouts):
                return path, module
    raise AdapterError(
        f"adapter.type: bottleneck adapters do not support {type(model).__name__}: no list of transformer "
        f"blocks with a known layout was found; supported: {SUPPORTED_LAYOUTS}"
    )


def hidden_size_of(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    if not isinstance(size, int) or size <= 0:
        raise AdapterError(
            f"adapter.type: bottleneck adapters need the model's hidden size; {type(model).__name__}.config has "
            f"no 'hidden_size'"
        )
    return size


def placements(model: nn.Module, config: BottleneckConfig) -> list[Placement]:
    blocks_path, blocks = find_blocks(model)
    count = len(blocks)
    chosen = list(range(count))
    if config.layers is not None:
        bad = [i for i in config.layers if not -count <= i < count]
        if bad:
            raise AdapterError(
                f"adapter.layers: {bad} out of range; the model has {count} blocks: allowed 0..{count - 1} "
                f"(or -{count}..-1)"
            )
        chosen = sorted({i % count for i in config.layers})
    out = []
    for index in chosen:
        layout = block_layout(blocks[index])
        for position in POSITIONS[config.variant]:
            rel, kind = layout[position]
            out.append(Placement(f"{blocks_path}.{index}.{rel}", index, position, kind))
    return out


def bottleneck_size(hidden_size: int, reduction_factor: float) -> int:
    return max(1, int(hidden_size // reduction_factor))


# ----------------------------------------------------------------------------------------- injection
def inject(model: nn.Module, config: BottleneckConfig, adapter_name: str) -> BottleneckRecord:
    adapters = records(model)
    if adapter_name in adapters:
        raise AdapterError(f"adapter name {adapter_name!r} is already used on this model; pick another name")
    places = placements(model, config)
    hidden = hidden_size_of(model)
    width = bottleneck_size(hidden, config.reduction_factor)
    saved = resolve_modules_to_save(model, effective_modules_to_save(model, config), [p.path for p in places])
    for place in places:
        module = model.get_submodule(place.path)
        if not isinstance(module, BottleneckSublayer):
            module = BottleneckSublayer(module, place.kind, hidden)
            replace_module(model, place.path, module)
        module.add_adapter(
            adapter_name,
            width,
            config.resolved_non_linearity,
            config.resolved_scaling,
            config.mode,
            config.residual,
        )
    for path in saved:
        module = model.get_submodule(path)
        if not isinstance(module, ModulesToSave):
            module = ModulesToSave(module)
            replace_module(model, path, module)
        module.add_adapter(adapter_name)
    rec = BottleneckRecord(config, places, hidden, width, saved)
    adapters[adapter_name] = rec
    set_active(model, adapter_name)
    mark_trainable(model, adapter_name)
    return rec


def set_active(model: nn.Module, adapter_name: str | None) -> None:
    adapters = records(model)
    if adapter_name is not None and adapter_name not in adapters:
        raise AdapterError(
            f"no bottleneck adapter named {adapter_name!r} on this model; allowed: {sorted(adapters)} or None"
        )
    for module in model.modules():
        if isinstance(module, (BottleneckSublayer, ModulesToSave)):
            module.set_adapter(adapter_name)
    _state(model)["active"] = adapter_name


def mark_trainable(model: nn.Module, adapter_name: str) -> None:
    keep = {id(t) for t in adapter_tensors(model, adapter_name).values()}
    for param in model.parameters():
        param.requires_grad = id(param) in keep


def adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, nn.Parameter]:
    """On-disk keys: '<sublayer path>.bottleneck.{down,up}.{weight,bias}' and modules_to_save parameters
    under their base-model names (the adapter name is never part of a key)."""
    rec = record(model, adapter_name)
    out: dict[str, nn.Parameter] = {}
    for place in rec.placements:
        adapter = model.get_submodule(place.path).bottleneck[adapter_name]
        for name, param in adapter.named_parameters():
            out[f"{place.path}.bottleneck.{name}"] = param
    for path in rec.saved_modules:
        for name, param in model.get_submodule(path).modules_to_save[adapter_name].named_parameters():
            out[f"{path}.{name}"] = param
    return out


def unload(model: nn.Module) -> nn.Module:
    """Put the original sublayers (and original modules_to_save modules) back."""
    for path, module in list(model.named_modules()):
        if isinstance(module, BottleneckSublayer):
            replace_module(model, path, module.base_layer)
        elif isinstance(module, ModulesToSave):
            replace_module(model, path, module.original_module)
    model.__dict__.pop(STATE_ATTR, None)
    return model
