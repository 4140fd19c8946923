"""Training objectives: `train.objective` -> one module, the way `adapter.type` picks an adapter method.

The table below is light (no torch): config validation reads which `data.kind`s each objective accepts
from it. `get(name)` imports the objective's module and returns its `Objective` (see `base.py` for the
contract). A new objective (e.g. an online one such as GRPO, with a generation step) is one module and one
row here; the Trainer subclass and the stages stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peft_framework.training.objectives.base import Objective

PAIRED = ("preference",)
UNPAIRED = ("unpaired_preference",)


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    data_kinds: tuple[str, ...]  # the `data.kind`s it trains on
    target: str  # "module:attribute" of its Objective class
    summary: str


OBJECTIVES: dict[str, ObjectiveSpec] = {
    spec.name: spec
    for spec in (
        ObjectiveSpec(
            "sft",
            ("instruction", "chat", "text", "classification"),
            "peft_framework.training.objectives.sft:SFT",
            "next-token (or class) cross-entropy",
        ),
        ObjectiveSpec(
            "dpo",
            PAIRED,
            "peft_framework.training.objectives.pairwise:DPO",
            "DPO (cDPO with label_smoothing)",
        ),
        ObjectiveSpec("ipo", PAIRED, "peft_framework.training.objectives.pairwise:IPO", "IPO"),
        ObjectiveSpec(
            "orpo", PAIRED, "peft_framework.training.objectives.pairwise:ORPO", "ORPO (no reference)"
        ),
        ObjectiveSpec(
            "simpo", PAIRED, "peft_framework.training.objectives.pairwise:SimPO", "SimPO (no reference)"
        ),
        ObjectiveSpec(
            "kto", UNPAIRED, "peft_framework.training.objectives.kto:KTO", "KTO on unpaired labels"
        ),
    )
}


def names() -> list[str]:
    return list(OBJECTIVES)


def spec(name: str) -> ObjectiveSpec:
    return OBJECTIVES[name]


def get(name: str, train_config) -> Objective:
    """The objective `name` built from the `train` section (its settings: beta, ...)."""
    module, _, attr = OBJECTIVES[name].target.partition(":")
    return getattr(import_module(module), attr).from_config(train_config)
