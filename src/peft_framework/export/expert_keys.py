"""Checkpoint names vs model names for Mixture-of-Experts bases, for the shard-by-shard merge.

transformers 5 models hold each layer's experts fused (`mlp.experts.gate_up_proj [E, 2I, H]`,
`mlp.experts.down_proj [E, H, I]`), but checkpoints (the Hub's, and `save_pretrained`'s) keep one tensor per
expert (`mlp.experts.3.gate_proj.weight`, Mixtral's `block_sparse_moe.experts.3.w1.weight`); transformers
converts while loading, by the model type's table in `transformers.conversion_mapping`. The merge reads that
same table: renamings, and converters that stack experts (`MergeModulelist(dim=0)`) and concatenate gate and
up (`Concatenate(dim=1)`). The merged model is written with the fused names, which transformers loads as
they are (a converter's source pattern does not match them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass
class FusedKey:
    """One fused model tensor and the per-expert checkpoint tensors it is built from."""

    name: str  # the fused name as the checkpoint would spell it (renamings applied)
    parts: list[list[str]]  # per source pattern, the checkpoint keys in expert order
    concat_dim: int | None  # Concatenate(dim) over the stacked parts, or None (one part)

    @property
    def sources(self) -> list[str]:
        return [k for part in self.parts for k in part]

    @property
    def module(self) -> str:
        return self.name.rpartition(".")[0]

    def fuse(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        stacked = [torch.stack([tensors[k] for k in part]) for part in self.parts]
        return stacked[0] if self.concat_dim is None else torch.cat(stacked, dim=self.concat_dim)


def _conversions(model_type: str | None) -> list:
    if not model_type:
        return []
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:  # transformers < 5: checkpoints and models share names
        return []
    return get_checkpoint_conversion_mapping(model_type) or []


def _supported(converter) -> int | None | bool:
    """The Concatenate dim (None without one) of a converter made of MergeModulelist(dim=0) [+
    Concatenate], else False (a conversion this merge does not reproduce)."""
    ops = [(type(op).__name__, getattr(op, "dim", None)) for op in converter.operations]
    if ops == [("MergeModulelist", 0)]:
        return None
    if len(ops) == 2 and ops[0] == ("MergeModulelist", 0) and ops[1][0] == "Concatenate":
        return ops[1][1]
    return False


def checkpoint_view(keys: list[str], model_type: str | None) -> tuple[dict[str, str], list[FusedKey]]:
    """(checkpoint key -> its name after the model type's renamings, for keys not fused; the fused tensors)."""
    conversions = _conversions(model_type)
    renamings = [c for c in conversions if type(c).__name__ == "WeightRenaming"]
    converters = [
        c for c in conversions if type(c).__name__ == "WeightConverter" and _supported(c) is not False
    ]

    def rename(key: str) -> str:
        for r in renamings:
            for src, dst in zip(r.source_patterns, r.target_patterns * len(r.source_patterns), strict=False):
                key = re.sub(src, dst, key)
        return key

    renamed: dict[str, str] = {}
    groups: dict[str, dict[int, dict[int, str]]] = {}  # fused name -> part -> expert -> key
    dims: dict[str, int | None] = {}
    for key in keys:
        name = rename(key)
        for conv in converters:
            for part, pattern in enumerate(conv.source_patterns):
                regex = re.escape(pattern).replace(r"\*", r"(\d+)") + "$"
                match = re.search(regex, name)
                if match:
                    fused = name[: match.start()] + conv.target_patterns[0]
                    groups.setdefault(fused, {}).setdefault(part, {})[int(match.group(1))] = key
                    dims[fused] = _supported(conv)
                    break
            else:
                continue
            break
        else:
            renamed[key] = name
    fused = [
        FusedKey(
            name,
            [[by_expert[e] for e in sorted(by_expert)] for _, by_expert in sorted(parts.items())],
            dims[name],
        )
        for name, parts in groups.items()
    ]
    return renamed, fused
