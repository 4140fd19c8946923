"""The table of training objectives (`train.objective`): names, the `data.kind`s each accepts, and where its
module lives. Light (no torch), so config validation reads it; `training.objectives.get` builds them."""

from __future__ import annotations

from dataclasses import dataclass

PAIRED = ("preference",)
UNPAIRED = ("unpaired_preference",)
PROMPTS = ("prompt",)


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
            ("instruction", "chat", "text", "classification", "vision"),
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
        ObjectiveSpec(
            "grpo",
            PROMPTS,
            "peft_framework.training.objectives.grpo:GRPO",
            "GRPO: sampled completions scored by train.rewards (online)",
        ),
    )
}


def names() -> list[str]:
    return list(OBJECTIVES)


def spec(name: str) -> ObjectiveSpec:
    return OBJECTIVES[name]
