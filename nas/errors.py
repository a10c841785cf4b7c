"""The one exception type for a user's mistake (bad config, flag, data, checkpoint), and how an
error is told in one line."""


class InputError(ValueError):
    """Bad user input; the CLI prints its message as one line and exits with status 2."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the CLI prints its message as one line, status 1."""


def check_positive(section: str, **sizes: int) -> None:
    """Raise InputError naming ``section.key`` for the first size below 1 (C, cells, ...)."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{section}.{key}: must be a whole number of at least 1, got {value!r}")


def first_line(exc: BaseException, typed: bool = True) -> str:
    """``Type: message`` on one line (long PyTorch messages keep their first line); with
    ``typed`` false, the message's first line alone ('' when there is none)."""
    text = str(exc).strip().splitlines()
    if not typed:
        return text[0] if text else ""
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
