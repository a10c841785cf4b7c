#!/usr/bin/env python
"""Make the outputs the documentation shows: run the commands of the pages, record what they
print, and write it into the pages, so that no shown output is typed by hand.

    OMP_NUM_THREADS=1 python scripts/docs_outputs.py [--data-dir ../shared/data] [--work DIR]
    python scripts/docs_outputs.py --write-only     # the pages again from the last record

The pages of ``RUN``, in order, in one scratch directory laid out as a clone beside ``shared/``
(``configs/`` links to this tree's): for each page, every command of its console blocks marked
``<!-- test: tiny -->`` runs in order, as typed, then its Python blocks in one process. One
thread (``OMP_NUM_THREADS=1``), the configs' fixed seeds. The record, ``RECORD``, holds each
command with its whole output, exit status and seconds, the Python blocks' output, the files the
runs wrote, the commit, the date, the CPU and its load. The pages then get each marked block's
output (the middle lines of a run of ``epoch k/N`` lines elided as ``...``), the Python output
in the block marked ``<!-- test: printed -->``, the commit and date the tutorial names, and
the pictures of ``IMAGES``. ``tests/test_docs.py`` checks the pages against the record, and
that every run path a page names is a file or directory the runs wrote.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RECORD = ROOT / "scripts" / "results" / "docs_outputs.json"
RUN = ["tutorial.md", "how-to/use-from-python.md"]  # pages whose commands run, in this order
IMAGES = {  # picture in docs/img <- the file the tutorial's runs wrote
    "heatmap_normal.png": "runs/first/heatmaps/normal_epoch_006.png",
    "ops_normal.png": "runs/first/plots/ops_normal.png",
    "cell_normal.png": "runs/first/genotype_normal.png",
}
BLOCK = re.compile(r"(?:<!-- test: (\w+)[^>]*-->\n\n?)?```(\w*)[^\n]*\n(.*?)```", re.S)
EPOCH = re.compile(r"^\w+ epoch \d+/\d+ ")
STATED = re.compile(r"\((\d{4}-\d\d-\d\d), the code of(\s+)commit ([0-9a-f]{7,})")


def blocks(text: str) -> list[tuple[str | None, str, str]]:
    """``(mark, language, body)`` of every fenced block of a page."""
    return [(m.group(1), m.group(2), m.group(3)) for m in BLOCK.finditer(text)]


def commands(body: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` for each ``$ `` line of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in body.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


def elide(lines: list[str]) -> list[str]:
    """``lines`` with the middle of each run of ``epoch k/N`` lines replaced by ``...``."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and EPOCH.match(lines[j]):
            j += 1
        if j - i > 2:
            out += [lines[i], "...", lines[j - 1]]
            i = j
        else:
            out.append(lines[i])
            i += 1
    return out


def page_commands(text: str) -> list[list[str]]:
    """The commands of each console block marked ``tiny``, block by block."""
    return [[c for c, _ in commands(body)] for mark, lang, body in blocks(text)
            if mark == "tiny" and not lang]


def python_code(text: str) -> list[str]:
    """Every Python block of a page, in order."""
    return [body for _, lang, body in blocks(text) if lang == "python"]


def shown(record: dict[str, Any], page: str) -> list[str]:
    """The bodies the page's marked blocks get from the record: the tiny blocks, then the
    printed one (when the page has Python)."""
    done = iter(record["pages"][page]["commands"])
    text = (DOCS / page).read_text()
    out = []
    for block in page_commands(text):
        lines = []
        for command in block:
            ran = next(done)
            assert ran["command"] == command, (ran["command"], command)
            lines += [f"$ {command}", *elide(ran["output"])]
        out.append("\n".join(lines) + "\n")
    printed = record["pages"][page].get("printed")
    if printed is not None:
        out.append("".join(f"{line}\n" for line in printed))
    return out


def write_pages(record: dict[str, Any]) -> None:
    """Put the recorded outputs, commit and date into the pages."""
    for page in record["pages"]:
        path = DOCS / page
        text = path.read_text()
        bodies = iter(shown(record, page))
        pieces, last = [], 0
        for m in BLOCK.finditer(text):
            if m.group(1) in ("tiny", "printed") and not m.group(2):
                pieces += [text[last:m.start(3)], next(bodies)]
                last = m.end(3)
        text = "".join(pieces) + text[last:]
        text = STATED.sub(lambda m: f"({record['date']}, the code of{m.group(2)}commit "
                                    f"{record['commit']}", text)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        found = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1) if found else cpu
    except OSError:
        pass
    return {"cpu": cpu, "cpus": len(os.sched_getaffinity(0)), "load_1min": os.getloadavg()[0]}


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0] == "nas":
        return [sys.executable, "-m", "nas", *argv[1:]]
    return [sys.executable, *argv[1:]] if argv[0] == "python" else argv


def run_pages(work: Path, data: Path) -> dict[str, Any]:
    """Run the pages' commands and Python blocks in ``work``; the record of what they printed."""
    clone = work / "repo"
    clone.mkdir(parents=True)
    (clone / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    (work / "shared").mkdir()
    (work / "shared" / "data").symlink_to(data.resolve(), target_is_directory=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="200")
    record: dict[str, Any] = {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "code_changed_since_commit": bool(_git("status", "--porcelain", "--", "nas",
                                               "search_spaces", "configs")),
        "date": datetime.date.today().isoformat(), "machine": _machine(),
        "threads": "OMP_NUM_THREADS=1", "pages": {}}
    for page in RUN:
        text = (DOCS / page).read_text()
        ran: list[dict[str, Any]] = []
        for command in (c for block in page_commands(text) for c in block):
            started = time.time()
            out = subprocess.run(_argv(command), cwd=clone, env=env, capture_output=True, text=True)
            ran.append({"command": command, "output": out.stdout.rstrip("\n").split("\n"),
                        "status": out.returncode, "seconds": round(time.time() - started, 1)})
            print(f"$ {command}  ({ran[-1]['seconds']} s, status {out.returncode})", flush=True)
            if out.returncode != 0:
                raise SystemExit(f"{page}: `{command}` failed:\n{out.stdout}{out.stderr}")
        entry: dict[str, Any] = {"commands": ran}
        code = python_code(text)
        if code:
            started = time.time()
            out = subprocess.run([sys.executable, "-c", "\n".join(code)], cwd=clone, env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{page}: its Python failed:\n{out.stderr}")
            entry["printed"] = out.stdout.rstrip("\n").split("\n")
            entry["python_seconds"] = round(time.time() - started, 1)
        record["pages"][page] = entry
    record["files"] = sorted(str(p.relative_to(clone)) for p in (clone / "runs").rglob("*"))
    for name, source in IMAGES.items():
        shutil.copyfile(clone / source, DOCS / "img" / name)
    return record


def main(argv: list[str] | None = None) -> int:
    """Run the pages' commands, record their output, write it into the pages."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="the directory that holds cifar-10-batches-py/")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    parser.add_argument("--write-only", action="store_true",
                        help="write the pages from the last record, running nothing")
    args = parser.parse_args(argv)
    if args.write_only:
        record = json.loads(RECORD.read_text())
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="docs-outputs-"))
        record = run_pages(work, args.data_dir)
        RECORD.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {RECORD.relative_to(ROOT)} (runs in {work})")
    write_pages(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
