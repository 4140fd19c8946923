"""Input rows with their provenance, and the reasons a row can be rejected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class Reason:
    """Stable reason codes written to `rejected.jsonl` and counted in the report."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    INVALID_CSV = "invalid_csv"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    INVALID_ROLE = "invalid_role"
    INVALID_ROLE_ORDER = "invalid_role_order"
    EMPTY_FIELD = "empty_field"
    INVALID_LABEL = "invalid_label"
    TOO_SHORT_CHARS = "too_short_chars"
    TOO_LONG_CHARS = "too_long_chars"
    TOO_FEW_TOKENS = "too_few_tokens"
    TOO_MANY_TOKENS = "too_many_tokens"
    NO_RESPONSE_TOKENS = "no_response_tokens"
    TEMPLATE_ERROR = "template_error"
    TEMPLATE_TIMEOUT = "template_timeout"
    TEMPLATE_TOO_LONG = "template_too_long"
    DUPLICATE_EXACT = "duplicate_exact"
    DUPLICATE_NORMALIZED = "duplicate_normalized"


@dataclass
class Record:
    """One input row as read: parsed `data`, or the `error` that kept it from being parsed."""

    source: str
    index: int  # 0-based row index within its source
    line: int | None = None  # 1-based line number in a text file, where known
    data: Any = None
    error: tuple[str, str] | None = None  # (reason, detail) for rows that could not be parsed
    raw: str | None = None  # the raw text of an unparseable row (invalid bytes backslash-escaped)
    base_dir: str | None = None  # directory of a local source file: image paths are relative to it

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else f"{self.source}#{self.index}"


@dataclass
class Rejected:
    record: Record
    reasons: list[str]
    details: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        rec = self.record
        return {
            "source": rec.source,
            "line": rec.line,
            "row": rec.index,
            "reasons": self.reasons,
            "details": self.details,
            "raw": rec.raw if rec.data is None else rec.data,
        }


class RowProblem(Exception):
    """Raised inside the row pipeline: the row is rejected for `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
