"""Per-row validation: map source columns to the canonical fields of `data.kind` and check them.

Problems are collected, not raised one at a time, so a rejected row lists every reason it has.
"""

from __future__ import annotations

import re
from typing import Any

from peft_framework.config.schema import DataConfig
from peft_framework.data.rows import Reason

Problem = tuple[str, str]  # (reason, detail)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 43 else text}"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def _column(cfg: DataConfig, field: str) -> str:
    return cfg.columns.get(field, field)


def _field_name(cfg: DataConfig, field: str) -> str:
    column = _column(cfg, field)
    return f"field {field!r}" if column == field else f"field {field!r} (column {column!r})"


def _get_str(
    row: dict, cfg: DataConfig, field: str, problems: list[Problem], *, required: bool
) -> str | None:
    column = _column(cfg, field)
    value = row.get(column)
    if value is None:
        if required:
            state = "is null" if column in row else "is missing"
            problems.append((Reason.MISSING_FIELD, f"{_field_name(cfg, field)} {state}"))
        return None
    if not isinstance(value, str):
        problems.append(
            (Reason.WRONG_TYPE, f"{_field_name(cfg, field)} must be a string, got {_describe(value)}")
        )
        return None
    if _has_surrogates(value):
        problems.append(
            (Reason.INVALID_UTF8, f"{_field_name(cfg, field)} holds a lone surrogate (broken UTF-16 escape)")
        )
        return None
    return value


def _normalize_role(role: str, cfg: DataConfig) -> str:
    role = role.strip().lower()
    aliases = {k.strip().lower(): v.strip().lower() for k, v in cfg.clean.role_aliases.items()}
    return aliases.get(role, role)


def _messages(row: dict, cfg: DataConfig, problems: list[Problem]) -> list[dict[str, str]] | None:
    column = _column(cfg, "messages")
    value = row.get(column)
    name = _field_name(cfg, "messages")
    if value is None:
        problems.append((Reason.MISSING_FIELD, f"{name} {'is null' if column in row else 'is missing'}"))
        return None
    messages = message_list(value, name, cfg, problems)
    if messages is not None:
        problems.extend(check_roles(messages, cfg.validate_.allowed_roles))
    return messages


def message_list(
    value: Any, name: str, cfg: DataConfig, problems: list[Problem]
) -> list[dict[str, str]] | None:
    """A list of {role, content} messages (roles normalised and allowed), or None with the problems."""
    if not isinstance(value, list):
        problems.append((Reason.WRONG_TYPE, f"{name} must be a list of messages, got {_describe(value)}"))
        return None
    if not value:
        problems.append((Reason.EMPTY_FIELD, f"{name} is an empty list"))
        return None
    role_key, content_key = _column(cfg, "role"), _column(cfg, "content")
    messages: list[dict[str, str]] = []
    for i, msg in enumerate(value):
        where = f"message {i}"
        if not isinstance(msg, dict):
            problems.append((Reason.WRONG_TYPE, f"{where} must be an object, got {_describe(msg)}"))
            continue
        role, content = msg.get(role_key), msg.get(content_key)
        bad = False
        for key, val in ((role_key, role), (content_key, content)):
            if val is None:
                problems.append((Reason.MISSING_FIELD, f"{where}: {key!r} is missing"))
                bad = True
            elif not isinstance(val, str):
                problems.append(
                    (Reason.WRONG_TYPE, f"{where}: {key!r} must be a string, got {_describe(val)}")
                )
                bad = True
            elif _has_surrogates(val):
                problems.append((Reason.INVALID_UTF8, f"{where}: {key!r} holds a lone surrogate"))
                bad = True
        if not bad:
            messages.append({"role": _normalize_role(role, cfg), "content": content})
    if len(messages) != len(value):
        return None
    allowed = cfg.validate_.allowed_roles
    bad = [(i, m["role"]) for i, m in enumerate(messages) if m["role"] not in allowed]
    for i, role in bad:
        problems.append(
            (Reason.INVALID_ROLE, f"message {i}: role {role!r} is not allowed; allowed: {allowed}")
        )
    return None if bad else messages


def check_roles(messages: list[dict[str, str]], allowed_roles: list[str]) -> list[Problem]:
    """Roles must be allowed; system only first; turns alternate, from a user turn to an assistant turn."""
    problems: list[Problem] = []
    roles = [m["role"] for m in messages]
    for i, role in enumerate(roles):
        if role not in allowed_roles:
            problems.append(
                (Reason.INVALID_ROLE, f"message {i}: role {role!r} is not allowed; allowed: {allowed_roles}")
            )
    if problems:
        return problems
    turns = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in turns:
        problems.append(
            (Reason.INVALID_ROLE_ORDER, "a 'system' message is allowed only as the first message")
        )
    elif not turns or turns[0] == "assistant":
        problems.append((Reason.INVALID_ROLE_ORDER, "the conversation must start with a non-assistant turn"))
    elif turns[-1] != "assistant":
        problems.append(
            (Reason.INVALID_ROLE_ORDER, f"the last message must be 'assistant', got {turns[-1]!r}")
        )
    else:
        for a, b in zip(turns, turns[1:]):
            if a == b and a != "tool":
                problems.append(
                    (Reason.INVALID_ROLE_ORDER, f"two '{a}' messages in a row; turns must alternate")
                )
                break
    return problems


def extract_fields(data: Any, cfg: DataConfig) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Canonical fields of one row, or None with the problems found."""
    if not isinstance(data, dict):
        return None, [(Reason.NOT_AN_OBJECT, f"a row must be a JSON object, got {_describe(data)}")]
    problems: list[Problem] = []
    kind = cfg.kind
    fields: dict[str, Any] = {}
    if kind in ("preference", "unpaired_preference"):
        from peft_framework.data import preference

        return preference.extract(
            data,
            cfg,
            lambda field, found, required: _get_str(data, cfg, field, found, required=required),
            lambda value, field, found: message_list(value, _field_name(cfg, field), cfg, found),
        )
    if kind == "prompt":
        from peft_framework.data import prompt

        return prompt.extract(
            data,
            cfg,
            lambda field, found, required: _get_str(data, cfg, field, found, required=required),
            lambda value, field, found: message_list(value, _field_name(cfg, field), cfg, found),
        )
    if kind == "instruction":
        fields["instruction"] = _get_str(data, cfg, "instruction", problems, required=True)
        fields["input"] = _get_str(data, cfg, "input", problems, required=False) or ""
        fields["output"] = _get_str(data, cfg, "output", problems, required=True)
    elif kind == "chat":
        fields["messages"] = _messages(data, cfg, problems)
    elif kind == "text":
        fields["text"] = _get_str(data, cfg, "text", problems, required=True)
    else:  # classification
        fields["text"] = _get_str(data, cfg, "text", problems, required=True)
        column = _column(cfg, "label")
        label = data.get(column)
        if label is None:
            state = "is null" if column in data else "is missing"
            problems.append((Reason.MISSING_FIELD, f"{_field_name(cfg, 'label')} {state}"))
        elif isinstance(label, bool) or not isinstance(label, (str, int)):
            problems.append(
                (
                    Reason.WRONG_TYPE,
                    f"{_field_name(cfg, 'label')} must be a string or integer, got {_describe(label)}",
                )
            )
        elif isinstance(label, str) and _has_surrogates(label):
            problems.append((Reason.INVALID_UTF8, f"{_field_name(cfg, 'label')} holds a lone surrogate"))
        else:
            fields["label"] = str(label)
    return (None, problems) if problems else (fields, [])
