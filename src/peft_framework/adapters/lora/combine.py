"""Several LoRA adapters of one model combined into a new one (peft's `add_weighted_adapter`, "cat")."""

from __future__ import annotations

import torch
from torch import nn

from peft_framework.adapters.lora.config import LoraConfig
from peft_framework.adapters.lora.layer import LoraLinear
from peft_framework.adapters.lora.method import LoraMethod
from peft_framework.adapters.modules_to_save import ModulesToSave
from peft_framework.errors import AdapterError


@torch.no_grad()
def combine_adapters(model: nn.Module, weights: dict[str, float], new_name: str) -> LoraConfig:
    """A new adapter whose update is exactly sum_i w_i * s_i * B_i A_i (ranks concatenated, scaling 1;
    like peft's `add_weighted_adapter(..., combination_type="cat")`, w_i * s_i goes into A).

    Modules_to_save copies combine the same way: original + sum_i w_i * (copy_i - original). The new
    adapter becomes active. Returns its config (full target paths, so it saves and reloads as is).
    """
    method = LoraMethod()
    adapters = method.records(model)
    unknown = [n for n in weights if n not in adapters]
    if not weights or unknown:
        raise AdapterError(f"combine_adapters: unknown adapters {unknown}; allowed: {sorted(adapters)}")
    names = list(weights)
    dora_names = [n for n in names if adapters[n].config.use_dora]
    if dora_names:
        raise AdapterError(
            f"combine_adapters: {dora_names} use DoRA, whose magnitudes do not add up linearly; allowed: plain LoRA"
        )
    patterned = [n for n in names if adapters[n].config.rank_pattern or adapters[n].config.alpha_pattern]
    if patterned:
        raise AdapterError(
            f"combine_adapters: {patterned} use rank_pattern/alpha_pattern (ranks differ per module); allowed: "
            "adapters with one rank and alpha"
        )
    rank = sum(adapters[n].config.r for n in names)
    targets = sorted({t for n in names for t in adapters[n].targets})
    saved = sorted({p for n in names for p in adapters[n].saved_modules})
    config = LoraConfig(
        r=rank, alpha=float(rank), dropout=0.0, target_modules=targets, modules_to_save=saved or None
    )
    method.inject(model, config, new_name)
    for path in targets:
        layer: LoraLinear = model.get_submodule(path)
        a_new, b_new = layer.lora_A[new_name].weight, layer.lora_B[new_name].weight
        a_new.zero_()
        b_new.zero_()
        offset = 0
        for name in names:
            r = adapters[name].config.r
            if name in layer.lora_A:
                a_new[offset : offset + r] = layer.lora_A[name].weight * (weights[name] * layer.scaling[name])
                b_new[:, offset : offset + r] = layer.lora_B[name].weight
            offset += r
    for path in saved:
        wrapper: ModulesToSave = model.get_submodule(path)
        original = dict(wrapper.original_module.named_parameters())
        for pname, param in wrapper.modules_to_save[new_name].named_parameters():
            param.copy_(original[pname])
            for name in names:
                if name in wrapper.modules_to_save:
                    copy_param = dict(wrapper.modules_to_save[name].named_parameters())[pname]
                    param.add_(copy_param - original[pname], alpha=weights[name])
    return config
