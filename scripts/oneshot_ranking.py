#!/usr/bin/env python
"""How well a finished NAS-Bench-201 search's supernet ranks cells, against the table.

    python scripts/oneshot_ranking.py RUN --benchmark TABLE [--data-dir DIR] [--cells N]
                                      [--images N] [--seed S] [--out FILE]
                                      [--split-edge E [--finetune-epochs N] [--finetune-lr LR]]

The command of ``nas.experiments.ranking``, whose docstring says what it measures.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's nas

from nas.experiments.ranking import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
