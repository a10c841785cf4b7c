"""The one exception type for a user's mistake (bad config, flag, data, checkpoint), and how an
error is told in one line."""
from __future__ import annotations

import argparse


class InputError(ValueError):
    """Bad user input; the CLI prints its message as one line and exits with status 2."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the CLI prints its message as one line, status 1."""


def check_positive(section: str, **sizes: int) -> None:
    """Raise InputError naming ``section.key`` for the first size below 1 (C, cells, ...)."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{section}.{key}: must be a whole number of at least 1, got {value!r}")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``PROG: error: ... (see PROG --help)``, status 2
    (the ``nas`` command and every script in scripts/)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def first_line(exc: BaseException, typed: bool = True) -> str:
    """``Type: message`` on one line (long PyTorch messages keep their first line); with
    ``typed`` false, the message's first line alone ('' when there is none)."""
    text = str(exc).strip().splitlines()
    if not typed:
        return text[0] if text else ""
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
