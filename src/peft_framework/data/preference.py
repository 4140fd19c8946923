"""The preference data kinds: their fields, cleaning reasons and token layout.

`data.kind: preference`: `prompt`, `chosen`, `rejected` (renamed through `data.columns`). Each is text, or
chat messages: a prompt as a message list and answers as strings or assistant-message lists (TRL's
conversational format), or no prompt at all and two whole conversations that share their first turns
(Anthropic-HH style): those are split at the first turn where they differ, and the rest of each must be
one assistant turn.

`data.kind: unpaired_preference` (KTO): `prompt`, `completion`, and `label`, which must be a JSON boolean.

Prepared rows hold, per answer, the token ids of prompt + answer and labels that are -100 on the prompt:
`chosen_input_ids`/`chosen_labels`/`rejected_input_ids`/`rejected_labels`, or `input_ids`/`labels`/`label`.
Each answer is tokenized together with its prompt (the same boundary rule as instruction data), so no
token changes at the seam. Over `data.max_seq_len`, `data.truncation` decides what is kept; a row that
cannot keep one answer token is rejected (`no_response_tokens`).
"""

from __future__ import annotations

from typing import Any

from peft_framework.data.clean import clean_text, normalized_key
from peft_framework.data.rows import Reason, RowProblem

IGNORE_INDEX = -100
PREFERENCE_KINDS = ("preference", "unpaired_preference")
IDENTICAL_ANSWERS = "identical_answers"
NO_SHARED_PREFIX = "no_shared_prefix"

Problem = tuple[str, str]


def answer_names(kind: str) -> tuple[str, ...]:
    return ("chosen", "rejected") if kind == "preference" else ("completion",)


# ------------------------------------------------------------------------------------------- fields
def extract(data: dict[str, Any], cfg, get_str, messages_of) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Canonical fields {prompt: str | messages, <answers>: str, [label: bool]} of one row.

    `get_str(field, problems, required)` and `messages_of(value, name, problems)` are validate.py's
    readers (column mapping, type and surrogate checks)."""
    problems: list[Problem] = []
    column = cfg.columns.get
    answers = answer_names(cfg.kind)
    raw = {name: data.get(column(name, name)) for name in ("prompt", *answers)}
    fields: dict[str, Any] = {}
    chat = any(isinstance(v, list) for v in raw.values())
    if not chat:
        for name in ("prompt", *answers):
            fields[name] = get_str(name, problems, required=True)
    else:
        conversations: dict[str, list[dict[str, str]] | None] = {}
        for name in ("prompt", *answers):
            value = raw[name]
            if value is None and name == "prompt":
                continue
            if isinstance(value, str):  # a plain answer string after a message-list prompt
                value = [{column("role", "role"): "assistant", column("content", "content"): value}]
            conversations[name] = messages_of(value, name, problems)
        if not problems:
            fields.update(_split_conversations(conversations, answers, problems))
    if cfg.kind == "unpaired_preference":
        name = column("label", "label")
        label = data.get(name)
        if not isinstance(label, bool):
            state = "is missing" if name not in data else f"is {label!r}"
            problems.append((Reason.INVALID_LABEL, f"field 'label' {state}; allowed: true or false"))
        fields["label"] = label
    return (None, problems) if problems else (fields, [])


def _split_conversations(
    conversations: dict[str, Any], answers: tuple[str, ...], problems: list[Problem]
) -> dict[str, Any]:
    """{prompt: messages, <answer>: assistant text}: a given prompt, or the turns the answers share."""
    prompt = conversations.get("prompt")
    if prompt is None:  # whole conversations: the shared prefix is the prompt
        convs = [conversations[a] for a in answers]
        if len(convs) == 1:
            convs[0], prompt = convs[0][-1:], convs[0][:-1]
        else:
            n = 0
            while all(n < len(c) for c in convs) and all(c[n] == convs[0][n] for c in convs):
                n += 1
            prompt = convs[0][:n]
            convs = [c[n:] for c in convs]
            if not prompt:
                problems.append((NO_SHARED_PREFIX, "chosen and rejected share no leading turn (no prompt)"))
                return {}
        conversations = {**dict(zip(answers, convs)), "prompt": prompt}
    out: dict[str, Any] = {"prompt": prompt}
    if not prompt or prompt[-1]["role"] == "assistant":
        problems.append((Reason.INVALID_ROLE_ORDER, "the prompt must end with a non-assistant turn"))
    for name in answers:
        rest = conversations[name]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            roles = [m["role"] for m in rest]
            problems.append(
                (NO_SHARED_PREFIX, f"{name}: after the shared turns comes {roles}, not one assistant turn")
            )
            continue
        out[name] = rest[0]["content"]
    return out


# ----------------------------------------------------------------------------------------- cleaning
def clean(fields: dict[str, Any], cfg) -> tuple[dict[str, Any], set[str], list[Problem]]:
    """Cleaned fields, the cleaning steps that changed something, and the problems (empty, identical)."""
    changed: set[str] = set()

    def text(value: str) -> str:
        new, steps = clean_text(value, cfg.clean)
        changed.update(steps)
        return new

    out = dict(fields)
    prompt = fields["prompt"]
    if isinstance(prompt, list):
        out["prompt"] = [{"role": m["role"], "content": text(m["content"])} for m in prompt]
        empty_prompt = not any(m["content"].strip() for m in out["prompt"] if m["role"] != "system")
    else:
        out["prompt"] = text(prompt)
        empty_prompt = not out["prompt"].strip()
    answers = answer_names(cfg.kind)
    for name in answers:
        out[name] = text(fields[name])
    problems: list[Problem] = []
    if empty_prompt:
        problems.append((Reason.EMPTY_FIELD, "field 'prompt' is empty after cleaning"))
    for name in answers:
        if not out[name].strip():
            problems.append((Reason.EMPTY_FIELD, f"field {name!r} is empty after cleaning"))
    if cfg.kind == "preference" and not problems:
        if normalized_key(out["chosen"]) == normalized_key(out["rejected"]):
            problems.append(
                (IDENTICAL_ANSWERS, "chosen and rejected are the same text (after dedup normalisation)")
            )
    return out, changed, problems


def text_values(fields: dict[str, Any], kind: str) -> list[str]:
    """Every text of the row, for de-duplication (the whole pair, and an unpaired row's label)."""
    values = prompt_values(fields)
    values += [fields[name] for name in answer_names(kind)]
    if kind == "unpaired_preference":
        values.append(str(fields["label"]).lower())
    return values


def prompt_values(fields: dict[str, Any]) -> list[str]:
    prompt = fields["prompt"]
    if isinstance(prompt, list):
        return [v for m in prompt for v in (m["role"], m["content"])]
    return [prompt]


def n_chars(fields: dict[str, Any], kind: str) -> int:
    prompt = fields["prompt"]
    n = sum(len(m["content"]) for m in prompt) if isinstance(prompt, list) else len(prompt)
    return n + sum(len(fields[name]) for name in answer_names(kind))


# ------------------------------------------------------------------------------------------ tokens
def _prompt_and_answer(formatter, prompt: str | list[dict[str, str]], answer: str) -> tuple[str, str, bool]:
    """(prompt text, answer text, is chat): chat rows rendered with the chat template, text rows as
    prompt + newline + answer."""
    if not isinstance(prompt, list):  # cleaning strips the prompt, so a newline separates it from the answer
        return prompt + "\n", answer, False
    tok = formatter.tok
    if not getattr(tok, "chat_template", None):
        from peft_framework.errors import DataError

        raise DataError("data.kind: chat-format preference rows need a tokenizer with a chat template")
    before = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*prompt, {"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(before):
        from peft_framework.errors import DataError

        raise DataError(
            "data.chat_template: the chat template does not render the prompt as a prefix of the conversation, "
            "so the answer's tokens cannot be located"
        )
    return before, full[len(before) :].rstrip("\n"), True


def truncate(ids: list[int], boundary: int, max_len: int, mode: str) -> tuple[list[int], int]:
    """(ids, prompt tokens) within `max_len`: keep_start cuts from the end; keep_end drops the prompt's start
    first, then cuts the answer's end."""
    if len(ids) <= max_len:
        return ids, boundary
    if mode == "keep_end":
        drop = min(len(ids) - max_len, boundary)
        ids, boundary = ids[drop:], boundary - drop
    return ids[:max_len], min(boundary, max_len)


def encode_preference(formatter, rows: list[dict[str, Any]]) -> list:
    """Formatter.encode_batch for the preference kinds: one `Encoded` per row with its token columns."""
    from peft_framework.data.formatting import Encoded

    cfg = formatter.cfg
    answers = answer_names(cfg.kind)
    jobs: dict[bool, list[tuple[int, str, str, str]]] = {False: [], True: []}  # chat? -> (row, answer, p, a)
    texts: list[dict[str, str]] = [{} for _ in rows]
    for i, row in enumerate(rows):
        for name in answers:
            prompt, answer, chat = _prompt_and_answer(formatter, row["prompt"], row[name])
            jobs[chat].append((i, name, prompt, answer))
            texts[i]["prompt"] = prompt
            texts[i][name] = row[name]
    tokens: dict[tuple[int, str], tuple[list[int], int]] = {}
    for chat, items in jobs.items():
        pairs = [(p, a) for _, _, p, a in items]
        for (i, name, _, _), result in zip(
            items, formatter.tokenize_pairs(pairs, add_special_tokens=not chat)
        ):
            tokens[i, name] = result
    out = []
    for i, row in enumerate(rows):
        columns: dict[str, Any] = {}
        n_tokens, truncated, problem, first = 0, False, None, None
        for name in answers:
            ids, boundary = tokens[i, name]
            if cfg.add_eos and formatter.eos_id not in ids[boundary:]:
                ids = ids + [formatter.eos_id]
            n_tokens = max(n_tokens, len(ids))
            truncated |= len(ids) > cfg.max_seq_len
            ids, boundary = truncate(ids, boundary, cfg.max_seq_len, cfg.truncation)
            if boundary >= len(ids) and problem is None:
                problem = RowProblem(
                    Reason.NO_RESPONSE_TOKENS,
                    f"{name}: no answer token left within data.max_seq_len {cfg.max_seq_len} "
                    f"(data.truncation {cfg.truncation}); the prompt takes {boundary} tokens",
                )
            labels = [IGNORE_INDEX] * boundary + ids[boundary:]
            prefix = "" if cfg.kind == "unpaired_preference" else f"{name}_"
            columns[f"{prefix}input_ids"] = ids
            columns[f"{prefix}labels"] = labels
            first = first or (ids, labels, boundary)
        if cfg.kind == "unpaired_preference":
            columns["label"] = bool(row["label"])
        ids, labels, boundary = first
        out.append(
            Encoded(ids, labels, n_tokens, truncated, texts[i], boundary, columns=columns, problem=problem)
        )
    return out


def output_features(kind: str):
    """Columns of the prepared splits of a preference kind, in order."""
    import datasets

    token = datasets.List(datasets.Value("int32"))
    features: dict[str, Any] = {}
    if kind == "preference":
        for name in ("chosen", "rejected"):
            features[f"{name}_input_ids"] = token
            features[f"{name}_labels"] = token
    else:
        features.update({"input_ids": token, "labels": token, "label": datasets.Value("bool")})
    for name in ("prompt", *answer_names(kind), "source"):
        features[name] = datasets.Value("string")
    return features
