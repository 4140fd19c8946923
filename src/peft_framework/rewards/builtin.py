"""The built-in reward functions. Each is a TRL-style callable `fn(prompts, completions, **columns)` -> one
float per completion; `columns` holds the data columns of the rows (extra keywords are ignored). A row whose
expected value cannot be read raises: the scorer reports it with the row, it is never scored as 0.

Completions are plain text (decoded without special tokens); chat completions given as message lists are
read as the text of their last message.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from typing import Any

from peft_framework.config.rewards_schema import (
    ExactMatchOptions,
    LengthOptions,
    NumericMatchOptions,
    RegexFormatOptions,
    SimilarityOptions,
)

# a number as people write it: sign, thousands separators, decimals, exponent
_NUMBER = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of the last message of a message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be text or a message list, got {type(completion).__name__}")


def normalize(text: str) -> str:
    """Text as compared by exact_match: NFKC, case-folded, whitespace collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def last_number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


class ColumnReward:
    """A reward that compares each completion with its row's value in one data column (`options.column`)."""

    options_type: type[Any]
    columns: tuple[str, ...]

    def __init__(self, **options: Any) -> None:
        self.options = self.options_type(**options)
        self.columns = (self.options.column,)

    def score(self, text: str, value: Any) -> float:
        raise NotImplementedError

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float]:
        name = self.options.column
        if name not in columns:
            raise KeyError(
                f"the data has no column {name!r} (columns: {', '.join(sorted(columns)) or 'none'})"
            )
        values = list(columns[name])
        if len(values) != len(completions):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(completions)} completions")
        return [self.score(completion_text(c), value) for c, value in zip(completions, values)]

    def _text_value(self, value: Any) -> str:
        if value is None:
            raise ValueError(f"column {self.options.column!r} is null")
        return normalize(str(value))


class ExactMatch(ColumnReward):
    options_type = ExactMatchOptions

    def score(self, text: str, value: Any) -> float:
        return float(normalize(text) == self._text_value(value))


class NumericMatch(ColumnReward):
    options_type = NumericMatchOptions

    def _expected(self, value: Any) -> float:
        if isinstance(value, bool) or value is None:
            raise ValueError(f"column {self.options.column!r} holds {value!r}, not a number")
        if isinstance(value, (int, float)):
            return float(value)
        number = last_number(str(value)) if isinstance(value, str) else None
        if number is None:
            raise ValueError(f"column {self.options.column!r} holds {value!r}, which contains no number")
        return number

    def score(self, text: str, value: Any) -> float:
        want = self._expected(value)
        got = last_number(text)
        o = self.options
        return float(got is not None and math.isclose(got, want, rel_tol=o.rel_tol, abs_tol=o.abs_tol))


class Similarity(ColumnReward):
    """A dense reward for sparse tasks: near answers score more than far ones (difflib's ratio)."""

    options_type = SimilarityOptions

    def score(self, text: str, value: Any) -> float:
        a, b = normalize(text), self._text_value(value)
        return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() if a or b else 1.0


class RegexFormat:
    columns: tuple[str, ...] = ()

    def __init__(self, **options: Any) -> None:
        self.options = RegexFormatOptions(**options)
        flags = 0
        for name in self.options.flags:
            flags |= getattr(re, name)
        self._regex = re.compile(self.options.pattern, flags)
        self._test = getattr(self._regex, self.options.mode)

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float]:
        return [float(self._test(completion_text(c)) is not None) for c in completions]


class Length:
    columns: tuple[str, ...] = ()

    def __init__(self, **options: Any) -> None:
        self.options = LengthOptions(**options)

    def _size(self, text: str) -> int:
        return len(text.split()) if self.options.unit == "words" else len(text)

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float]:
        o = self.options
        out = []
        for completion in completions:
            size = self._size(completion_text(completion))
            distance = max(0, o.min - size) + (max(0, size - o.max) if o.max is not None else 0)
            out.append(-min(o.max_penalty, o.penalty * distance) if distance else 0.0)
        return out


BUILTIN = {
    "exact_match": ExactMatch,
    "numeric_match": NumericMatch,
    "similarity": Similarity,
    "regex_format": RegexFormat,
    "length": Length,
}
