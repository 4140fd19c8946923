"""The parts of a Mixture-of-Experts model: routed experts, routers, shared experts.

transformers 5 stores a layer's routed experts as one module (`mlp.experts`) holding fused 3-D parameters
(`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`; gpt-oss transposed with biases), decorated with
`@use_experts_implementation` (which sets `is_transposed`, `has_bias`, `has_gate`, ... on each instance).
Routers (`mlp.gate`, `mlp.router`) hold a 2-D weight `[E, H]` used as a linear. Shared experts are ordinary
linears. Nothing here changes the model: targeting and the train summary ask it which parts exist.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from torch import nn

#: attributes `@use_experts_implementation` sets on an experts module
_EXPERTS_FLAGS = ("is_transposed", "has_bias", "has_gate")
#: names of a router module (the last path component)
_ROUTER_NAMES = ("gate", "router")
#: kinds of adapted tensors, in the order summaries list them
KINDS = ("attention", "dense_mlp", "shared_experts", "routed_experts", "router", "other")


def is_experts_module(module: nn.Module) -> bool:
    """A transformers experts module (fused 3-D expert weights, `@use_experts_implementation`)."""
    return all(hasattr(module, flag) for flag in _EXPERTS_FLAGS) and hasattr(module, "num_experts")


def expert_weight_names(module: nn.Module) -> list[str]:
    """The experts module's 3-D weights (not biases), in registration order."""
    return [n for n, p in module.named_parameters(recurse=False) if p.dim() == 3 and not n.endswith("bias")]


def routed_expert_params(model: nn.Module) -> list[str]:
    """Full names of every routed-expert weight (`model.layers.0.mlp.experts.gate_up_proj`, ...)."""
    out: list[str] = []
    for path, module in model.named_modules():
        if is_experts_module(module):
            out += [f"{path}.{name}" for name in expert_weight_names(module)]
    return out


def is_router_module(path: str, module: nn.Module) -> bool:
    """A router: a module named gate/router inside an MoE block that holds a 2-D `weight` and is no linear."""
    last = path.rpartition(".")[2]
    weight = module._parameters.get("weight")
    return (
        last in _ROUTER_NAMES
        and weight is not None
        and weight.dim() == 2
        and not isinstance(module, nn.Linear)
    )


def router_params(model: nn.Module) -> list[str]:
    return [f"{p}.weight" for p, m in model.named_modules() if p and is_router_module(p, m)]


def is_moe(model: nn.Module) -> bool:
    return any(is_experts_module(m) for m in model.modules())


def candidate_params(model: nn.Module) -> list[str]:
    """What `adapter.target_parameters` may name on this model: expert weights and router weights."""
    return routed_expert_params(model) + router_params(model)


def kind_of(path: str) -> str:
    """The kind of an adapted tensor or module path, for summaries and the train manifest."""
    parts = path.split(".")
    if "experts" in parts:
        return "routed_experts"
    if any(p.startswith("shared_expert") for p in parts):
        return "shared_experts"
    if parts[-1] in _ROUTER_NAMES or (
        len(parts) > 1 and parts[-2] in _ROUTER_NAMES and parts[-1] == "weight"
    ):
        return "router"
    if any(p in ("self_attn", "attention", "attn") for p in parts):
        return "attention"
    if any(p in ("mlp", "feed_forward", "ffn") for p in parts):
        return "dense_mlp"
    return "other"


def count_by_kind(paths: Iterable[str]) -> dict[str, int]:
    """How many adapted tensors of each kind (kinds with none left out)."""
    counts = Counter(kind_of(p) for p in paths)
    return {k: counts[k] for k in KINDS if counts[k]}
