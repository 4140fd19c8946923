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


def is_routed_experts(module: nn.Module) -> bool:
    """Any module holding routed experts as fused 3-D weights: the flagged experts modules above, and ones
    without flags such as Llama4's (`Llama4TextExperts`: `gate_up_proj [E, H, 2D]`, `down_proj [E, D, H]`, its
    own forward; adapted through the materialised delta, as peft does)."""
    if is_experts_module(module):
        return True
    return hasattr(module, "num_experts") and any(
        p is not None and p.dim() == 3 for p in module._parameters.values()
    )


def expert_weight_names(module: nn.Module) -> list[str]:
    """The experts module's 3-D weights (not biases), in registration order."""
    return [n for n, p in module.named_parameters(recurse=False) if p.dim() == 3 and not n.endswith("bias")]


def routed_expert_params(model: nn.Module) -> list[str]:
    """Full names of every routed-expert weight (`model.layers.0.mlp.experts.gate_up_proj`, ...)."""
    out: list[str] = []
    for path, module in model.named_modules():
        if is_routed_experts(module):
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


def linear_routers(model: nn.Module) -> list[str]:
    """Routers that are `nn.Linear`s (Llama4's `Llama4Router`): a linear named gate/router beside a routed
    experts module. `all-linear` leaves them out: routers stay frozen unless named."""
    out = []
    for path, module in model.named_modules():
        parent, _, last = path.rpartition(".")
        if isinstance(module, nn.Linear) and last in _ROUTER_NAMES and parent:
            siblings = model.get_submodule(parent).children()
            if any(is_routed_experts(m) for m in siblings):
                out.append(path)
    return out


def router_params(model: nn.Module) -> list[str]:
    found = [p for p, m in model.named_modules() if p and is_router_module(p, m)]
    return [f"{p}.weight" for p in [*found, *linear_routers(model)]]


def is_moe(model: nn.Module) -> bool:
    return any(is_routed_experts(m) for m in model.modules())


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
