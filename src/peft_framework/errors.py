"""Errors that are the user's to fix: the CLI prints them without a traceback and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in config, data or invocation. Message names the key/row, the value and what is allowed."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        super().__init__(message)

    def __str__(self) -> str:  # one line per problem, under the headline
        head = super().__str__()
        if not self.problems:
            return head
        return head + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class ConfigError(UserError):
    """The experiment config is invalid (schema, values, or unknown keys)."""


class DataError(UserError):
    """The input data cannot be used (missing files, too many rejected rows, ...)."""


class AdapterError(UserError):
    """An adapter cannot be built or loaded as configured (no matching modules, bad checkpoint, ...)."""


class StageFailed(UserError):
    """A pipeline stage refused to produce its outputs (loss went NaN, parity check failed, ...)."""
