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
from dataclasses import dataclass
from typing import Literal

from torch import nn

from peft_framework.adapters.bottleneck.config import BottleneckConfig
from peft_framework.adapters.bottleneck.layer import BottleneckSublayer, Kind
from peft_framework.errors import AdapterError

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
