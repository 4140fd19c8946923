"""`adapter.modules_to_save`: whole modules (a classification head, an embedding) trained in full, one copy
per adapter, shared by every adapter type. Names and behaviour follow peft's `ModulesToSaveWrapper`."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from torch import nn

from peft_framework.adapters.layer import AdapterLayer
from peft_framework.adapters.targeting import base_module_paths, inside, wrapper_paths
from peft_framework.config.schema import AdapterConfigBase
from peft_framework.errors import AdapterError

#: heads peft adds to modules_to_save for sequence classification (missing ones are skipped, like peft)
SEQ_CLS_HEADS = ("classifier", "score")


class ModulesToSave(AdapterLayer):
    """A module trained in full: one copy per adapter, the original kept untouched for the plain base."""

    adapter_containers: ClassVar[dict[str, type[nn.Module]]] = {"modules_to_save": nn.ModuleDict}
    base_attr: ClassVar[str] = "original_module"
    delegate_attributes: ClassVar[bool] = True
    modules_to_save: nn.ModuleDict

    def add_adapter(self, name: str) -> None:
        self.check_new(name)
        clone = copy.deepcopy(self.original_module)
        for param in clone.parameters():
            param.requires_grad = True
        self.modules_to_save[name] = clone
        self.train(self.original_module.training)

    @property
    def active_module(self) -> nn.Module:
        if self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def delegate(self) -> nn.Module:
        return self.active_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module(*args, **kwargs)


def effective_modules_to_save(model: nn.Module, config: AdapterConfigBase) -> list[str] | None:
    """config.modules_to_save, plus the classification head for *ForSequenceClassification models (as peft)."""
    names = list(config.modules_to_save or [])
    if type(model).__name__.endswith("ForSequenceClassification"):
        names += [
            h for h in SEQ_CLS_HEADS if h not in names and isinstance(getattr(model, h, None), nn.Module)
        ]
    return names or None


def resolve_modules_to_save(model: nn.Module, names: list[str] | None, targets: list[str]) -> list[str]:
    """Module paths ending with one of `names` (peft's rule: plain suffix match), outermost only."""
    if not names:
        return []
    wrappers = wrapper_paths(model)
    found: list[str] = []
    used: set[str] = set()
    for path, module in model.named_modules():
        if not path or inside(path, wrappers) or inside(path, found):
            continue
        hits = [n for n in names if path.endswith(n)]
        if not hits or (isinstance(module, AdapterLayer) and not isinstance(module, ModulesToSave)):
            continue
        if path in targets or any(t.startswith(path + ".") for t in targets):
            raise AdapterError(
                f"adapter.modules_to_save: {hits[0]!r} selects {path!r}, which is or contains an adapter "
                f"target; allowed: modules that adapter.target_modules does not touch (e.g. 'lm_head', 'score')"
            )
        found.append(path)
        used.update(hits)
    missing = [n for n in names if n not in used and n not in SEQ_CLS_HEADS]
    if missing:
        top = sorted({p.split(".")[0] for p in base_module_paths(model)})
        from peft_framework.models.parts import model_parts

        parts = model_parts(model)
        if parts.multimodal:  # the top level of a VLM is `model` and `lm_head`: name the parts inside
            inner = {p.rsplit(".", 1)[-1] for paths in parts.top_level().values() for p in paths}
            top = sorted(set(top) | inner)
        raise AdapterError(
            f"adapter.modules_to_save: {missing} match no module of the model; allowed: module names such as "
            f"{', '.join(top)} or deeper paths"
        )
    return found
