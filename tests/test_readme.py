"""The README: its first lines are the two commands, its Python example runs as written, and its
links into the documentation lead to pages that exist (the pages themselves: tests/test_docs.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_first_lines_are_the_two_commands():
    lines = README.split("\n")
    assert lines[5] == ("    python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
                        "nas search --config configs/quick.yaml --data-dir ../shared/data")
    assert lines[9] == ("    python3 -m venv .venv && . .venv/bin/activate && "
                        "pip install -e '.[test]' && python -m pytest -q")
    assert lines[9].strip().split("&& ", 3)[3] in (ROOT / ".ci" / "run").read_text()


def test_readme_python_example_runs(tmp_path):
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(code.strip().splitlines()) <= 12
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "torch.Size([14, 8])"
    assert lines[1].startswith("Genotype(normal=[(")
    assert lines[2] == "3,349,342"


def test_readme_links_and_picture_exist():
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [t for t in targets if "://" not in t]
    assert len(local) >= 20
    for target in local:
        assert (ROOT / target).exists(), target
    assert "docs/img/" in README and len(README.splitlines()) <= 150
