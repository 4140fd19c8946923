"""Bottleneck adapter layers and the wrapper that puts them behind (or beside) a transformer sublayer.

    f(h) = up(act(down(h))) * scaling          down: hidden -> hidden // reduction_factor, up: back
    sequential:  out = h + f(h)    (h = the sublayer's output; residual=False: out = f(h))
    parallel:    out = h + f(x)    (x = the sublayer's input)

`up` starts at zero (weight and bias), so a fresh adapter adds exactly 0: the model is unchanged.

`BottleneckSublayer` wraps one sublayer of a block, in one of two ways:
- kind "output" (pre-LN blocks: Llama's `self_attn`/`mlp`, GPT-2's `attn`/`mlp`): the sublayer is called
  as is and the adapter acts on its output (the first element when it returns a tuple), before the block
  adds its residual.
- kind "post_ln" (BERT's `attention.output`/`output`: dense -> dropout -> LayerNorm(h + input_tensor)): the
  adapter acts on the dropout's output, before the residual add and LayerNorm, as in Houlsby et al.
With no active adapter the wrapped sublayer runs exactly as before.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import nn
from transformers.activations import ACT2FN

from peft_framework.adapters.layer import AdapterLayer, adapter_factory
from peft_framework.errors import AdapterError

_INPUT_KWARGS = ("hidden_states", "x", "input", "inputs")

Kind = Literal["output", "post_ln"]


def activation(name: str) -> nn.Module:
    if name == "identity":
        return nn.Identity()
    if name == "swish":
        name = "silu"
    if name not in ACT2FN:
        raise AdapterError(
            f"adapter.non_linearity: {name!r} is not known; allowed: relu, swish, gelu, tanh, ..."
        )
    return ACT2FN[name]


class BottleneckAdapter(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        bottleneck_size: int,
        non_linearity: str,
        scaling: float,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size, dtype=dtype, device=device)  # kaiming-uniform
        self.act = activation(non_linearity)
        self.up = nn.Linear(bottleneck_size, hidden_size, dtype=dtype, device=device)
        self.scaling = float(scaling)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h))) * self.scaling

    def extra_repr(self) -> str:
        return f"scaling={self.scaling}"


class BottleneckSublayer(AdapterLayer):
    """A transformer sublayer plus named bottleneck adapters (at most one active)."""

    adapter_containers: ClassVar[dict[str, type[nn.Module]]] = {"bottleneck": nn.ModuleDict}
    delegate_attributes: ClassVar[bool] = True  # the block reads layer_idx, config, ... of its sublayers
    bottleneck: nn.ModuleDict

    def __init__(self, base_layer: nn.Module, kind: Kind, hidden_size: int) -> None:
        super().__init__(base_layer)
        self.kind = kind
        self.hidden_size = hidden_size
        self.mode: dict[str, str] = {}
        self.residual: dict[str, bool] = {}

    def add_adapter(
        self, name: str, bottleneck_size: int, non_linearity: str, scaling: float, mode: str, residual: bool
    ) -> None:
        self.check_new(name)
        factory = adapter_factory(next(self.base_layer.parameters(), None))
        self.bottleneck[name] = BottleneckAdapter(
            self.hidden_size, bottleneck_size, non_linearity, scaling, **factory
        )
        self.mode[name] = mode
        self.residual[name] = residual

    # --- forward ----------------------------------------------------------------------------------
    def _adapt(self, name: str, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        adapter = self.bottleneck[name]
        dtype = adapter.down.weight.dtype
        source = x if self.mode[name] == "parallel" else h
        delta = adapter(source.to(dtype)).to(h.dtype)
        if self.mode[name] == "sequential" and not self.residual[name]:
            return delta
        return h + delta

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        name = self.active_adapter
        if name is None:
            return self.base_layer(*args, **kwargs)
        if self.kind == "post_ln":
            hidden_states, input_tensor = _two_inputs(args, kwargs)
            base = self.base_layer
            h = base.dropout(base.dense(hidden_states))
            h = self._adapt(name, h, input_tensor)
            return base.LayerNorm(h + input_tensor)
        x = _first_input(args, kwargs)
        out = self.base_layer(*args, **kwargs)
        if isinstance(out, tuple):
            return (self._adapt(name, out[0], x), *out[1:])
        return self._adapt(name, out, x)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, modes={self.mode}, active={self.active_adapter}"


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in _INPUT_KWARGS:
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    raise AdapterError(
        "bottleneck adapter: cannot find the sublayer's input tensor (hidden_states) in its call"
    )


def _two_inputs(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    values = list(args) + [kwargs[k] for k in ("hidden_states", "input_tensor") if k in kwargs]
    if len(values) != 2:
        raise AdapterError(
            "bottleneck adapter: expected (hidden_states, input_tensor) for a BERT-style output block"
        )
    return values[0], values[1]
