"""``python -m nas`` and the ``nas`` console script."""
import sys


def run() -> None:
    """Run the ``nas`` command; Ctrl-C while it loads ends it with one line and status 130."""
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("\nnas: interrupted\n")
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    run()
