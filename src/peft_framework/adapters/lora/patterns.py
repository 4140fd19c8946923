"""LoRA's per-module ranks and alphas (`adapter.rank_pattern` / `adapter.alpha_pattern`), matched as peft does.

A key is a regex matched against the END of a target's key, at a dot boundary: `re.match(rf"(.*\\.)?({key})$",
target)`; the first key that matches wins (peft's `get_pattern_key`). A module's key is its path
(`model.layers.0.self_attn.q_proj`); an adapted parameter's (`adapter.target_parameters`) is its module path and
name (`model.layers.0.mlp.experts.down_proj`). Targets no key matches use `r` / `alpha`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from peft_framework.errors import AdapterError


def matching_key(patterns: Iterable[str], target: str) -> str | None:
    """The first pattern matching `target` (peft's rule), or None."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", target):
            return key
    return None


def rank_alpha(
    rank_pattern: Mapping[str, int] | None,
    alpha_pattern: Mapping[str, float] | None,
    target: str,
    r: int,
    alpha: float,
) -> tuple[int, float]:
    """(r, alpha) of one target."""
    r_key = matching_key(rank_pattern or {}, target)
    a_key = matching_key(alpha_pattern or {}, target)
    return (
        rank_pattern[r_key] if r_key is not None else r,
        alpha_pattern[a_key] if a_key is not None else alpha,
    )


def check_patterns_used(
    rank_pattern: Mapping[str, int] | None, alpha_pattern: Mapping[str, float] | None, targets: list[str]
) -> None:
    """A key that matches no adapted module or parameter is a typo, never silently ignored."""
    for field, pattern in (("rank_pattern", rank_pattern), ("alpha_pattern", alpha_pattern)):
        for key in pattern or {}:
            if not any(matching_key([key], t) for t in targets):
                examples = ", ".join(targets[:3]) + (", ..." if len(targets) > 3 else "")
                raise AdapterError(
                    f"adapter.{field}: key {key!r} matches no adapted module or parameter; allowed: a regex "
                    f"matching the end of an adapted path (at a dot), e.g. of {examples}"
                )
