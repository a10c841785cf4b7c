#!/usr/bin/env python
"""A study of search methods on NAS-Bench-201: ``nas study`` under its former name.

    python scripts/study.py configs/studies/nb201_cpu.yaml [--out DIR] [--jobs N] [--seeds 0 1 2]
                            [--only NAME ...] [--data-dir DIR] [--benchmark TABLE]

The study itself is ``nas.experiments.study`` (its docstring describes the study file); bad input
prints one line ``study: error: ...`` and exits with status 2.
"""
import os
import sys

from nas.experiments.study import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as nas does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
