"""Bounds on rendering one row through a chat template: what it may raise, how long it may take and how long
its text may be, so that a template which fails, loops or floods on real rows rejects those rows instead of
crashing, hanging or exhausting memory in `prepare`.

- A template that raises on a row (Mistral's and Llama-2's templates raise "roles must alternate" this way,
  any jinja error) rejects the row with reason `template_error` and the template's message.
- Rendering and tokenizing one row may take at most `ROW_SECONDS` of CPU time; a row that takes longer is
  rejected with reason `template_timeout`. The limit is a SIGVTALRM timer (CPU time, so it leaves the
  wall-clock SIGALRM to others, e.g. pytest-timeout; a looping template burns CPU), so it holds where
  prepare runs in a process's main thread (the CLI, DVC stages, `data.num_proc` workers); elsewhere
  (prepare called from another thread) no timer is set and only the length bound holds.
- A rendered text longer than `render_limit` characters is rejected with reason `template_too_long` before
  it is tokenized (tokenizing 200 MB of text takes tens of GB).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from peft_framework.data.rows import Reason, RowProblem

#: seconds one row may spend in the chat template and the tokenizer
ROW_SECONDS = 10.0
#: characters a template may add beyond 4x the row's own text, per token of data.max_seq_len
CHARS_PER_TOKEN = 64


class RowTimeout(BaseException):
    """Raised inside a row's rendering when its time is up (by the SIGVTALRM handler). A BaseException, so
    that no `except Exception` in jinja, transformers or here takes it for the template's own error."""


def render_limit(row_chars: int, max_seq_len: int) -> int:
    """The longest text a template may render for a row of `row_chars` characters: 4x the row's own text
    (a template may repeat a message) plus CHARS_PER_TOKEN characters per token of data.max_seq_len
    (system prompts, markup). Honest templates stay far below; rows longer than max_seq_len are truncated
    after tokenizing as before."""
    return 4 * row_chars + CHARS_PER_TOKEN * max_seq_len


def check_rendered(text: str, row_chars: int, max_seq_len: int) -> str:
    """`text` when within `render_limit`; RowProblem(template_too_long) otherwise."""
    limit = render_limit(row_chars, max_seq_len)
    if len(text) > limit:
        raise RowProblem(
            Reason.TEMPLATE_TOO_LONG,
            f"the chat template rendered {len(text)} characters for a row of {row_chars}; allowed: at most "
            f"{limit} (4 x the row's text + {CHARS_PER_TOKEN} x data.max_seq_len)",
        )
    return text


def template_failure(exc: Exception) -> RowProblem:
    """RowProblem(template_error) with the template's own message (one line, clipped)."""
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
    return RowProblem(Reason.TEMPLATE_ERROR, f"the chat template failed on this row: {detail}")


def _on_alarm(signum: int, frame: object) -> None:
    raise RowTimeout


def _can_time() -> bool:
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGVTALRM) in (signal.SIG_DFL, signal.SIG_IGN, None)
    )


@contextmanager
def row_time_limit(seconds: float | None = None) -> Iterator[None]:
    """RowProblem(template_timeout) when the block runs longer than `seconds` (default ROW_SECONDS);
    no limit outside the main thread or when another SIGVTALRM handler is installed."""
    seconds = ROW_SECONDS if seconds is None else seconds
    if not _can_time():
        yield
        return
    previous = signal.signal(signal.SIGVTALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
    try:
        yield
    except RowTimeout:
        raise RowProblem(
            Reason.TEMPLATE_TIMEOUT,
            f"rendering and tokenizing this row took more than {seconds:g} s of CPU time; allowed: at most "
            f"{seconds:g} s per row (does the chat template loop?)",
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)
