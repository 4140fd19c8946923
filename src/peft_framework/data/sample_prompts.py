"""Sample prompts with checkable answers, for GRPO (`data.kind: prompt`): "repeat the word X".

`prompts.jsonl`: every pairing of two words with 20 phrasings that all end with the word (40 prompts;
params/grpo.yaml holds a quarter out: phrasings the training split never showed with that word), the word in
an `answer` column. Scored by `exact_match` on `answer` plus a small `regex_format` reward for a single
lowercase word (PROMPT_TRAIN): a random model scores 0 on both. Plus dirty rows for the accounting: an exact
and a normalised duplicate, an empty prompt, a row without its answer, a prompt longer than the room
PROMPT_DATA and PROMPT_TRAIN leave, a column of the wrong type, and an invalid JSON line.

`prompts_sft.jsonl` (data.kind instruction, template plain): the warm start params/grpo-sft.yaml trains
before GRPO. The same phrasings on OTHER_WORDS (never a word of WORDS), each answered by every word of WORDS
once: the targets do not depend on the prompt, so SFT teaches "answer one of these words, then stop" and
nothing about which one (the tiny Llama then always answers "cat": exact match 0.5 on two words). Which word
is right is left to the GRPO reward. Probes (tiny Llama, LoRA all-linear): from the raw model, or with eight
words, GRPO settled on the format reward and exact match stayed at chance; two words after this warm start
learnt the mapping (params/README.md has the figures).
"""

from __future__ import annotations

import json
import random
from typing import Any

WORDS = ("cat", "dog")
# The warm start's prompts: words that are never an answer.
OTHER_WORDS = ("hat", "pig", "fox", "owl", "bee", "ant", "egg", "ink", "map", "jar", "log", "toy")
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
        {"name": "regex_format", "pattern": "[a-z]+", "weight": 0.1},
    ],
}


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def prompt_sft_lines(rng: random.Random) -> tuple[list[bytes], dict[str, Any]]:
    """The warm start's instruction rows, in a fixed order (`rng` unused: the order is the data)."""
    del rng
    rows = [
        {"instruction": phrase.format(w=other), "input": "", "output": word}
        for other in OTHER_WORDS
        for phrase in PHRASES
        for word in WORDS
    ]
    return [_line(row) for row in rows], {"read": len(rows), "kept": len(rows), "rejected_by_reason": {}}


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
