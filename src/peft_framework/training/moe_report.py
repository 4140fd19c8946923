"""What an adapter adapts on a Mixture-of-Experts base, by kind: the train summary and manifest count the
adapted base tensors (attention, dense MLP, shared experts, routed experts, router), and the train stage
says once when no routed expert is adapted (the silent skip users of module-only tools run into)."""

from __future__ import annotations

import logging

from torch import nn

from peft_framework.adapters.layer import AdapterLayer
from peft_framework.adapters.modules_to_save import ModulesToSave
from peft_framework.errors import ConfigError
from peft_framework.models.moe import count_by_kind, is_moe

log = logging.getLogger(__name__)

NO_ROUTED_EXPERTS = (
    "the adapter adapts no routed expert of this Mixture-of-Experts model (%s): the experts are 3-D parameters, "
    "not linear modules. To adapt them use adapter.type lora with adapter.target_parameters (e.g. "
    "[mlp.experts.gate_up_proj, mlp.experts.down_proj]) or target_modules all-linear / null"
)


def adapted_tensors(model: nn.Module, adapter_name: str) -> list[str]:
    """Names (as in the base model) of the base tensors adapter `adapter_name` adapts or trains a copy of."""
    names: list[str] = []
    for path, module in model.named_modules():
        if not isinstance(module, AdapterLayer) or not module.has_adapter(adapter_name):
            continue
        if isinstance(module, ModulesToSave):
            names += [f"{path}.{n}" for n, _ in module.modules_to_save[adapter_name].named_parameters()]
        elif hasattr(module, "params_of"):  # LoRA on parameters (LoraParams)
            names += [f"{path}.{n}" for n in module.params_of(adapter_name)]
        else:
            names.append(f"{path}.weight")
    return names


def moe_adapted_by_kind(model: nn.Module, adapter_name: str, warn: bool = True) -> dict[str, int] | None:
    """Adapted tensors by kind on an MoE base (None on a dense one); warns when no routed expert is adapted."""
    if not is_moe(model):
        return None
    counts = count_by_kind(adapted_tensors(model, adapter_name))
    if warn and not counts.get("routed_experts"):
        log.warning(NO_ROUTED_EXPERTS, ", ".join(f"{k}: {v}" for k, v in counts.items()) or "nothing")
    return counts


def router_aux_loss(model: nn.Module, coef: float | None) -> None:
    """`train.router_aux_loss_coef`: transformers' MoE models add `coef` x their load-balancing loss to the
    loss when `output_router_logits` is on. ConfigError on a model without one."""
    if coef is None:
        return
    config = getattr(model, "config", None)
    if (
        not is_moe(model)
        or not hasattr(config, "output_router_logits")
        or not hasattr(model, "router_aux_loss_coef")
    ):
        raise ConfigError(
            "invalid config",
            [
                f"train.router_aux_loss_coef: {coef} needs a Mixture-of-Experts model with a router load-balancing "
                f"loss (transformers' output_router_logits), not {type(model).__name__}; allowed: null"
            ],
        )
    config.output_router_logits = True
    config.router_aux_loss_coef = coef
    model.router_aux_loss_coef = coef  # the model read it from its config when built
