"""The prompt data kind (`data.kind: prompt`), for online objectives (GRPO): prompts the policy answers
itself, plus the columns its reward functions read.

A row has a `prompt` (renamed through `data.columns`): text, or chat messages that end with a non-assistant
turn (TRL's conversational prompt). Every other column of the row is kept unchanged and handed to the reward
functions: strings, numbers, booleans, or lists of strings. A column holds one type across the data: the
type most rows give it (integers and decimals together are decimals); a row whose value has another type
is rejected (`wrong_type`).

Prepared rows hold `prompt_ids` (the formatted prompt's tokens: the chat template with its generation prompt
for message rows, the text and a newline, after the tokenizer's special tokens, for text rows), `prompt` (the
formatted text), `source`, and the extra columns. Rejected, with reasons: an empty prompt; a prompt with more
tokens than the room left for completions (data.max_seq_len - train.grpo.max_completion_length,
`prompt_too_long`); a row without a column that a configured reward needs (`missing_field`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from peft_framework.data.clean import clean_text
from peft_framework.data.rows import Reason, RowProblem
from peft_framework.errors import DataError

PROMPT_TOO_LONG = "prompt_too_long"
#: output columns of the kind; an input column of the same name cannot be kept beside them
RESERVED = ("prompt_ids", "prompt", "source")
_INT64 = (-(2**63), 2**63 - 1)

Problem = tuple[str, str]


@dataclass(frozen=True)
class PromptNeeds:
    """What the training run asks of each prompt row: the columns its rewards read (reward -> columns) and
    the room the prompt must leave for a completion within data.max_seq_len."""

    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    max_completion_length: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "columns": {k: list(v) for k, v in sorted(self.columns.items())},
            "max_completion_length": self.max_completion_length,
        }


def needs_of(config) -> PromptNeeds:
    """The needs of `config`'s run: the columns of `train.rewards`, and `train.grpo.max_completion_length` (0
    when the config has no grpo section)."""
    from peft_framework.rewards import needed_columns

    grpo = getattr(config.train, "grpo", None)
    return PromptNeeds(needed_columns(config.train), int(getattr(grpo, "max_completion_length", 0) or 0))


# ------------------------------------------------------------------------------------------- fields
def value_type(value: Any) -> str | None:
    """The column type of a value: string, bool, int, float, list_string; None for null; 'other' otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "other"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "list_string"
    return "other"


def extract(data: dict[str, Any], cfg, get_str, messages_of) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Canonical fields {prompt: str | messages, columns: {name: value}} of one row (validate.py's readers)."""
    problems: list[Problem] = []
    name = cfg.columns.get("prompt", "prompt")
    raw = data.get(name)
    if isinstance(raw, list):
        prompt = messages_of(raw, "prompt", problems)
        if prompt is not None and prompt[-1]["role"] == "assistant":
            problems.append((Reason.INVALID_ROLE_ORDER, "the prompt must end with a non-assistant turn"))
    else:
        prompt = get_str("prompt", problems, required=True)
    columns = {k: v for k, v in data.items() if k != name}
    for column, value in columns.items():
        if value_type(value) == "other":
            text = json.dumps(value, default=str)
            problems.append(
                (
                    Reason.WRONG_TYPE,
                    f"column {column!r} holds {text[:60]}; allowed: a string, number, boolean or list of strings",
                )
            )
    return (None, problems) if problems else ({"prompt": prompt, "columns": columns}, [])


def clean(fields: dict[str, Any], cfg) -> tuple[dict[str, Any], set[str], list[Problem]]:
    """The prompt cleaned (data.clean); the extra columns are left as they are."""
    changed: set[str] = set()

    def text(value: str) -> str:
        new, steps = clean_text(value, cfg.clean)
        changed.update(steps)
        return new

    prompt = fields["prompt"]
    if isinstance(prompt, list):
        prompt = [{"role": m["role"], "content": text(m["content"])} for m in prompt]
        empty = not any(m["content"].strip() for m in prompt if m["role"] != "system")
    else:
        prompt = text(prompt)
        empty = not prompt.strip()
    problems = [(Reason.EMPTY_FIELD, "field 'prompt' is empty after cleaning")] if empty else []
    return {**fields, "prompt": prompt}, changed, problems


def prompt_values(fields: dict[str, Any]) -> list[str]:
    prompt = fields["prompt"]
    if isinstance(prompt, list):
        return [v for m in prompt for v in (m["role"], m["content"])]
    return [prompt]


def text_values(fields: dict[str, Any]) -> list[str]:
    """The prompt and the extra columns: a row repeating another's prompt with other answers is kept."""
    return [*prompt_values(fields), json.dumps(fields["columns"], sort_keys=True, ensure_ascii=False)]


def n_chars(fields: dict[str, Any]) -> int:
    prompt = fields["prompt"]
    return sum(len(m["content"]) for m in prompt) if isinstance(prompt, list) else len(prompt)


# ------------------------------------------------------------------------------------------ columns
def observe(types: dict[str, Counter], fields: dict[str, Any]) -> None:
    """Count the types of a candidate row's extra columns (pass 1), for `column_types`."""
    for column, value in fields["columns"].items():
        counter = types.setdefault(column, Counter())
        kind = value_type(value)
        if kind is not None:
            counter[kind] += 1


def column_types(types: dict[str, Counter]) -> dict[str, str]:
    """Each extra column's type: the most common of its rows' (ints and floats together: float; a column
    that is null in every row: string). Sorted by name, so the prepared columns do not depend on row order."""
    reserved = sorted(set(types) & set(RESERVED))
    if reserved:
        raise DataError(
            f"data: the column(s) {', '.join(map(repr, reserved))} of data.kind prompt rows clash with the "
            f"prepared columns {', '.join(RESERVED)}; allowed: other column names (rename them in the data)"
        )
    out = {}
    for column, counter in sorted(types.items()):
        counts = Counter(counter)
        if counts["int"] and counts["float"]:
            counts["float"] += counts.pop("int")
        out[column] = counts.most_common(1)[0][0] if counts else "string"
    return out


def _fits(value: Any, kind: str) -> bool:
    found = value_type(value)
    return found is None or found == kind or (kind == "float" and found == "int")


def output_features(types: dict[str, str]):
    """Columns of the prepared splits of the prompt kind, in order."""
    import datasets

    value = {
        "string": datasets.Value("string"),
        "bool": datasets.Value("bool"),
        "int": datasets.Value("int64"),
        "float": datasets.Value("float64"),
        "list_string": datasets.List(datasets.Value("string")),
    }
    features: dict[str, Any] = {
        "prompt_ids": datasets.List(datasets.Value("int32")),
        "prompt": datasets.Value("string"),
    }
    features.update({column: value[kind] for column, kind in types.items()})
    features["source"] = datasets.Value("string")
    return features


# ------------------------------------------------------------------------------------------- tokens
def prompt_text(formatter, prompt: str | list[dict[str, str]]) -> tuple[str, bool]:
    """(formatted prompt, is chat): messages through the chat template with its generation prompt; text and
    a newline (cleaning strips the prompt, so the completion starts on a new line, as with preference data)."""
    if not isinstance(prompt, list):
        return prompt + "\n", False
    if not getattr(formatter.tok, "chat_template", None):
        raise DataError("data.kind prompt: chat-format prompts need a tokenizer with a chat template")
    return formatter.tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True), True


def encode_prompt(formatter, rows: list[dict[str, Any]]) -> list:
    """Formatter.encode_batch for the prompt kind: one `Encoded` per row with its columns, or its problem."""
    from peft_framework.data.formatting import Encoded

    cfg = formatter.cfg
    needs: PromptNeeds = getattr(formatter, "prompt_needs", None) or PromptNeeds()
    types: dict[str, str] = getattr(formatter, "column_types", None) or {}
    room = cfg.max_seq_len - needs.max_completion_length
    texts = [prompt_text(formatter, row["prompt"]) for row in rows]
    ids_of: dict[int, list[int]] = {}
    for chat in (False, True):
        index = [i for i, (_, is_chat) in enumerate(texts) if is_chat == chat]
        if index:
            encoded = formatter.tok(
                [texts[i][0] for i in index],
                add_special_tokens=not chat,
                return_attention_mask=False,
                verbose=False,
            )["input_ids"]
            ids_of.update(zip(index, map(list, encoded)))
    out = []
    for i, row in enumerate(rows):
        ids, columns = ids_of[i], row["columns"]
        problem = _row_problem(columns, len(ids), room, needs, types, cfg.max_seq_len)
        # a rejected row passes through the encoded table too: a value of the wrong type is left out there
        values = {
            "prompt_ids": ids,
            **{c: columns.get(c) if _fits(columns.get(c), k) else None for c, k in types.items()},
        }
        out.append(
            Encoded(
                ids, [], len(ids), False, {"prompt": texts[i][0]}, len(ids), columns=values, problem=problem
            )
        )
    return out


def _row_problem(
    columns: dict[str, Any], n_tokens: int, room: int, needs: PromptNeeds, types: dict[str, str], max_len: int
) -> RowProblem | None:
    for reward, needed in needs.columns.items():
        for column in needed:
            if columns.get(column) is None:
                state = "is null" if column in columns else "is missing"
                return RowProblem(
                    Reason.MISSING_FIELD, f"column {column!r} (read by reward {reward!r}) {state}"
                )
    for column, kind in types.items():
        if not _fits(columns.get(column), kind):
            got = value_type(columns[column])
            return RowProblem(
                Reason.WRONG_TYPE,
                f"column {column!r} holds a {got} ({columns[column]!r:.60}) but a {kind} in most rows; "
                "allowed: one type per column",
            )
    if n_tokens > room:
        return RowProblem(
            PROMPT_TOO_LONG,
            f"the prompt takes {n_tokens} tokens; data.max_seq_len {max_len} - train.grpo.max_completion_length "
            f"{needs.max_completion_length} leaves {room}",
        )
    return None
