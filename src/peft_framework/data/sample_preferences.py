"""Sample preference data with a rule a tiny model can learn: "Is N even or odd?", the right parity preferred.

- `preferences.jsonl` (data.kind preference): 400 pairs whose chosen answer is N's parity and rejected answer
  the other word, so a model without the rule ranks them at chance (it prefers one word everywhere), plus
  dirty rows for the accounting: an exact and a normalised duplicate, chosen identical to rejected, an empty
  prompt, a missing field, chat conversations that share no first turn, a prompt longer than
  data.max_seq_len 64, and an invalid JSON line.
- `preferences_unpaired.jsonl` (data.kind unpaired_preference, for KTO): the same rule as single answers with
  `label` true (right parity) or false (the other word), plus dirty rows: labels that are no JSON boolean
  ("yes", missing), an empty completion, an exact duplicate and an invalid JSON line.
- `preferences_sft.jsonl` (data.kind instruction, data.template plain): the rule as instruction rows on other
  numbers, for the SFT adapter that params/dpo.yaml starts from (params/dpo-sft.yaml trains it).
"""

from __future__ import annotations

import json
import random
from typing import Any


def _parity(n: int) -> str:
    return "even" if n % 2 == 0 else "odd"


def _pair(n: int) -> dict[str, str]:
    right = _parity(n)
    return {
        "prompt": f"Is {n} even or odd?",
        "chosen": right,
        "rejected": "odd" if right == "even" else "even",
    }


def _line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def preference_lines(rng: random.Random) -> tuple[list[bytes], dict[str, Any]]:
    numbers = rng.sample(range(1000), 400)
    lines = [_line(_pair(n)) for n in numbers]
    a, b = numbers[0], numbers[1]
    dirty = [
        (_line(_pair(a)), "duplicate_exact"),
        (_line({**_pair(b), "prompt": f"  IS {b} EVEN OR  ODD? "}), "duplicate_normalized"),
        (_line({"prompt": "Is 7 odd?", "chosen": "Yes", "rejected": " yes"}), "identical_answers"),
        (_line({"prompt": " ", "chosen": "odd", "rejected": "even"}), "empty_field"),
        (_line({"prompt": "Is 9 even or odd?", "chosen": "odd"}), "missing_field"),
        (
            _line(
                {
                    "chosen": [
                        {"role": "user", "content": "Is 3 odd?"},
                        {"role": "assistant", "content": "yes"},
                    ],
                    "rejected": [
                        {"role": "user", "content": "Is 4 odd?"},
                        {"role": "assistant", "content": "no"},
                    ],
                }
            ),
            "no_shared_prefix",
        ),
        (
            _line({"prompt": "Is " + "9" * 70 + " even or odd?", "chosen": "odd", "rejected": "even"}),
            "no_response_tokens",
        ),
        (b'{"prompt": "Is 5 even or odd?", "chosen": "odd", ', "invalid_json"),
    ]
    for line, _ in dirty:
        lines.insert(rng.randrange(1, len(lines)), line)
    reasons: dict[str, int] = {}
    for _, reason in dirty:
        reasons[reason] = reasons.get(reason, 0) + 1
    expected = {"read": len(lines), "kept": 400, "rejected_by_reason": dict(sorted(reasons.items()))}
    return lines, expected


def _expected(lines: list[bytes], kept: int, dirty: list[tuple[bytes, str]]) -> dict[str, Any]:
    reasons: dict[str, int] = {}
    for _, reason in dirty:
        reasons[reason] = reasons.get(reason, 0) + 1
    return {"read": len(lines), "kept": kept, "rejected_by_reason": dict(sorted(reasons.items()))}


def unpaired_preference_lines(rng: random.Random) -> tuple[list[bytes], dict[str, Any]]:
    numbers = rng.sample(range(1000), 400)
    rows = []
    for i, n in enumerate(numbers):  # half desirable (the right parity), half undesirable (the other word)
        pair = _pair(n)
        good = i % 2 == 0
        rows.append(
            {"prompt": pair["prompt"], "completion": pair["chosen" if good else "rejected"], "label": good}
        )
    lines = [_line(row) for row in rows]
    dirty = [
        (_line(rows[0]), "duplicate_exact"),
        (_line({**rows[1], "label": "yes"}), "invalid_label"),
        (_line({"prompt": rows[2]["prompt"], "completion": rows[2]["completion"]}), "invalid_label"),
        (_line({**rows[3], "completion": "  "}), "empty_field"),
        (b'{"prompt": "Is 5 even or odd?", "completion": "odd", ', "invalid_json"),
    ]
    for line, _ in dirty:
        lines.insert(rng.randrange(1, len(lines)), line)
    return lines, _expected(lines, len(rows), dirty)


def preference_sft_lines(rng: random.Random) -> tuple[list[bytes], dict[str, Any]]:
    numbers = rng.sample(range(1000, 10000), 400)
    lines = [
        _line({"instruction": f"Is {n} even or odd?", "input": "", "output": _parity(n)}) for n in numbers
    ]
    return lines, {"read": len(lines), "kept": len(lines), "rejected_by_reason": {}}
