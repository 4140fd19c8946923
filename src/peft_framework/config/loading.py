"""Raw mapping (+ overrides) -> a validated, frozen `Config`, or one ConfigError listing every problem.

The `adapter` section is resolved against the adapter registry: its concrete model is
`registry.get(adapter.type).config_class`. Keys of *other* registered adapter types are dropped (so one
params.yaml can hold the keys of every type and `adapter.type=ia3` still validates): silently where the
value is that type's default, with one warning line where the file sets a value that will not be used,
and as an error where an override sets it: the user asked for a value that would not be used. Keys that belong to no adapter type are errors with a did-you-mean.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from peft_framework.config.harness_schema import harness_problems
from peft_framework.config.overrides import apply_overrides
from peft_framework.config.problems import (
    error_lines,
    show,
    single_model,
    unknown_key_problem,
    yaml_fields,
)
from peft_framework.config.schema import SECTIONS, AdapterConfigBase, Config
from peft_framework.config.yamlio import read_config_file
from peft_framework.errors import ConfigError

DEFAULT_ADAPTER_TYPE: str = AdapterConfigBase.model_fields["type"].default


class ConfigWarning(UserWarning):
    """Something in the config is ignored (e.g. keys of another adapter type)."""


def adapter_config_classes() -> dict[str, type[AdapterConfigBase]]:
    """`adapter.type` -> its config model, for every registered type that imports cleanly."""
    from peft_framework.adapters import registry

    return registry.config_classes()


def _adapter_config_class(type_name: Any, problems: list[str]) -> type[AdapterConfigBase] | None:
    from peft_framework.adapters import registry

    if not isinstance(type_name, str):
        problems.append(
            f"adapter.type: got {show(type_name)}; allowed: one of {', '.join(registry.available())}"
        )
        return None
    try:
        return registry.config_class(type_name)
    except ConfigError as exc:  # unknown type: the registry's message has the did-you-mean
        problems.extend(exc.problems or [str(exc)])
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is reported as a config problem, not a crash
        origin = registry.available()[type_name].origin
        problems.append(
            f"adapter.type: {type_name!r} ({origin}) failed to load: {type(exc).__name__}: {exc}; "
            "reinstall or fix that package, or choose another type"
        )
    return None


def _resolve_adapter(
    raw: Any, overridden: set[str], problems: list[str], warns: list[str]
) -> AdapterConfigBase | None:
    """Validate the `adapter:` mapping against the config class of its type."""
    from peft_framework.adapters import registry

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"adapter: got {show(raw)}; allowed: a mapping with at least the key 'type'")
        return None
    type_name = raw.get("type", DEFAULT_ADAPTER_TYPE)
    chosen = _adapter_config_class(type_name, problems)
    classes = adapter_config_classes()
    broken = sorted(set(registry.available()) - set(classes))
    owners: dict[str, list[str]] = {}
    for name, cls in classes.items():
        for key in cls.own_keys():
            owners.setdefault(key, []).append(name)
    own_keys = chosen.own_keys() if chosen is not None else set()

    kept: dict[str, Any] = {}
    ignored: dict[str, list[str]] = {}  # other type(s) -> their keys found here
    for key, value in raw.items():
        if key in own_keys or (chosen is None and key in owners):
            kept[key] = value
        elif key in owners:
            types_ = "/".join(sorted(owners[key]))
            if any(classes[t].is_default(key, value) for t in owners[key]):
                continue  # another type's key at its default (the shipped params.yaml lists them all)
            if key in overridden:
                problems.append(
                    f"adapter.{key}: set by an override but it is a key of adapter type {types_}, not of the "
                    f"chosen {type_name!r}; also set adapter.type={owners[key][0]} or drop the override"
                )
            else:
                ignored.setdefault(types_, []).append(str(key))
        else:
            candidates = sorted(own_keys) if chosen is not None else sorted(owners)
            hint_pool = candidates + sorted(set(owners) - set(candidates))
            line = unknown_key_problem(
                f"adapter.{key}", str(key), hint_pool, "unknown key for any adapter type"
            )
            if "did you mean" not in line and chosen is not None:
                allowed = ", ".join(candidates)
                line = f"adapter.{key}: unknown key; allowed keys for type {type_name!r}: {allowed}"
            if broken:
                line += f" (adapter type(s) {', '.join(broken)} failed to load, so their keys are unknown)"
            problems.append(line)
    if ignored:
        listed = "; ".join(f"{types_}: {', '.join(keys)}" for types_, keys in ignored.items())
        warns.append(
            f"adapter: ignoring keys of other adapter types (adapter.type is {type_name!r}): {listed}"
        )
    if chosen is None:
        return None
    try:
        return chosen.model_validate(kept)
    except ValidationError as exc:
        problems.extend(error_lines(exc, chosen, kept, prefix=("adapter",)))
        return None


def _validate_sections(data: dict[str, Any], problems: list[str]) -> Config | None:
    """Every section but `adapter`, validated in one pydantic pass (all errors at once)."""
    rest = {k: v for k, v in data.items() if k != "adapter"}
    try:
        return Config.model_validate(rest)
    except ValidationError as exc:
        problems.extend(error_lines(exc, Config, rest))
        return None


def _none_sections_to_empty(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """A section written with no keys (`train:` then nothing, i.e. null in YAML) means all its defaults."""
    out = dict(data)
    fields = yaml_fields(model)
    for key, value in data.items():
        if key not in fields:
            continue
        sub = single_model(fields[key][1].annotation)
        if sub is None:
            continue
        if value is None:
            if type(None) not in get_args(fields[key][1].annotation):  # optional sections stay null (off)
                out[key] = {}
        elif isinstance(value, dict):
            out[key] = _none_sections_to_empty(sub, value)
    return out


def _section_order(line: str) -> int:
    head = line.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
    if line.startswith("override "):
        return -1
    return SECTIONS.index(head) if head in SECTIONS else len(SECTIONS)


def _resolve(data: dict[str, Any], overrides: Iterable[str]) -> tuple[Config, list[str]]:
    if not isinstance(data, dict):
        raise ConfigError(f"config: the top level must be a mapping of sections ({', '.join(SECTIONS)})")
    merged, applied, problems = apply_overrides(data, list(overrides))
    overridden = {ov.path[1] for ov in applied if len(ov.path) >= 2 and ov.path[0] == "adapter"}
    warns: list[str] = []
    for key in merged:
        if key not in SECTIONS:
            problems.append(unknown_key_problem(str(key), str(key), SECTIONS, "unknown section"))
    merged = _none_sections_to_empty(Config, {k: v for k, v in merged.items() if k in SECTIONS})
    adapter = _resolve_adapter(merged.get("adapter"), overridden, problems, warns)
    config = _validate_sections(merged, problems)
    if config is not None and adapter is not None and config.model.quantization.bits is not None:
        from peft_framework.models.quantization import config_problems  # imports torch: only when needed

        problems.extend(config_problems(config.model, adapter.type))
    if config is not None and adapter is not None and config.model.add_tokens:
        problems.extend(_added_token_problems(adapter))
    if config is not None:
        problems.extend(harness_problems(config))
    if problems or config is None or adapter is None:
        problems.sort(key=_section_order)  # stable: override syntax first, then section by section
        n = len(problems)
        raise ConfigError(f"invalid config: {n} problem{'s' if n != 1 else ''}", problems)
    return config.model_copy(update={"adapter": adapter}), warns


def _added_token_problems(adapter: AdapterConfigBase) -> list[str]:
    """model.add_tokens needs an adapter type that trains token rows, and fills their indices itself."""
    if "trainable_token_indices" not in type(adapter).model_fields:
        return [
            f"model.add_tokens: set, but adapter.type {adapter.type!r} cannot train the new tokens' embedding "
            "rows (trainable tokens are built for LoRA here); allowed: adapter.type lora, or model.add_tokens: []"
        ]
    if getattr(adapter, "trainable_token_indices", None):
        return [
            "adapter.trainable_token_indices: set together with model.add_tokens, which fills it with the new "
            "tokens' rows; allowed: one of the two"
        ]
    return []


def _emit(warns: list[str]) -> None:
    for message in warns:
        warnings.warn(message, ConfigWarning, stacklevel=3)


def resolve_config_with_warnings(
    data: dict[str, Any], overrides: Iterable[str] = ()
) -> tuple[Config, list[str]]:
    """Like `resolve_config`, returning the warnings (one line each) instead of emitting them."""
    return _resolve(data, overrides)


def load_config_with_warnings(
    path: str | os.PathLike[str], overrides: Iterable[str] = ()
) -> tuple[Config, list[str]]:
    """Like `load_config`, returning the warnings (one line each) instead of emitting them."""
    data = read_config_file(path)
    try:
        return _resolve(data, overrides)
    except ConfigError as exc:
        if exc.problems:
            raise ConfigError(f"{os.fspath(path)}: {exc.args[0]}", exc.problems) from None
        raise


def resolve_config(data: dict[str, Any], overrides: Iterable[str] = ()) -> Config:
    """Validate a raw config mapping (+ dotted `key=value` overrides); defaults fill in what is absent.

    Raises ConfigError listing every problem; ignored keys are reported as `ConfigWarning`s.
    """
    config, warns = _resolve(data, overrides)
    _emit(warns)
    return config


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Config:
    """Read a YAML/JSON config file, apply overrides, validate (see `resolve_config`)."""
    config, warns = load_config_with_warnings(path, overrides)
    _emit(warns)
    return config


def config_with_adapter_union() -> type[BaseModel]:
    """`Config` whose `adapter` is the union of every registered adapter config class (for JSON Schema)."""
    from typing import Annotated, Union

    from pydantic import Field, create_model

    classes = list(adapter_config_classes().values())
    union: Any = Union[tuple(classes)] if len(classes) > 1 else classes[0]  # noqa: UP007
    default = next((c for c in classes if c.model_fields["type"].default == DEFAULT_ADAPTER_TYPE), classes[0])
    try:
        annotated: Any = Annotated[union, Field(discriminator="type")] if len(classes) > 1 else union
        return create_model("Config", __base__=Config, adapter=(annotated, Field(default_factory=default)))
    except Exception:  # noqa: BLE001 - a plug-in whose `type` is not a Literal: plain (anyOf) union
        return create_model("Config", __base__=Config, adapter=(union, Field(default_factory=default)))


__all__ = [
    "ConfigWarning",
    "adapter_config_classes",
    "config_with_adapter_union",
    "load_config",
    "load_config_with_warnings",
    "resolve_config",
    "resolve_config_with_warnings",
]
