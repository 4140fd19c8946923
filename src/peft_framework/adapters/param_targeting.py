"""Which parameters `adapter.target_parameters` selects (peft's rule: a parameter's full name equals an
entry or ends with `.entry`), and what to write back as peft's `target_parameters`.

Each entry must select something: one that matches nothing is an error listing the model's expert and
router parameters (what MoE users mean to name). Only 2-D and 3-D weights can be adapted.
"""

from __future__ import annotations

from torch import nn

from peft_framework.adapters.layer import AdapterLayer
from peft_framework.adapters.targeting import inside, wrapper_paths
from peft_framework.errors import AdapterError
from peft_framework.models.moe import candidate_params

KEY = "adapter.target_parameters"


def short_param_name(full: str) -> str:
    """'model.layers.3.mlp.experts.down_proj' -> 'mlp.experts.down_proj' (what users type)."""
    return ".".join(full.split(".")[-3:])


def base_params(model: nn.Module, own: type[AdapterLayer]) -> dict[str, tuple[str, str, int]]:
    """Full parameter name as in the base model -> (wrapper or module path, parameter name, ndim); modules inside
    wrappers are skipped, except the base of an `own` wrapper (an earlier adapter's `LoraParams`)."""
    wrappers = wrapper_paths(model)
    out: dict[str, tuple[str, str, int]] = {}
    for path, module in model.named_modules():
        if isinstance(module, own):
            module = module.base
        elif inside(path, wrappers) or isinstance(module, AdapterLayer):
            continue
        for name, param in module._parameters.items():
            if param is not None:
                out[f"{path}.{name}" if path else name] = (path, name, param.dim())
    return out


def _matches(full: str, entry: str) -> bool:
    return full == entry or full.endswith("." + entry)


def find_param_targets(model: nn.Module, entries: list[str], own: type[AdapterLayer]) -> dict[str, list[str]]:
    """Module path -> names of its parameters to adapt. AdapterError naming each entry that matches no
    parameter (with the model's expert/router parameters) or one that is not a 2-D/3-D weight."""
    found: dict[str, list[str]] = {}
    used: set[str] = set()
    bad: list[str] = []
    for full, (path, name, ndim) in base_params(model, own).items():
        hits = [e for e in entries if _matches(full, e)]
        if not hits:
            continue
        used.update(hits)
        if ndim not in (2, 3) or name.endswith("bias"):
            bad.append(f"{hits[0]!r} selects {full!r}, a {ndim}-D {'bias' if 'bias' in name else 'tensor'}")
            continue
        found.setdefault(path, []).append(name)
    missing = [e for e in entries if e not in used]
    problems = [f"{e!r} matches no parameter of the model" for e in missing] + bad
    if problems:
        candidates = candidate_params(model)
        listed = ", ".join(sorted({short_param_name(c) for c in candidates})) or "none (not an MoE model)"
        raise AdapterError(
            f"{KEY}: allowed: names or suffixes of 2-D/3-D weights. The model's expert and router parameters "
            f"are: {listed} (full names like {candidates[0] if candidates else '-'!r})",
            problems,
        )
    return found


def saved_target_parameters(
    model: nn.Module, targets: set[str], own: type[AdapterLayer], user: list[str] | None
) -> list[str]:
    """What to write as peft's `target_parameters` so that peft selects exactly `targets` (full names): the
    user's entries when they do, else the short names, else the full names."""
    names = list(base_params(model, own))

    def reproduces(entries: list[str]) -> bool:
        return {n for n in names if any(_matches(n, e) for e in entries)} == targets

    for entries in ([user] if user else []) + [sorted({short_param_name(t) for t in targets})]:
        if reproduces(entries):
            return sorted(entries)
    return sorted(targets)
