"""Sample prompts with checkable answers, for GRPO (`data.kind: prompt`): "repeat the word X".

`prompts.jsonl`: every pairing of a few short words with phrasings that all end with the word (so the test
split holds phrasings of the words the training split never showed), the word in an `answer` column. Scored
by `exact_match` on `answer` and a `regex_format` reward for a single lowercase word (PROMPT_TRAIN): a
random model scores near 0 on both, and the answer is always the last word of the prompt. Measured with the
tiny Llama (LoRA all-linear, lr 0.01, 4 prompts x 8 generations, 200 steps, ~75 s on 2 CPU threads): the
format reward goes from 0 to 1.0 on the test prompts (completions from 16 tokens to 2, mean total reward 0 ->
0.5); exact answers stay at 0 in that budget (the policy settles on one short word; copying the word needs a
longer run or a denser reward such as `similarity`). Plus dirty rows for the accounting: an exact and a normalised duplicate, an empty
prompt, a row without its answer, a prompt longer than the room PROMPT_DATA and PROMPT_TRAIN leave, a
column of the wrong type, and an invalid JSON line.
"""

from __future__ import annotations

import json
import random
from typing import Any

WORDS = ("cat", "dog", "sun", "sky", "red", "box", "pen", "cup")
PHRASES = (
    "Repeat the word: {w}",
    "Repeat this word: {w}",
    "Say the word {w}",
    "Say this word: {w}",
    "Echo the word {w}",
    "Echo: {w}",
    "Copy the word: {w}",
    "Write the word {w}",
    "Write back: {w}",
    "Please repeat: {w}",
    "Please say: {w}",
    "Answer with the word {w}",
    "Reply with: {w}",
    "Output the word {w}",
    "Type the word: {w}",
    "Return the word {w}",
    "Give back the word {w}",
    "Just say {w}",
    "Only write: {w}",
    "Word to repeat: {w}",
)

# What prepares `prompts.jsonl` as described: the data section, and the train keys the data depends on
# (the rewards' columns, the completion length that bounds the prompt length).
PROMPT_DATA: dict[str, Any] = {"source": "data/raw/prompts.jsonl", "kind": "prompt", "max_seq_len": 64}
PROMPT_TRAIN: dict[str, Any] = {
    "objective": "grpo",
    "grpo": {"max_completion_length": 16},
    "rewards": [
        {"name": "exact_match", "column": "answer", "weight": 1.0},
        {"name": "regex_format", "pattern": "[a-z]+", "weight": 0.5},
    ],
}


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def prompt_lines(rng: random.Random) -> tuple[list[bytes], dict[str, Any]]:
    rows = [{"prompt": phrase.format(w=word), "answer": word} for word in WORDS for phrase in PHRASES]
    rng.shuffle(rows)
    lines = [_line(row) for row in rows]
    a, b = rows[0], rows[1]
    dirty = [
        (_line(a), "duplicate_exact"),
        (_line({"prompt": "  " + b["prompt"].upper() + " ", "answer": b["answer"]}), "duplicate_normalized"),
        (_line({"prompt": " \t ", "answer": "cat"}), "empty_field"),
        (_line({"prompt": "Repeat the word: fox"}), "missing_field"),
        (
            _line({"prompt": "Repeat the word after this long preamble of many words: owl", "answer": "owl"}),
            "prompt_too_long",
        ),
        (
            _line({"prompt": "Repeat the word: hat", "answer": ["hat"], "note": {"why": "nested"}}),
            "wrong_type",
        ),
        (b'{"prompt": "Repeat the word: bee", "answer": ', "invalid_json"),
    ]
    for line, _ in dirty:
        lines.insert(rng.randrange(1, len(lines)), line)
    reasons: dict[str, int] = {}
    for _, reason in dirty:
        reasons[reason] = reasons.get(reason, 0) + 1
    expected = {"read": len(lines), "kept": len(rows), "rejected_by_reason": dict(sorted(reasons.items()))}
    return lines, expected
