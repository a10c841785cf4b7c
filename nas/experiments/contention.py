"""``nas search``'s wall time under CPU contention, per thread setting.

The README's first command, ``nas search --config configs/quick.yaml``, alone and beside N busy
processes, with each thread setting (``default``, a count, or ``N:spin`` for N threads whose idle
OpenMP threads spin as libgomp's default lets them, i.e. as before ``nas`` set a wait policy);
every run is a fresh process. Besides the wall time it records the thread count each run used and
the CPUs that other processes (neither the search nor the busy ones) kept busy meanwhile.
``scripts/benchmark.py --contention`` is the command.
"""
from __future__ import annotations

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import threads as nthreads

CONTENTION_TARGET = "beside 2 busy processes on 2 cores, default <= 1.5x the best setting's time"
BUSY_LOOP = "while True: pass"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def contention_run(setting: str, busy_pids: list[int], config: str, data_dir: str,
                   overrides: list[str], timeout: float) -> dict:
    """Time one ``nas search`` in a fresh process with one thread setting."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    count, _, how = setting.partition(":")
    flags = [] if count == "default" else ["--threads", count]
    if how == "spin":
        env["GOMP_SPINCOUNT"] = "300000"  # libgomp's own default when no policy is set
    cpus = nthreads.affinity_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "nas", "search", "--config", config, "--data-dir", data_dir,
               "--run-dir", str(Path(tmp) / "run"), *flags, "--set", *overrides]
        busy_before = {pid: _cpu_seconds(pid) for pid in busy_pids}
        child_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = nthreads.Sample.now(cpus)
        load = float(Path("/proc/loadavg").read_text().split()[0])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            finished = proc.returncode == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            finished = False
        end = nthreads.Sample.now(cpus)
    wall = end.when - start.when
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    search_cpu = (child.ru_utime + child.ru_stime) - (child_before.ru_utime + child_before.ru_stime)
    busy_cpu = sum(_cpu_seconds(pid) - before for pid, before in busy_before.items())
    machine = nthreads.others_busy(start, end)  # everything but this (sleeping) script
    found = re.search(r"(\d+) threads? \(", out)
    if proc.returncode not in (0, -9) and not found:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out}")
    return {"setting": setting, "busy": len(busy_pids), "seconds": wall, "finished": finished,
            "threads": int(found.group(1)) if found else None, "load_1min_before": load,
            "search_cpus": search_cpu / wall, "busy_cpus": busy_cpu / wall,
            "other_cpus": None if machine is None else
            max(0.0, machine - (search_cpu + busy_cpu) / wall)}


def contention(busy_levels: list[int], settings: list[str], config: str, data_dir: str,
               overrides: list[str], timeout: float, rounds: int) -> list[dict]:
    """Every setting beside each number of busy processes, ``rounds`` times in turn."""
    results = []
    for busy in busy_levels:
        procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
        try:
            time.sleep(1.0 if procs else 0.0)
            for r in range(rounds):
                for setting in settings:
                    row = contention_run(setting, [p.pid for p in procs], config, data_dir,
                                         overrides, timeout)
                    row["round"] = r
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    results.append(row)
        finally:
            for p in procs:
                p.kill()
                p.wait()
    return results


def contention_table(results: list[dict], command: str) -> str:
    """The Markdown table of a contention run: median seconds per (busy, setting)."""
    lines = [f"Device: {os.cpu_count()}-CPU machine, {len({r['round'] for r in results})} "
             f"round(s); command: `{command}`; busy process: `python -c \"{BUSY_LOOP}\"`. "
             "Other load: CPUs kept busy by processes that were neither the search nor the busy "
             "ones, over the run.", "",
             "| busy processes | threads setting | threads used | wall (s) | vs best | other load (CPUs) |",
             "|---:|---|---:|---:|---:|---:|"]
    for busy in sorted({r["busy"] for r in results}):
        rows = [r for r in results if r["busy"] == busy]
        settings = list(dict.fromkeys(r["setting"] for r in rows))
        med = {s: statistics.median(r["seconds"] for r in rows if r["setting"] == s)
               for s in settings}
        done = {s: all(r["finished"] for r in rows if r["setting"] == s) for s in settings}
        best = min(med[s] for s in settings if done[s])
        for s in settings:
            mine = [r for r in rows if r["setting"] == s]
            used = sorted({r["threads"] for r in mine if r["threads"] is not None})
            other = [r["other_cpus"] for r in mine if r["other_cpus"] is not None]
            name = s.split(":")[0] + (", idle threads spin (libgomp default)"
                                      if s.endswith(":spin") else "")
            wall = f"{med[s]:.1f}" if done[s] else f"> {med[s]:.0f} (stopped)"
            load = f"{statistics.median(other):.1f}" if other else "-"
            lines.append(f"| {busy} | {name} | {'/'.join(map(str, used)) or '-'} | {wall} | "
                         f"{'> ' if not done[s] else ''}{med[s] / best:.2f}x | {load} |")
    lines += ["", f"Target: {CONTENTION_TARGET}."]
    return "\n".join(lines) + "\n"


