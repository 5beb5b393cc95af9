"""Test double of modules.errors: reports are printed and kept in `reported` for the tests to read."""

from __future__ import annotations

import sys
import traceback

reported: list[tuple[str, BaseException | None]] = []
"""(message, the exception being handled or None) for every report, oldest first."""


def report(message: str, *, exc_info: bool = False) -> None:
    exception = sys.exc_info()[1] if exc_info else None
    reported.append((message, exception))
    print(f"*** {message}", file=sys.stderr)
    if exception is not None:
        traceback.print_exception(exception, file=sys.stderr)


def display(e: BaseException, task: str, *, full_traceback: bool = False) -> None:
    reported.append((f"Error running {task}", e))
    print(f"{task}: {type(e).__name__}: {e}", file=sys.stderr)


def print_error_explanation(message: str) -> None:
    print(message, file=sys.stderr)
