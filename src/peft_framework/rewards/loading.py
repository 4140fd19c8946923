"""`train.rewards` -> `Reward`s: the built-ins, and plug-ins from the `peft_framework.rewards` entry-point group.

A plug-in's entry point names either a reward function `fn(prompts, completions, **columns)` (then it takes
no options) or a class: the entry's options are passed to it as keyword arguments and the instance is the
function. Either may declare the data columns it needs as a `columns` attribute (a tuple of names), which
data preparation checks every row for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from peft_framework.config.rewards_schema import ENTRY_POINT_GROUP, RewardConfig, available
from peft_framework.errors import ConfigError
from peft_framework.rewards.builtin import BUILTIN


@dataclass(frozen=True)
class Reward:
    """A reward function with its metric name, weight and needed columns; called like a TRL reward function."""

    name: str
    weight: float
    fn: Callable[..., list[Any]]
    columns: tuple[str, ...] = ()
    origin: str = "built-in"
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[Any]:
        return self.fn(prompts, completions, **columns)


def _plugin_target(name: str) -> tuple[Any, str]:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
            module, _, attr = ep.value.partition(":")
            try:
                obj = importlib.import_module(module)
                for part in attr.split(".") if attr else ():
                    obj = getattr(obj, part)
            except Exception as exc:  # noqa: BLE001 - a broken plug-in is the user's to fix; say which
                raise ConfigError(
                    "invalid config",
                    [
                        f"train.rewards: reward {name!r} ({ep.value}, from {origin}) cannot be imported: {exc!r}"
                    ],
                ) from exc
            return obj, origin
    raise ConfigError(
        "invalid config", [f"train.rewards: unknown reward {name!r}; allowed: {', '.join(available())}"]
    )


def build_reward(cfg: RewardConfig, where: str = "train.rewards") -> Reward:
    options = cfg.options
    if cfg.name in BUILTIN:
        fn: Any = BUILTIN[cfg.name](**options)
        origin = "built-in"
    else:
        target, origin = _plugin_target(cfg.name)
        if isinstance(target, type):
            try:
                fn = target(**options)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    "invalid config",
                    [f"{where}: reward {cfg.name!r} ({origin}) rejects its options {options}: {exc}"],
                ) from exc
        elif options:
            raise ConfigError(
                "invalid config",
                [
                    f"{where}: reward {cfg.name!r} ({origin}) is a function and takes no options; got {options}"
                ],
            )
        else:
            fn = target
        if not callable(fn):
            raise ConfigError("invalid config", [f"{where}: reward {cfg.name!r} ({origin}) is not callable"])
    columns = tuple(getattr(fn, "columns", ()) or ())
    return Reward(cfg.key, float(cfg.weight), fn, columns, origin, options)


def load_rewards(train_config) -> list[Reward]:
    """The reward functions of `train.rewards`, in order."""
    return [build_reward(cfg, f"train.rewards[{i}]") for i, cfg in enumerate(train_config.rewards)]


def needed_columns(train_config) -> dict[str, tuple[str, ...]]:
    """Reward name -> the data columns it needs (for data preparation's checks)."""
    return {reward.name: reward.columns for reward in load_rewards(train_config)}
