"""The one check of a loaded state dict against the tensors a model expects: names, then shapes."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from peft_framework.errors import AdapterError

_SHOWN = 20  # problems listed per error; the rest are counted


def _listed(problems: list[str]) -> list[str]:
    if len(problems) <= _SHOWN:
        return problems
    return [*problems[:_SHOWN], f"... and {len(problems) - _SHOWN} more"]


def check_state_dict(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    source: str,
    target: str,
    *,
    shapes: bool = True,
) -> None:
    """AdapterError unless `state` (read from `source`) has exactly the keys of `expected` (the tensors of
    `target`) and, with `shapes`, the same shapes. Every problem is named: `missing: k`, `unexpected: k`,
    `k: file (..), model (..)`."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterError(
            f"{source} does not match {target}",
            _listed([f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected]),
        )
    if not shapes:
        return
    wrong = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise AdapterError(f"{source}: tensor shapes do not match {target}", _listed(wrong))
