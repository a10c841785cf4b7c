"""The command-line options of the experiments, importable without torch (``nas``'s parser is
built before torch loads, so that Ctrl-C while it loads ends the command with one line)."""
from __future__ import annotations

import argparse


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a study (``nas study`` and ``scripts/study.py``)."""
    p.add_argument("study", metavar="STUDY.yaml", help="the study file (configs/studies/)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/<study name>)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds instead of the study's")
    p.add_argument("--only", nargs="+", default=[], metavar="NAME", help="only these methods")
    p.add_argument("--data-dir", metavar="DIR", help="instead of the study's data_dir")
    p.add_argument("--benchmark", metavar="TABLE", help="instead of the study's benchmark")
