"""The README's Python snippets run as written (those that need the shared data set excepted)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = """
import sys
for i, code in enumerate(sys.argv[1:]):
    exec(compile(code, f"README python block {i + 1}", "exec"), {"__name__": f"readme_{i}"})
print("ran", len(sys.argv) - 1)
"""


def test_readme_python_snippets_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    runnable = [b for b in blocks if "../shared" not in b]
    assert len(runnable) >= 3  # the supernet, genotypes and plugin examples
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", RUNNER, *runnable], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"ran {len(runnable)}" in out.stdout
    assert (tmp_path / "g.json").is_file()  # the genotypes example saved its file


def test_readme_configuration_reference_is_the_defaults():
    import yaml

    from nas.config import Config, to_dict

    section = (ROOT / "README.md").read_text().split("## Configuration reference", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert yaml.safe_load(block) == to_dict(Config())
