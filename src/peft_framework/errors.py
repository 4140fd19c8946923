"""Errors that are the user's to fix: the CLI prints them without a traceback and exits 2."""

from __future__ import annotations

#: an error message lists at most this many problems, each cut to _MAX_LINE characters: a hostile input
#: (a config with 600,000 unknown keys) must not become a message of many megabytes
MAX_PROBLEMS = 50
_MAX_LINE = 1000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(Exception):
    """A mistake in config, data or invocation. Message names the key/row, the value and what is allowed."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(message)

    def __str__(self) -> str:  # one line per problem, under the headline
        head = _cut(super().__str__(), 4 * _MAX_LINE)
        if not self.problems:
            return head
        shown = [f"  - {_cut(str(p), _MAX_LINE)}" for p in self.problems[:MAX_PROBLEMS]]
        if len(self.problems) > MAX_PROBLEMS:
            shown.append(f"  ... and {len(self.problems) - MAX_PROBLEMS} more problem(s) not shown")
        return head + "\n" + "\n".join(shown)


class ConfigError(UserError):
    """The experiment config is invalid (schema, values, or unknown keys)."""


class DataError(UserError):
    """The input data cannot be used (missing files, too many rejected rows, ...)."""


class AdapterError(UserError):
    """An adapter cannot be built or loaded as configured (no matching modules, bad checkpoint, ...)."""


class StageFailed(UserError):
    """A pipeline stage refused to produce its outputs (loss went NaN, parity check failed, ...)."""
