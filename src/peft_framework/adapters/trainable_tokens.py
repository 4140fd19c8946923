"""`adapter.trainable_token_indices`: chosen rows of the token embedding trained in full (peft's trainable
tokens), so that tokens added to the tokenizer (`model.add_tokens`) or left untrained by the base model's
pre-training get embeddings of their own without training the whole matrix.

Each adapter keeps the trained rows (`trainable_tokens_delta`, one row per index) and, in forward, uses them
in place of the base rows; the base weight itself is never touched until a merge copies the rows in. As in
peft, the rows *replace* the base rows (they start as copies of them): an adapter loaded onto a base whose new
rows were initialised differently (a resize draws them at random) still computes exactly what was trained.

Which layers: a list of indices means the input embedding, and an output embedding that shares its weight
(tied `lm_head`) follows it; a dict maps layer names (suffixes of module paths, e.g. `embed_tokens`,
`lm_head`) to indices, for an untied `lm_head` whose new rows must be trained too. On disk (peft's names):
`<path>.token_adapter.trainable_tokens_delta`, none for a tied layer; peft may also save the whole resized
matrices (`<path>.token_adapter.base_layer.weight`), which loading copies into the base.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peft_framework.adapters.layer import AdapterLayer, adapter_factory, quantization
from peft_framework.adapters.targeting import base_module_paths, replace_module
from peft_framework.errors import AdapterError

#: the on-disk name of a layer's rows, relative to its path (peft's TrainableTokensWrapper.token_adapter)
DELTA_KEY = "token_adapter.trainable_tokens_delta"
#: the full (resized) matrix peft writes beside the rows when the vocabulary was resized
PEFT_BASE_WEIGHT_KEY = "token_adapter.base_layer.weight"

TokenIndices = list[int] | dict[str, list[int]]


class TrainableTokens(AdapterLayer):
    """An embedding (or a tied/untied output projection) with some rows replaced by trained ones."""

    adapter_containers: ClassVar[dict[str, type[nn.Module]]] = {"trainable_tokens_delta": nn.ParameterDict}
    delegate_attributes: ClassVar[bool] = True
    trainable_tokens_delta: nn.ParameterDict

    def __init__(self, base_layer: nn.Module) -> None:
        if not isinstance(base_layer, (nn.Embedding, nn.Linear)) or quantization(base_layer) is not None:
            raise AdapterError(
                f"adapter.trainable_token_indices: selects a {type(base_layer).__name__}; allowed: embedding "
                "layers and an unquantized output projection (lm_head)"
            )
        super().__init__(base_layer)
        self.token_indices: dict[str, list[int]] = {}
        # a tied output projection reads the rows of the embedding it shares its weight with; kept in a list
        # so that it is not a submodule (its rows are neither trained nor saved twice)
        self._tied_to: list[TrainableTokens] = []
        self._merged_rows: dict[str, torch.Tensor] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def source(self) -> TrainableTokens:
        """The layer holding the rows: this one, or the embedding a tied projection follows."""
        return self._tied_to[0] if self._tied_to else self

    @property
    def adapter_names(self) -> list[str]:
        return list(self.source.token_indices)

    def add_adapter(self, name: str, indices: list[int], tied_to: TrainableTokens | None = None) -> None:
        rows = self.weight.shape[0]
        bad = [i for i in indices if not 0 <= i < rows]
        if bad:
            raise AdapterError(
                f"adapter.trainable_token_indices: {bad[:5]} are not rows of the {rows}-row embedding; allowed: "
                f"0..{rows - 1} (tokens added with model.add_tokens get rows once the embeddings are resized)"
            )
        if tied_to is not None:
            self._tied_to = [tied_to]
            return
        self.check_new(name)
        self.token_indices[name] = list(indices)
        index = torch.tensor(indices, device=self.weight.device)
        rows = self.weight.detach()[index].to(adapter_factory(self.weight)["dtype"])  # fp32 on a half base
        self.trainable_tokens_delta[name] = nn.Parameter(rows.clone())

    def rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, trained rows) of adapter `name`, on the base weight's device and in its dtype."""
        source = self.source
        weight = self.weight
        index = torch.tensor(source.token_indices[name], device=weight.device)
        return index, source.trainable_tokens_delta[name].to(weight.dtype)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self.active_adapter
        if name is None or name in self.merged_adapters:
            return self.base_layer(x, *args, **kwargs)
        index, delta = self.rows(name)
        weight = self.weight.index_copy(0, index, delta)  # the base matrix with the trained rows in place
        base = self.base_layer
        if isinstance(base, nn.Embedding):
            out = F.embedding(
                x, weight, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq
            )
            scale = getattr(base, "embed_scale", None)  # scaled embeddings (Gemma) scale in their forward
            return out if scale is None else out * scale.to(out.dtype)
        return F.linear(x, weight, base.bias)

    @torch.no_grad()
    def merge(self, name: str, exact: bool = False) -> None:
        """Copy the trained rows into the base weight (a tied projection shares it: nothing more to do)."""
        if not self.has_adapter(name) or name in self.merged_adapters:
            return
        if not self._tied_to:
            index, delta = self.rows(name)
            self._merged_rows[name] = self.weight[index].clone()
            self.weight.index_copy_(0, index, delta)
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self.merged_adapters:
            return
        if not self._tied_to:
            index, _ = self.rows(name)
            self.weight.index_copy_(0, index, self._merged_rows.pop(name))
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        tied = " (tied)" if self._tied_to else ""
        return f"adapters={self.adapter_names}{tied}, active={self.active_adapter}"


def token_layer_indices(model: nn.Module, indices: TokenIndices) -> dict[str, list[int]]:
    """Module path -> indices: a list is for the input embedding; dict keys name layers by path suffix."""
    if isinstance(indices, list):
        return {path_of(model, model.get_input_embeddings()): list(indices)}
    paths = base_module_paths(model)
    out: dict[str, list[int]] = {}
    for key, ids in indices.items():
        hits = [p for p in paths if p == key or p.endswith("." + key)]
        if len(hits) != 1:
            found = "no module" if not hits else f"{len(hits)} modules ({', '.join(hits[:3])})"
            raise AdapterError(
                f"adapter.trainable_token_indices: {key!r} matches {found}; allowed: the name of one embedding "
                "or output layer, e.g. 'embed_tokens' or 'lm_head'"
            )
        out[hits[0]] = list(ids)
    return out


def _unwrapped(module: nn.Module) -> nn.Module:
    return module.base if isinstance(module, AdapterLayer) else module


def path_of(model: nn.Module, module: nn.Module) -> str:
    """The path of `module` in `model`, or of the adapter wrapper around it."""
    return next(p for p, m in model.named_modules() if m is module or _unwrapped(m) is module)


def tied_output_path(model: nn.Module) -> str | None:
    """The path of the output projection that shares the input embedding's weight (tied lm_head), if any."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is None:
        return None
    output, embedding = _unwrapped(output), _unwrapped(model.get_input_embeddings())
    return path_of(model, output) if getattr(output, "weight", None) is embedding.weight else None


def add_trainable_tokens(model: nn.Module, adapter_name: str, indices: TokenIndices) -> list[str]:
    """Wrap the layers `indices` names (and a tied output projection) and add adapter `adapter_name`'s rows;
    returns the wrapped paths, sources before the projections tied to them."""
    layers = token_layer_indices(model, indices)
    wrapped: list[str] = []
    for path, ids in layers.items():
        if path in wrapped:  # a tied projection, done with its embedding
            continue
        layer = _wrapper_at(model, path)
        layer.add_adapter(adapter_name, ids)
        wrapped.append(path)
        is_input = layer.base is _unwrapped(model.get_input_embeddings())
        tied = tied_output_path(model) if is_input else None
        # as peft: the tied projection follows the embedding unless the dict gives it other indices
        if tied is not None and layers.get(tied, ids) == ids:
            _wrapper_at(model, tied).add_adapter(adapter_name, ids, tied_to=layer)
            wrapped.append(tied)
    return wrapped


def _wrapper_at(model: nn.Module, path: str) -> TrainableTokens:
    module = model.get_submodule(path)
    if isinstance(module, TrainableTokens):
        return module
    if isinstance(module, AdapterLayer):
        raise AdapterError(
            f"adapter.trainable_token_indices: {path!r} is already wrapped by another adapter layer "
            f"({type(module).__name__}); allowed: layers that target_modules and modules_to_save do not touch"
        )
    layer = TrainableTokens(module)
    replace_module(model, path, layer)
    return layer


def token_tensors(model: nn.Module, paths: list[str], adapter_name: str) -> dict[str, nn.Parameter]:
    """The trained rows of adapter `adapter_name`, by on-disk name (tied projections save nothing)."""
    out: dict[str, nn.Parameter] = {}
    for path in paths:
        layer = model.get_submodule(path)
        if not layer._tied_to:
            out[f"{path}.{DELTA_KEY}"] = layer.trainable_tokens_delta[adapter_name]
    return out


def is_peft_base_weight(key: str) -> bool:
    return key.endswith("." + PEFT_BASE_WEIGHT_KEY)


@torch.no_grad()
def load_peft_base_weights(
    model: nn.Module, state: dict[str, torch.Tensor], prefix: str
) -> dict[str, torch.Tensor]:
    """Copy the whole resized matrices peft saves beside the rows (`save_embedding_layers`) into the base
    layers; returns `state` without them. Their shapes must match the (resized) model's."""
    rest = dict(state)
    for key in [k for k in state if is_peft_base_weight(k)]:
        path = key[len(prefix) : -len("." + PEFT_BASE_WEIGHT_KEY)]
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
        weight = module.weight if isinstance(module, TrainableTokens) else None
        if weight is None or tuple(weight.shape) != tuple(state[key].shape):
            have = "no trainable-tokens layer" if weight is None else f"shape {tuple(weight.shape)}"
            raise AdapterError(
                f"{key}: a {tuple(state[key].shape)} embedding matrix, but the model has {have} there (resize "
                "the base model's embeddings to the adapter's tokenizer first: len(tokenizer) rows)"
            )
        weight.copy_(rest.pop(key))
    return rest
