"""Turn pydantic validation errors into one readable line per problem.

Each line names the dotted key path as written in YAML (`data.validate.max_rejected_fraction`), the
bad value, what pydantic objected to, and what the field allows (its type, range or choices), with a
did-you-mean for unknown keys.
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

_MISSING = object()


# ------------------------------------------------------------------------------------------ helpers
def yaml_name(name: str, field: FieldInfo) -> str:
    """The key as written in YAML: the alias where there is one (`validate` for `validate_`)."""
    return field.alias or name


def yaml_fields(model: type[BaseModel]) -> dict[str, tuple[str, FieldInfo]]:
    """YAML key -> (python attribute name, field) of a model."""
    return {yaml_name(n, f): (n, f) for n, f in model.model_fields.items()}


class _Full(Exception):
    pass


def _clipped_json(value: Any, limit: int) -> str:
    """JSON of `value`, but written only up to about `limit` characters: a huge (or alias-bomb) value costs
    no more than its first `limit` characters."""
    out: list[str] = []
    size = 0

    def emit(text: str) -> None:
        nonlocal size
        out.append(text)
        size += len(text)
        if size > limit:
            raise _Full

    def walk(v: Any, depth: int) -> None:
        if depth > 50:
            emit("...")
        elif isinstance(v, dict):
            emit("{")
            for i, (k, x) in enumerate(v.items()):
                emit(", " if i else "")
                walk(k if isinstance(k, str) else str(k), depth + 1)
                emit(": ")
                walk(x, depth + 1)
            emit("}")
        elif isinstance(v, (list, tuple)):
            emit("[")
            for i, x in enumerate(v):
                emit(", " if i else "")
                walk(x, depth + 1)
            emit("]")
        elif isinstance(v, str):
            emit(json.dumps(v[: limit + 1], ensure_ascii=False))
        else:
            try:
                emit(json.dumps(v, ensure_ascii=False, default=str))
            except (TypeError, ValueError):
                emit(repr(v)[: limit + 1])

    try:
        walk(value, 0)
    except _Full:
        pass
    return "".join(out)


def show(value: Any, limit: int = 80) -> str:
    """A value as the user would write it (JSON-ish: strings quoted, null, true/false)."""
    text = _clipped_json(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """'; did you mean 'prefix.x'?' or ''."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean {prefix}{close[0]!r}?" if not prefix else f"; did you mean '{prefix}{close[0]}'?"


def unknown_key_problem(path: str, key: str, candidates: Sequence[str], what: str = "unknown key") -> str:
    """One line for a key nobody knows, with did-you-mean, else the list of allowed keys."""
    parent = path.rpartition(".")[0]
    prefix = f"{parent}." if parent else ""
    hint = did_you_mean(key, candidates, prefix)
    if hint:
        return f"{path}: {what}{hint}"
    return (
        f"{path}: {what}; allowed keys{' under ' + parent if parent else ''}: {', '.join(sorted(candidates))}"
    )


# ------------------------------------------------------------------------------ describing a field
def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata.extend(extra)
    return annotation, metadata


def _constraints(metadata: Iterable[Any]) -> list[str]:
    out = []
    for item in metadata:
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None and isinstance(
                item, (annotated_types.BaseMetadata, annotated_types.GroupedMetadata)
            ):
                out.append(f"{op} {value:g}" if isinstance(value, float) else f"{op} {value}")
        if isinstance(item, annotated_types.MinLen) and item.min_length:
            out.append(f"at least {item.min_length} item(s)")
        if isinstance(item, annotated_types.MaxLen):
            out.append(f"at most {item.max_length} item(s)")
    return out


def describe(annotation: Any, metadata: Iterable[Any] = ()) -> str:
    """'an integer >= 1', 'one of none, all, lora_only', 'a string, a list of strings or null', ..."""
    annotation, extra = _unwrap(annotation)
    bounds = _constraints([*metadata, *extra])
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        numeric = [*metadata, *extra]
        parts = [describe(m, numeric if m in (int, float) else ()) for m in members]
        if len(members) < len(get_args(annotation)):
            parts.append("null")
        return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]
    if origin is Literal:
        return "one of " + ", ".join(str(a) if not isinstance(a, str) else a for a in get_args(annotation))
    if origin in (list, tuple, set, frozenset, Sequence):
        args = get_args(annotation)
        inner = _plural(describe(args[0])) if args else "values"
        return f"a list of {inner}" + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is dict:
        k, v = (get_args(annotation) + (Any, Any))[:2]
        return f"a mapping of {_plural(describe(k))} to {_plural(describe(v))}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a mapping with keys " + ", ".join(yaml_fields(annotation))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    base = names.get(annotation, getattr(annotation, "__name__", str(annotation)))
    if bounds and annotation is not bool:
        return f"{base} {' and '.join(bounds)}"
    return base


def _plural(text: str) -> str:
    for article in ("an ", "a "):
        if text.startswith(article):
            noun, _, rest = text[len(article) :].partition(" ")
            return f"{noun}s{' ' + rest if rest else ''}"
    return text


def describe_field(field: FieldInfo) -> str:
    return describe(field.annotation, field.metadata)


# ------------------------------------------------------------------------- pydantic errors -> lines
def _walk(
    root: type[BaseModel], loc: Sequence[Any]
) -> tuple[list[str], type[BaseModel], FieldInfo | None, list[Any]]:
    """Follow `loc` through nested models: (YAML path, last model, last field, rest of loc)."""
    path: list[str] = []
    model: type[BaseModel] = root
    field: FieldInfo | None = None
    i = 0
    while i < len(loc):
        element = loc[i]
        fields = yaml_fields(model)
        by_python = {n: (n, f) for n, f in model.model_fields.items()}
        hit = fields.get(element) if isinstance(element, str) else None
        hit = hit or (by_python.get(element) if isinstance(element, str) else None)
        if hit is None:
            break
        name, field = hit
        path.append(yaml_name(name, field))
        i += 1
        sub = single_model(field.annotation)
        if sub is None:
            break
        model = sub
    return path, model, field, list(loc[i:])


def single_model(annotation: Any) -> type[BaseModel] | None:
    annotation, _ = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        others = [a for a in get_args(annotation) if a is not type(None) and a not in models]
        if len(models) == 1 and not others:
            return models[0]
    return None


def _lookup(data: Any, path: Sequence[str]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _suffix(rest: Sequence[Any]) -> str:
    return "".join(f"[{r}]" if isinstance(r, int) else f".{r}" for r in rest)


_KEY_PATH_AT_START = re.compile(r"^[A-Za-z_][\w]*(\.[\w\[\]]+)*: ")


def _value_error_lines(path: str, message: str) -> list[str]:
    """A model validator's message; messages that already name their keys stay as they are."""
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    parts = message.split("; ")
    if path and all(p.startswith((f"{path}.", f"{path}:", f"{path}[")) for p in parts):
        return parts
    if path and message.startswith((f"{path}.", f"{path}:", f"{path}[")):
        return [message]
    return [f"{path}: {message}" if path else message]


def error_lines(
    exc: ValidationError, root: type[BaseModel], data: Any, prefix: Sequence[str] = ()
) -> list[str]:
    """One line per problem of `exc` (raised validating `data` against `root`); `prefix` is the YAML
    path of `root` inside the whole config (e.g. ("adapter",))."""
    groups: dict[
        tuple[str, ...], list[tuple[dict[str, Any], type[BaseModel], FieldInfo | None, list[Any]]]
    ] = {}
    order: list[tuple[str, ...]] = []
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        path, model, field, rest = _walk(root, err["loc"])
        full = [*prefix, *path]
        if err["type"] == "extra_forbidden" and rest:
            lines.append(
                unknown_key_problem(".".join(full + [str(rest[0])]), str(rest[0]), list(yaml_fields(model)))
            )
            continue
        if err["type"] in ("value_error", "assertion_error") and not rest:
            lines.extend(_value_error_lines(".".join(full), err["msg"]))
            continue
        key = tuple(full)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((err, model, field, rest))
    for key in order:
        errs = groups[key]
        path = ".".join(key) or "<config>"
        err, model, field, rest = errs[0]
        allowed = describe_field(field) if field is not None else None
        if field is not None and field.annotation is not None and single_model(field.annotation) is not None:
            # the section itself has the wrong type (e.g. `train: 5`)
            allowed = describe(field.annotation)
        if len(errs) > 1:  # the value matched no member of a union: one line for the whole field
            value = _lookup(data, key[len(prefix) :])
            shown = show(value) if value is not _MISSING else show(err["input"])
            lines.append(f"{path}: got {shown}; allowed: {allowed}")
            continue
        where = path + _suffix(rest)
        if err["type"] == "missing":
            lines.append(f"{where}: required key is missing; allowed: {allowed}")
            continue
        reason = err["msg"]
        reason = reason[0].lower() + reason[1:] if reason else reason
        if err["type"] == "literal_error" or rest:
            # choices are in `allowed`; for list items/dict values pydantic's message says what is expected
            line = f"{where}: got {show(err['input'])}" + (f" ({reason})" if rest else "")
        else:
            line = f"{where}: got {show(err['input'])} ({reason})"
        lines.append(f"{line}; allowed: {allowed}" if allowed else line)
    return lines
