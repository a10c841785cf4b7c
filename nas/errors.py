"""The one exception type for a user's mistake (bad config, flag, data, checkpoint)."""


class InputError(ValueError):
    """Bad user input; the CLI prints its message as one line and exits with status 2."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the CLI prints its message as one line, status 1."""
