"""LoRA on parameters (`adapter.target_parameters`): MoE expert weights and routers, peft-compatible.

A transformers 5 experts module holds every expert in fused 3-D parameters (`gate_up_proj [E, 2I, H]`,
`down_proj [E, H, I]`; gpt-oss stores them transposed, `[E, H, 2I]`, with biases). `LoraParams` wraps one
such module (or any module whose 2-D/3-D parameter is targeted, e.g. a router's weight) and holds, per
adapter and parameter, peft's `ParamWrapper` tensors:

    A: (E·r, in)   read expert-major as (E, r, in)
    B: (out, r·E)  read as (out, r, E), the expert index fastest
    ΔW_e = s · B_e A_e  (out, in)

On an experts module the low-rank path runs inside the experts' forward on the tokens routed to each
expert, `y_e = x_e W_eᵀ (+ b_e) + s · (dropout(x_e) A_eᵀ) B_eᵀ`, with the tokens sorted by expert and each
product one grouped GEMM (`grouped_mm`: torch's grouped_mm, or transformers' per-expert loop where that
kernel cannot run). The E × out × in delta is never formed (peft forms it on every forward through
`torch.nn.utils.parametrize`), and dropout works (peft refuses it). Other modules (a router) run their own
forward with `W + s·BA` swapped in (`torch.func.functional_call`): a 2-D delta, as small as the weight.

peft nests one wrapper per parameter, so the parameters of one module get keys `<path>.lora_A.weight`
(the last one in registration order), `<path>.base_layer.lora_A.weight` (the one before), ...:
`saved_prefix` reproduces that from a single wrapper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.integrations.moe import _grouped_mm

from peft_framework.adapters.layer import AdapterLayer, adapter_factory
from peft_framework.errors import AdapterError
from peft_framework.models.moe import is_experts_module

#: Rebuild the low-rank path's input in backward (a gather, or the experts' gate: elementwise) rather than keep
#: it: that input, (S, in) per adapted weight, is the one activation the frozen model does not keep already.
RECOMPUTE_LORA_INPUT = True

#: (tensors read, a function computing a tensor from them again)
Recipe = tuple[tuple[torch.Tensor, ...], Callable[[], torch.Tensor]]


def _saved_tensor_hooks_active() -> bool:
    """Whether saved-tensor hooks are already in force (non-reentrant activation checkpointing, which
    transformers' gradient checkpointing uses, or offloading): they drop or move what is saved, and a recipe
    would keep its sources (the (S, 2I) expert activations among them) alive instead."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)  # no public query in torch
    return top is not None and top(False) is not None


@contextmanager
def kept_as_recipe(
    x: torch.Tensor, sources: tuple[torch.Tensor, ...], rebuild: Callable[[], torch.Tensor]
) -> Iterator[None]:
    """Inside, whatever autograd saves of `x` (x or a view of it) is kept as `rebuild` and recomputed, without
    grad, when backward needs it. Unlike torch.utils.checkpoint no graph is built for the recomputation: the
    gradient still flows once through the forward's own `x`. `sources` (what `rebuild` reads) must not be
    changed in place before backward; that is checked, as autograd checks saved tensors."""
    if not x.is_contiguous() or x.storage_offset() != 0:  # only a fresh tensor is rebuilt as it was
        yield
        return
    storage = x.untyped_storage().data_ptr()
    versions = [t._version for t in sources]

    def pack(t: torch.Tensor) -> Any:
        if t.untyped_storage().data_ptr() != storage:
            return t
        return (t.size(), t.stride(), t.storage_offset())

    def unpack(saved: Any) -> torch.Tensor:
        if not isinstance(saved, tuple):
            return saved
        if [t._version for t in sources] != versions:
            raise RuntimeError(
                "LoRA on expert weights: a tensor the low-rank path rebuilds its input from was modified in "
                "place before backward"
            )
        with torch.no_grad():
            return rebuild().as_strided(*saved)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def param_features(module: nn.Module, param: torch.Tensor) -> tuple[int, int, int]:
    """(num_experts, in_features, out_features) of a targeted parameter, as peft's ParamWrapper reads them:
    3-D `[E, out, in]`, or `[E, in, out]` on modules flagged `is_transposed`; 2-D `[out, in]`."""
    if param.dim() == 3:
        experts, d1, d2 = param.shape
        return (experts, d1, d2) if getattr(module, "is_transposed", False) else (experts, d2, d1)
    if param.dim() == 2:
        return 1, param.shape[1], param.shape[0]
    raise AdapterError(f"adapter.target_parameters: a {param.dim()}-D parameter; allowed: 2-D or 3-D weights")


class LoraParams(AdapterLayer):
    """A module (above all an MoE experts module) plus named low-rank updates of some of its parameters."""

    adapter_containers: ClassVar[dict[str, type[nn.Module]]] = dict.fromkeys(
        ("lora_A", "lora_B", "lora_dropout"), nn.ModuleDict
    )
    delegate_attributes: ClassVar[bool] = True  # model code reads `experts.num_experts` and the like
    lora_A: nn.ModuleDict
    lora_B: nn.ModuleDict
    lora_dropout: nn.ModuleDict

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.experts = is_experts_module(base_layer)
        self.scaling: dict[str, dict[str, float]] = {}
        self.r: dict[str, dict[str, int]] = {}

    # --- building ---------------------------------------------------------------------------------
    def param(self, name: str) -> torch.Tensor:
        return self.base_layer._parameters[name]

    def params_of(self, adapter: str) -> list[str]:
        """The adapter's parameters on this module, in the module's registration order."""
        mine = self.lora_A[adapter]
        return [n for n in self.base_layer._parameters if n in mine]

    def add_adapter(
        self,
        adapter: str,
        params: dict[str, tuple[int, float]],
        dropout: float,
        use_rslora: bool,
        init: str,
    ) -> None:
        """`params`: parameter name -> (r, alpha)."""
        self.check_new(adapter)
        if dropout > 0 and not self._own_forward(list(params)):
            raise AdapterError(
                f"adapter.dropout: {dropout} cannot apply to {sorted(params)} of a {type(self.base_layer).__name__} "
                "(a module whose forward this framework does not compute; its update is folded into the weight); "
                "allowed: adapter.dropout 0, or target_parameters naming only MoE expert weights"
            )
        a_dict, b_dict = nn.ModuleDict(), nn.ModuleDict()
        self.r[adapter], self.scaling[adapter] = {}, {}
        for name, (r, alpha) in params.items():
            param = self.param(name)
            experts, n_in, n_out = param_features(self.base_layer, param)
            factory = adapter_factory(param)
            a_dict[name] = nn.Linear(n_in, r * experts, bias=False, **factory)
            b_dict[name] = nn.Linear(r * experts, n_out, bias=False, **factory)
            self.r[adapter][name] = r
            self.scaling[adapter][name] = alpha / math.sqrt(r) if use_rslora else alpha / r
            with torch.no_grad():
                if init == "gaussian":
                    nn.init.normal_(a_dict[name].weight, std=1.0 / r)
                elif init == "kaiming":
                    nn.init.kaiming_uniform_(a_dict[name].weight, a=math.sqrt(5))
                else:
                    raise AdapterError(
                        f"adapter.init: {init!r} with adapter.target_parameters; allowed: kaiming, gaussian"
                    )
                nn.init.zeros_(b_dict[name].weight)
        self.lora_A[adapter], self.lora_B[adapter] = a_dict, b_dict
        self.lora_dropout[adapter] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _own_forward(self, names: list[str]) -> bool:
        """Whether the low-rank path runs in this wrapper's own forward (expert weights of an experts module)."""
        return self.experts and all(self.param(n).dim() == 3 for n in names)

    def saved_prefix(self, adapter: str, name: str) -> str:
        """peft's nesting: '' for the adapter's last parameter here, 'base_layer.' for the one before, ..."""
        order = self.params_of(adapter)
        return "base_layer." * (len(order) - 1 - order.index(name))

    # --- maths ------------------------------------------------------------------------------------
    def factors(self, adapter: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A as (E, r, in), B as (E, out, r)): views of the stored (E·r, in) and (out, r·E) weights."""
        a, b = self.lora_A[adapter][name].weight, self.lora_B[adapter][name].weight
        experts = a.shape[0] // self.r[adapter][name]
        return a.view(experts, -1, a.shape[-1]), b.view(b.shape[0], -1, experts).permute(2, 0, 1)

    def delta_weight(self, adapter: str, name: str) -> torch.Tensor:
        """s · B_e A_e for every expert, laid out like the parameter (the merge; the forward never forms it)."""
        a, b = self.lora_A[adapter][name].weight, self.lora_B[adapter][name].weight
        s = self.scaling[adapter][name]
        param = self.param(name)
        if param.dim() == 2:
            return (b @ a) * s
        a3, b3 = self.factors(adapter, name)
        delta = torch.bmm(b3, a3) * s  # (E, out, in)
        return delta.transpose(1, 2) if getattr(self.base_layer, "is_transposed", False) else delta

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        adapter = self.active_adapter
        if adapter is None or adapter in self.merged_adapters:
            return self.base_layer(*args, **kwargs)
        names = self.params_of(adapter)
        if self._own_forward(names):
            return experts_forward(self, adapter, *args, **kwargs)
        weights = {}
        for name in names:
            param = self.param(name)
            weights[name] = param + self.delta_weight(adapter, name).to(param.dtype)
        return torch.func.functional_call(self.base_layer, weights, args, kwargs, strict=False)

    def project(
        self,
        adapter: str,
        name: str,
        x: torch.Tensor,
        expert_ids: torch.Tensor,
        offsets: torch.Tensor,
        rebuild: Recipe,
    ) -> torch.Tensor:
        """Tokens sorted by expert through expert weight `name`: the base GEMM plus, when adapted, the
        low-rank path on the same groups of tokens, `(x_e A_eᵀ)(s · B_eᵀ)`.
        `rebuild` = (the tensors it reads, a function giving `x` again): without dropout, the low-rank path
        keeps that recipe for its backward instead of an (S, in) copy of `x` (`kept_as_recipe`)."""
        experts = self.base_layer
        bias = getattr(experts, f"{name}_bias")[expert_ids] if experts.has_bias else None
        weight = self.param(name)
        y = grouped_mm(x, weight if experts.is_transposed else weight.transpose(1, 2), offsets)
        if bias is not None:
            y = y + bias
        if name not in self.lora_A[adapter]:
            return y
        a3, b3 = self.factors(adapter, name)
        dropout = self.lora_dropout[adapter]
        xa = x.to(a3.dtype)
        if (
            RECOMPUTE_LORA_INPUT
            and torch.is_grad_enabled()
            and isinstance(dropout, nn.Identity)
            and not _saved_tensor_hooks_active()
        ):
            sources, make = rebuild
            with kept_as_recipe(xa, sources, lambda: make().to(a3.dtype)):
                h = grouped_mm(xa, a3.transpose(1, 2), offsets)  # (S, r)
        else:
            h = grouped_mm(dropout(xa), a3.transpose(1, 2), offsets)
        # grouped GEMMs need one of a weight's last two dims contiguous: B as (E, r, out), a small copy, which
        # takes the scaling (not the (S, out) update, nor its gradient)
        b_scaled = (
            b3.transpose(1, 2).clone(memory_format=torch.contiguous_format).mul_(self.scaling[adapter][name])
        )
        update = grouped_mm(h, b_scaled, offsets)
        return y.add_(update.to(y.dtype))

    # --- merge ------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, adapter: str, exact: bool = False) -> None:
        if not self.has_adapter(adapter):
            return
        if adapter in self.merged_adapters:
            raise AdapterError(f"adapter {adapter!r} is already merged")
        for name in self.params_of(adapter):
            param = self.param(name)
            param.copy_((param.float() + self.delta_weight(adapter, name).float()).to(param.dtype))
        self.merged_adapters.append(adapter)

    @torch.no_grad()
    def unmerge(self, adapter: str) -> None:
        if adapter not in self.merged_adapters:
            return
        for name in self.params_of(adapter):
            param = self.param(name)
            param.copy_((param.float() - self.delta_weight(adapter, name).float()).to(param.dtype))
        self.merged_adapters.remove(adapter)

    def extra_repr(self) -> str:
        kind = type(self.base_layer).__name__
        return f"{kind}, adapters={self.adapter_names}, active={self.active_adapter}"


def grouped_mm(
    x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, native: bool | None = None
) -> torch.Tensor:
    """x (S, in) sorted by expert times weight (E, in, out) per group: torch's grouped_mm where it surely runs
    (CPU, or bf16 as transformers' own experts use it; strides in multiples of 16 bytes), else transformers'
    per-expert loop (any dtype, device and shape; the adapter's fp32 factors on a GPU)."""
    if native is None:
        aligned = all(st * t.element_size() % 16 == 0 for t in (x, weight) for st in t.stride() if st != 1)
        native = aligned and (weight.device.type == "cpu" or weight.dtype == torch.bfloat16)
    if native:
        return _grouped_mm(x, weight, offsets)
    return torch.ops.transformers.grouped_mm_fallback(x.to(weight.dtype), weight, offs=offsets)


def experts_forward(
    layer: LoraParams,
    adapter: str,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """A transformers experts forward (any of its layouts: gated or not, transposed, biases, post-expert
    norm) with adapter `adapter`'s low-rank paths: the (token, expert) pairs sorted by expert, each weight
    one grouped GEMM, the outputs weighted and summed per token as transformers' grouped_mm does."""
    experts = layer.base_layer
    if getattr(experts, "_is_expert_parallel", False):
        raise AdapterError("LoRA on expert weights does not support expert-parallel experts modules")
    num_top_k, num_tokens = top_k_index.size(-1), hidden_states.size(0)
    expert_ids, perm = torch.sort(top_k_index.reshape(-1), stable=True)
    counts = torch.bincount(expert_ids, minlength=experts.num_experts)
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    up = "gate_up_proj" if experts.has_gate else "up_proj"
    token_of = perm // num_top_k
    x = hidden_states[token_of]
    h = layer.project(
        adapter, up, x, expert_ids, offsets, ((hidden_states,), lambda: hidden_states[token_of])
    )
    activate = experts._apply_gate if experts.has_gate else experts.act_fn
    y = layer.project(adapter, "down_proj", activate(h), expert_ids, offsets, ((h,), lambda: activate(h)))
    if getattr(experts, "has_post_expert_norm", False):
        y = experts.post_expert_norm(y)
    y = y * top_k_weights.reshape(-1)[perm].unsqueeze(-1)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return y[inverse].view(num_tokens, num_top_k, -1).sum(dim=1).to(hidden_states.dtype)
