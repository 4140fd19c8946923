"""`train.rewards`: the reward functions of an online objective (GRPO), and the options of the built-ins.

Each entry is `{name, weight, label, ...options}`. `name` is a built-in (below) or a reward registered by an
installed package under the `peft_framework.rewards` entry-point group. A built-in's options are checked here
against its options model; a plug-in's options are handed to its class when the rewards are loaded
(`peft_framework.rewards.load_rewards`). Light (no torch): config validation reads it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from peft_framework.config.section import Section

ENTRY_POINT_GROUP = "peft_framework.rewards"


class ExactMatchOptions(Section):
    """1.0 when the completion equals the row's `column` after normalisation (strip, case fold, NFKC,
    whitespace collapsed), else 0.0."""

    column: str = Field("answer", min_length=1, description="The data column holding the expected answer.")


class NumericMatchOptions(Section):
    """1.0 when the last number in the completion equals the row's `column` (within the tolerances), else 0.0."""

    column: str = Field("answer", min_length=1, description="The data column holding the expected number.")
    abs_tol: float = Field(1e-6, ge=0.0)
    rel_tol: float = Field(0.0, ge=0.0)


class SimilarityOptions(Section):
    """Partial credit: difflib's similarity ratio (2 x matching characters / total characters, in [0, 1])
    between the completion and the row's `column`, both normalised as by exact_match."""

    column: str = Field("answer", min_length=1, description="The data column holding the expected answer.")


class RegexFormatOptions(Section):
    """1.0 when the completion matches `pattern` (Python `re`), else 0.0."""

    pattern: str = Field(min_length=1, description="A Python regular expression.")
    mode: Literal["fullmatch", "match", "search"] = Field(
        "fullmatch", description="fullmatch: the whole completion; match: from its start; search: anywhere."
    )
    flags: list[Literal["IGNORECASE", "DOTALL", "MULTILINE"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _compiles(self) -> RegexFormatOptions:
        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression: {exc}") from None
        return self


class LengthOptions(Section):
    """0.0 inside [min, max] (characters or words); outside, -penalty per unit of distance, at most
    -max_penalty."""

    min: int = Field(0, ge=0)
    max: int | None = Field(None, ge=0, description="null: no upper bound")
    unit: Literal["chars", "words"] = "chars"
    penalty: float = Field(0.01, gt=0.0, description="Penalty per character (or word) outside the band.")
    max_penalty: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _band(self) -> LengthOptions:
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max {self.max} is below min {self.min}; allowed: max >= min")
        if self.max is None and self.min == 0:
            raise ValueError("the band [0, unbounded) penalises nothing; allowed: min > 0 or a max")
        return self


BUILTIN_OPTIONS: dict[str, type[Section]] = {
    "exact_match": ExactMatchOptions,
    "numeric_match": NumericMatchOptions,
    "similarity": SimilarityOptions,
    "regex_format": RegexFormatOptions,
    "length": LengthOptions,
}
"""The built-in rewards and their options models (the functions are in peft_framework.rewards.builtin)."""


def plugin_names() -> dict[str, str]:
    """Rewards registered by installed packages: name -> "module:attribute"."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    return sorted({*BUILTIN_OPTIONS, *plugin_names()})


def reward_rows() -> list[dict[str, Any]]:
    """Every reward usable in train.rewards: name, origin, options (built-ins) or target (plug-ins), for the
    `rewards` command."""
    from importlib.metadata import entry_points

    rows = []
    for name, model in BUILTIN_OPTIONS.items():
        fields = model.model_fields.items()
        options = {k: f.get_default(call_default_factory=True) for k, f in fields if not f.is_required()}
        required = [k for k, f in fields if f.is_required()]
        rows.append(
            {"name": name, "origin": "built-in", "required": required, "options": options, "target": None}
        )
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN_OPTIONS:
            continue
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
        rows.append(
            {"name": ep.name, "origin": origin, "required": None, "options": None, "target": ep.value}
        )
    return sorted(rows, key=lambda row: row["name"])


def _errors(exc: ValidationError) -> str:
    problems = []
    for e in exc.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a check across options: the message names them
            problems.append(msg)
        elif e["type"] == "extra_forbidden":
            problems.append(f"unknown option {e['loc'][0]!r}")
        else:
            problems.append(f"{'.'.join(str(p) for p in e['loc'])}: {msg} (got {e.get('input')!r})")
    return "; ".join(problems)


class RewardConfig(Section):
    """One reward function: a built-in or plug-in name, its weight in the total, and its options."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)

    name: str = Field(
        min_length=1,
        description="exact_match | numeric_match | similarity | regex_format | length, or a reward of an installed "
        "package (entry-point group peft_framework.rewards).",
    )
    weight: float = Field(1.0, description="Weight in the total reward (TRL's reward_weights).")
    label: str | None = Field(
        None,
        min_length=1,
        description="The reward's name in metrics (rewards/<label>/mean); null: `name`. Needed when one "
        "function is listed twice.",
    )

    @property
    def key(self) -> str:
        return self.label or self.name

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _known_name_and_options(self) -> RewardConfig:
        if self.name in BUILTIN_OPTIONS:
            try:
                BUILTIN_OPTIONS[self.name](**self.options)
            except ValidationError as exc:
                allowed = ", ".join(BUILTIN_OPTIONS[self.name].model_fields)
                raise ValueError(
                    f"reward {self.name!r}: {_errors(exc)}; options allowed: {allowed}"
                ) from None
        elif self.name not in plugin_names():
            from peft_framework.config.problems import did_you_mean

            names = available()
            raise ValueError(
                f"unknown reward {self.name!r}{did_you_mean(self.name, names)}; allowed: {', '.join(names)} "
                f"(plug-ins register under the entry-point group {ENTRY_POINT_GROUP!r})"
            )
        return self


def check_reward_list(rewards: list[RewardConfig]) -> list[RewardConfig]:
    """Metric names must be unique: a function listed twice needs a `label` on one of them."""
    seen: set[str] = set()
    for i, reward in enumerate(rewards):
        if reward.key in seen:
            raise ValueError(
                f"train.rewards[{i}]: the name {reward.key!r} is used twice; allowed: a distinct `label` "
                "for each entry of the same function"
            )
        seen.add(reward.key)
    return rewards
