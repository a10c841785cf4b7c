"""``python -m nas`` and the ``nas`` console script."""
import os
import sys


def run() -> None:
    """Run the ``nas`` command; Ctrl-C while it loads ends it with one line and status 130
    (SIGTERM, once the command runs, with 143)."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("\nnas: interrupted\n")
        sys.exit(130)
    code = main()
    if code in (130, 143):
        # Ctrl-C that landed while a library was being imported can leave that library's
        # half-run state to the interpreter's shutdown, which then dies of the signal (-2)
        # after our one line; what had to be closed was closed, so skip that shutdown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
