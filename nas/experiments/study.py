"""A study: search methods x seeds on NAS-Bench-201, compared by the table accuracy of their cells.

    nas study configs/studies/nb201_cpu.yaml [--out DIR] [--jobs N] [--seeds 0 1 2]
                                             [--only NAME ...] [--data-dir DIR] [--benchmark TABLE]

(``python scripts/study.py ...`` runs the same, with ``study: error:`` before a bad input's line.)

Each (method, seed) is one ``nas search`` in its own process, in OUT/runs/METHOD/seed_S (OUT
defaults to runs/<study file name>); ``--jobs`` of them run at once, sharing the cores. Running
the same command again continues the study: finished runs are kept, interrupted ones resumed
from their checkpoint (use another --out after changing a method). The optional random-search
baseline trains random cells for the mean wall time of one search of the first method and keeps
the best by its validation accuracy. The table only scores the cells the runs picked. Writes
OUT/study.json and OUT/study.md and prints the table. Bad input: one line ``nas study: error:
...``, exit 2, nothing created; failed runs are listed at the end, exit 1.

STUDY.yaml (relative paths are relative to the current directory):

    benchmark: ../shared/benchmarks/nats_tss_200ep.csv
    data_dir: ../shared/data
    seeds: [0, 1, 2]
    set: []                         # --set overrides for every method
    methods:                        # name -> a config file and its own --set overrides
      gdas: {config: configs/gdas_nb201_cpu.yaml, set: [search.arch_lr=3e-3]}
    random_search: {epochs: 3}      # epochs per random cell; seconds: the budget if no search ran;
                                    # network: NB201 network options (default: the supernet's C
                                    # and cells_per_stage); lr: its SGD rate (default search.lr);
                                    # a list of such baselines, each with its own name:, gives
                                    # one row each; seeds: only those of the study's seeds
    published: true                 # add the published full-scale figures
    sweep:                          # optional: one method under several budgets, and a picture
      method: gdas                  # a method of the study
      metric: macs                  # params, macs or latency_ms (search.budget.<metric>)
      budgets: [3.0e+7, 6.0e+7, 1.0e+8, 1.5e+8]
      seeds: [0, 1]                 # default: the study's seeds
      random_search: NAME           # optional: that random-search baseline at every budget too,
                                    # given the mean wall time of the budget's searches (on
                                    # the sweep's seeds that are among the baseline's seeds)

Next to every search row stand the no-training baselines: the largest cell of the table (most
parameters) and, when the first method searches under a budget (search.budget), the largest cell
within it; with a budget the random-search baseline draws only cells within it. A sweep writes
OUT/pareto.png: table accuracy against the budget's metric for every derived cell, over the
table's cells and their Pareto front.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from ..benchmarks import NB201Table, canonical_arch, load_table
from ..budget import fits
from ..config import budget_limits, load_config, read_yaml
from ..errors import InputError, OneLineParser
from ..genotype import Genotype, parse_genotype
from ..plot import scatter
from ..runtime import check_output

from .options import add_study_arguments
from .random_search import size_matched, spend_floor, table_costs

REPO = Path(__file__).resolve().parents[2]
KEYS = ("benchmark", "data_dir", "seeds", "set", "methods", "random_search", "published", "sweep")
PUBLISHED = (("GDAS", 93.61, 70.70), ("DARTS", 54.30, 15.61), ("DrNAS", 94.36, 73.51),
             ("optimum", 94.37, 73.51))


@dataclass
class Method:
    """A method of the study: its config file and its overrides."""

    config: Path
    sets: list[str]


@dataclass
class Study:
    """A checked study file, with the command line's overrides applied."""

    path: Path
    table: NB201Table
    benchmark: Path
    data_dir: Path | None
    seeds: list[int]
    methods: dict[str, Method]
    random_search: list[dict[str, Any]]  # the random-search baselines, each with its name
    published: bool
    rows: list[str]                 # the methods with a row of their own (not sweep-only)
    budget: dict[str, float]        # the first method's search.budget bounds ({}: none)
    sweep: dict[str, Any] | None    # {method, metric, budgets, seeds}


class RunFailed(Exception):
    """A child process failed; the message ends with its stderr tail."""


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: expected a list of KEY=VALUE strings, got {value!r}")
    return value


def need(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def load_study(path: str | Path, seeds: Sequence[int] | None = None, only: Sequence[str] = (),
               data_dir: str | None = None, benchmark: str | None = None) -> Study:
    """Read and check a study file with the command line's overrides; creates nothing."""
    raw = read_yaml(path)
    unknown = sorted(set(map(str, raw)) - set(KEYS))
    need(not unknown, f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(KEYS)})")
    specs = raw.get("methods")
    need(isinstance(specs, dict) and bool(specs),
           f"{path}: methods: expected a mapping of names to {{config: FILE, set: [...]}}")
    for name in only:
        need(name in specs, f"--only: unknown method '{name}' (the study has {', '.join(specs)})")
    common, methods = _strings(raw.get("set") or [], f"{path}: set"), {}
    for name, spec in specs.items():
        where = f"{path}: methods.{name}"
        need(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", str(name))) and name != "random_search",
               f"{where}: a name is letters, digits, _ . - (random_search is taken)")
        need(isinstance(spec, dict) and "config" in spec and not set(spec) - {"config", "set"},
               f"{where}: expected {{config: FILE, set: [KEY=VALUE, ...]}}, got {spec!r}")
        sets = common + _strings(spec.get("set") or [], f"{where}.set")
        try:  # a missing file or a bad override fails now, not in a child an hour later
            cfg = load_config(spec["config"], sets)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        need(cfg.space == "nasbench201", f"{where}: the table scores only NAS-Bench-201 cells, "
               f"the config's space is {cfg.space}")
        if not only or name in only:
            methods[name] = Method(Path(spec["config"]).resolve(), sets)
    seeds = seeds if seeds is not None else raw.get("seeds", [0])
    need(isinstance(seeds, list) and bool(seeds) and len(set(seeds)) == len(seeds) and
           all(type(s) is int for s in seeds), f"seeds: expected distinct integers, got {seeds!r}")
    rs = _check_random_search(path, raw.get("random_search"), specs, list(seeds))
    need(type(raw.get("published", False)) is bool, f"{path}: published: expected true or false")
    bench, data = benchmark or raw.get("benchmark"), data_dir or raw.get("data_dir")
    need(bool(bench), f"{path}: no benchmark table: set benchmark: or pass --benchmark")
    table = load_table(bench)
    need(not data or Path(data).is_dir(), f"data directory not found: {data}")
    first = next(iter(specs.values()))
    budget = budget_limits(load_config(first["config"], common + _strings(
        first.get("set") or [], f"{path}: methods")).search.budget)
    sweep = _check_sweep(path, raw.get("sweep"), specs, list(seeds), rs)
    if sweep is not None and only and sweep["method"] not in only:
        sweep = None
    rows = list(methods)
    if sweep is not None:
        spec = specs[sweep["method"]]
        swept = Method(Path(spec["config"]).resolve(),
                       common + _strings(spec.get("set") or [], "sweep"))
        methods.setdefault(sweep["method"], swept)  # swept, but maybe not a row of its own
        sweep["bounds"] = budget_limits(load_config(swept.config, swept.sets).search.budget)
    return Study(Path(path), table, Path(bench).resolve(), Path(data).resolve() if data else None,
                 list(seeds), methods, rs, raw.get("published", False), rows, budget, sweep)


RS_KEYS = {"name", "epochs", "seconds", "network", "lr", "seeds"}


def _check_random_search(path: str | Path, rs: Any, specs: dict[str, Any],
                         seeds: list[int]) -> list[dict[str, Any]]:
    """The random-search baselines of a study file, each with a name (none: an empty list)."""
    if rs is None:
        return []
    specs_rs = rs if isinstance(rs, list) else [rs]
    out = []
    for i, r in enumerate(specs_rs):
        where = f"{path}: random_search" + (f"[{i}]" if isinstance(rs, list) else "")
        net = r.get("network", {}) if isinstance(r, dict) else None
        need(isinstance(r, dict) and not set(r) - RS_KEYS and
               type(r.get("epochs", 1)) is int and r.get("epochs", 1) >= 1 and
               type(r.get("seconds", 1)) in (int, float) and r.get("seconds", 1) > 0 and
               type(r.get("lr", 1.0)) in (int, float) and r.get("lr", 1.0) > 0 and
               isinstance(net, dict) and set(net) <= {"C", "cells_per_stage"} and
               all(type(v) is int and v >= 1 for v in net.values()) and
               isinstance(r.get("seeds", seeds), list) and
               all(type(x) is int for x in r.get("seeds", seeds)),
               f"{where}: expected {{name: NAME, epochs: N >= 1, seconds: S > 0, lr: LR > 0, "
               "network: {C: N, cells_per_stage: N}, seeds: [S, ...]} or null")
        name = str(r.get("name", "random_search"))
        need(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)) and name not in specs and
               name not in (o["name"] for o in out) and name != "sweep",
               f"{where}: name: letters, digits, _ . -, unlike every method's and other "
               f"baseline's name, got {name!r}")
        out.append({**r, "name": name})
    return out


def _check_sweep(path: str | Path, sweep: Any, specs: dict[str, Any], seeds: list[int],
                 baselines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The checked ``sweep:`` section, with its defaults filled in."""
    if sweep is None:
        return None
    where = f"{path}: sweep"
    need(isinstance(sweep, dict) and
           not set(sweep) - {"method", "metric", "budgets", "seeds", "random_search"},
           f"{where}: expected {{method: NAME, metric: macs, budgets: [...], seeds: [...], "
           "random_search: NAME}")
    need(sweep.get("method") in specs, f"{where}.method: expected one of {', '.join(specs)}, "
           f"got {sweep.get('method')!r}")
    metric = sweep.get("metric", "macs")
    need(metric in ("params", "macs", "latency_ms"),
           f"{where}.metric: expected params, macs or latency_ms, got {metric!r}")
    budgets = sweep.get("budgets")
    need(isinstance(budgets, list) and bool(budgets) and all(
        type(b) in (int, float) and b > 0 for b in budgets),
           f"{where}.budgets: expected a list of positive numbers, got {budgets!r}")
    runs = sweep.get("seeds", seeds)
    need(isinstance(runs, list) and bool(runs) and all(type(x) is int for x in runs),
           f"{where}.seeds: expected a list of integers, got {runs!r}")
    names = [b["name"] for b in baselines]
    rs = sweep.get("random_search")
    need(rs is None or rs in names, f"{where}.random_search: expected the name of a "
           f"random_search: baseline ({', '.join(names) or 'the study has none'}), got {rs!r}")
    return {"method": sweep["method"], "metric": metric, "budgets": [float(b) for b in budgets],
            "seeds": runs, "random_search": rs}


# -- running ------------------------------------------------------------------------------------
def child(cmd: list[str], jobs: int) -> float:
    """Run one child with its share of the cores; its wall time (s), or RunFailed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores() // jobs))}
    started = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if proc.returncode:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RunFailed(f"exit status {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return time.time() - started


def logged_seconds(run: Path) -> float:
    """Seconds of the epochs metrics.jsonl records (the last line of each epoch counts), and of
    the few-shot phase few_shot.json records (before it kept its wall time: its parts' sum)."""
    path, parts = run / "metrics.jsonl", run / "few_shot.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    epochs = sum({r["epoch"]: r.get("seconds") or 0.0 for r in map(json.loads, lines)}.values())
    state = json.loads(parts.read_text()) if parts.is_file() else {}
    if "phase_seconds" in state:  # parts that ran side by side: the phase's wall time
        return epochs + state["phase_seconds"]
    return epochs + sum(p.get("seconds") or 0.0 for p in state.get("parts", {}).values())


def search_run(study: Study, name: str, seed: int, run: Path, jobs: int,
               extra: Sequence[str] = ()) -> str:
    """Start, or resume, one search (``extra``: more --set overrides); record its wall time."""
    cmd = [sys.executable, "-m", "nas", "search"]
    tail = ["--benchmark", str(study.benchmark), "--quiet"]
    tail += ["--data-dir", str(study.data_dir)] if study.data_dir else []
    if (run / "checkpoint.pt").is_file():
        before, note = logged_seconds(run), "resumed"  # the time of the interrupted invocation
        cmd += ["--resume", str(run), *tail]
    else:
        shutil.rmtree(run, ignore_errors=True)  # died before its first checkpoint: start afresh
        m = study.methods[name]
        before, note = 0.0, "done"
        sets = [*m.sets, *extra]
        cmd += ["--config", str(m.config), *(["--set", *sets] if sets else []),
                "--seed", str(seed), "--run-dir", str(run), *tail]
    seconds = before + child(cmd, jobs)
    (run / "study_time.json").write_text(json.dumps({"seconds": seconds}) + "\n")
    return f"{note} in {seconds:.0f} s"


def random_run(study: Study, rs: dict[str, Any], seed: int, run: Path, jobs: int,
               budget: float | None, method: str, limits: dict[str, float]) -> str:
    """One random-search baseline in its own process: cells within ``limits``, trained as
    ``method``'s config says, for ``budget`` seconds."""
    if budget is None:
        raise RunFailed(f"no budget: no search of {method} finished here and "
                        "random_search has no seconds:")
    m = study.methods[method]
    run.mkdir(parents=True, exist_ok=True)
    spec = {"config": str(m.config), "set": m.sets, "seed": seed, "budget": budget,
            "limits": limits,
            "data_dir": str(study.data_dir) if study.data_dir else None, "started": time.time(),
            "epochs": rs.get("epochs", 1), "out": str(run / "result.json"),
            "network": rs.get("network", {}), "lr": rs.get("lr")}
    child([sys.executable, "-m", "nas.experiments.random_search", json.dumps(spec)], jobs)
    res = json.loads((run / "result.json").read_text())
    return f"{res['cells']} cell(s) in {res['seconds']:.0f} s (budget {budget:.0f} s)"


def size_baselines(study: Study, costs: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    """The cells "pick the biggest" chooses without training: the largest of the table, and
    the largest within the budget (every cell tied for most parameters)."""
    def largest(cells: list[str]) -> list[str]:
        most = max(costs[a]["params"] for a in cells)
        return [a for a in cells if costs[a]["params"] == most]

    out = {"the largest cell (no training)": largest(list(costs))}
    if study.budget:
        fitting = [a for a in costs if fits(costs[a], study.budget)]
        out["the largest cell within the budget (no training)"] = largest(fitting)
    return out


def run_pool(tasks: list[tuple[str, Callable[[], str]]], jobs: int,
             say: Callable[[str], None]) -> list[str]:
    """Run the tasks, ``jobs`` at once; returns the labels of those that failed."""
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(fn): label for label, fn in tasks}
        try:
            for fut in concurrent.futures.as_completed(futures):
                try:
                    say(f"{futures[fut]}: {fut.result()}")
                except RunFailed as exc:
                    failed.append(futures[fut])
                    say(f"{futures[fut]}: FAILED, {exc}")
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)  # the running children got the Ctrl-C too
            raise
    return failed


# -- results ------------------------------------------------------------------------------------
def scored(table: NB201Table, cell: Genotype | str) -> dict[str, Any]:
    """A cell's table accuracies and rank."""
    r = table.query(cell)
    return {"arch": r.arch, "cifar10": r.accuracy["cifar10"], "cifar100": r.accuracy["cifar100"],
            "rank": r.rank, "top_percent": r.top_percent}


def run_seconds(run: Path) -> float:
    """A finished search's wall time: as the study recorded it, else as its run logged it."""
    timing = run / "study_time.json"
    return json.loads(timing.read_text())["seconds"] if timing.is_file() else logged_seconds(run)


def search_record(table: NB201Table, run: Path) -> dict[str, Any]:
    """A finished search's cell in the table, its final entropy and its wall time."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {**scored(table, Genotype.load(run / "genotype.json")), "seconds": run_seconds(run),
            "entropy": json.loads(lines[-1]).get("entropy") if lines else None}


def random_record(table: NB201Table, run: Path) -> dict[str, Any]:
    """The random-search pick, scored in the table only now, after the pick."""
    res = json.loads((run / "result.json").read_text())
    return {**scored(table, res["arch"]), "seconds": res["seconds"], "entropy": None,
            "cells": res["cells"], "val_acc": res["val_acc"]}


def summarize(records: list[dict[str, Any]], cells: int) -> dict[str, Any]:
    """Mean (and std, min, max) of each value over a method's finished runs."""
    def mean(key: str) -> float | None:
        v = [r[key] for r in records if r[key] is not None]
        return statistics.mean(v) if v else None

    c10, c100 = [r["cifar10"] for r in records], [r["cifar100"] for r in records]
    return {"runs": len(records), "cifar10_mean": mean("cifar10"),
            "cifar10_std": statistics.stdev(c10) if len(c10) > 1 else None,
            "cifar10_min": min(c10, default=None), "cifar10_max": max(c10, default=None),
            "cifar100_mean": mean("cifar100"),
            "cifar100_std": statistics.stdev(c100) if len(c100) > 1 else None,
            "rank_mean": mean("rank"), "top_percent_mean": mean("top_percent"),
            "entropy_mean": mean("entropy"), "seconds_mean": mean("seconds")}


def markdown(study: Study, out: dict[str, Any]) -> str:
    """The study as a Markdown table and a list of runs."""
    def f(v: float | None, fmt: str = ".2f", std: float | None = None) -> str:
        return "—" if v is None else format(v, fmt) + ("" if std is None else f" ± {std:.2f}")

    def row(name: str, s: dict[str, Any]) -> str:
        rank = s["rank_mean"] and f"{s['rank_mean']:,.0f} (top {s['top_percent_mean']:.1f}%)"
        cols = [name, s["runs"], f(s["cifar10_mean"], std=s["cifar10_std"]), f(s["cifar10_min"]),
                f(s["cifar10_max"]), f(s["cifar100_mean"], std=s["cifar100_std"]), rank or "—",
                f(s["entropy_mean"], ".3f"), f(s["seconds_mean"], ".0f")]
        return "| " + " | ".join(map(str, cols)) + " |"

    t10, t100 = out["table"]["cifar10"], out["table"]["cifar100"]
    lines = [f"# Study {study.path.name}", "",
             f"{out['date']}, commit {out['commit'] or 'unknown'}, study file {study.path}, "
             f"machine {out['machine']}", "",
             "| method | runs | CIFAR-10 mean ± std | min | max | CIFAR-100 mean ± std | "
             "mean rank | final entropy | s / run |", "|---|---:|---|---:|---:|---|---|---:|---:|"]
    lines += [row(name, s) for name, s in out["summary"].items()]
    lines.append(f"| random cell (the whole table) | {len(study.table):,} cells | mean "
                 f"{t10['mean']:.2f}, median {t10['median']:.2f} | — | {t10['best']:.2f} | mean "
                 f"{t100['mean']:.2f}, median {t100['median']:.2f} | — | — | — |")
    if out["within_budget"]:
        w = out["within_budget"]
        lines.append(f"| random cell within the budget | {w['cells']:,} cells | mean {w['mean']:.2f}, "
                     f"median {w['median']:.2f} | — | {w['best']:.2f} | — | — | — | — |")
    if out.get("size_matched"):
        w = out["size_matched"]
        lines.append(f"| random cell within the budget, size-matched as search.budget.spend keeps "
                     f"them (no training) | {w['cells']:,} cells | mean {w['mean']:.2f}, median "
                     f"{w['median']:.2f} | — | {w['best']:.2f} | — | — | — | — |")
    for name, b in out["baselines"].items():
        lines.append(row(name, {**b, "runs": f"{b['runs']:,} cell(s) tied"}))
    for rs in study.random_search:
        within = " within the budget" if study.budget else ""
        how = ", ".join([f"{rs.get('epochs', 1)} epoch(s) per cell"] +
                        [f"{k}={v}" for k, v in (rs.get("network") or {}).items()] +
                        ([f"lr {rs['lr']}"] if rs.get("lr") else []))
        label = "random search" if rs["name"] == "random_search" else f"`{rs['name']}`: random search"
        lines.append(row(f"{label}{within}, same wall time ({how})",
                         out["random_search_summary"][rs["name"]]))
    for name, c10, c100 in PUBLISHED if study.published else ():
        lines.append(f"| {name} (published, full CIFAR, not this proxy) | — | {c10:.2f} | — | "
                     f"— | {c100:.2f} | — | — | — |")
    if study.budget:
        bounds = ", ".join(f"{m} <= {v:,.0f}" for m, v in study.budget.items())
        lines += ["", f"Budget of {study.rows[0]} (and of the baselines and random search within "
                  f"it): {bounds}, for the network its config's network: options build."]
    if out.get("sweep"):
        sw = out["sweep"]
        rs_name = sw.get("random_search")
        matched = any(r.get("size_matched_fitting") is not None for r in sw["summary"].values())
        lines += ["", f"## Budget sweep: {sw['method']} under search.budget.{sw['metric']}, seeds "
                  f"{', '.join(map(str, sw['seeds']))}", "",
                  "| budget | runs | CIFAR-10 mean ± std | min | max | over budget | best cell "
                  "that fits | top 5% of the cells that fit | largest cell that fits (mean) | "
                  "random cell that fits (mean) |" +
                  (" size-matched random cell that fits (mean, no training) |" if matched else "") +
                  (f" `{rs_name}` at the budget, same wall time (runs: mean ± std) |"
                   if rs_name else ""),
                  "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if matched else "")
                  + ("---|" if rs_name else "")]
        for limit, r in sw["summary"].items():
            rs_cell = (f" {r['random_search_runs']}: "
                       f"{f(r['random_search_mean'], std=r['random_search_std'])} |"
                       if rs_name else "")
            matched_cell = (f" {f(r.get('size_matched_fitting'))} ({r['size_matched_cells']:,} "
                            f"cells) |" if matched else "")
            lines.append(f"| {float(limit):,.0f} | {r['runs']} | "
                         f"{f(r['cifar10_mean'], std=r['cifar10_std'])} | {f(r['cifar10_min'])} | "
                         f"{f(r['cifar10_max'])} | {r['over_budget']} | {r['best_fitting']:.2f} | "
                         f"{f(r.get('top5_fitting'))} | {r['largest_fitting']:.2f} | "
                         f"{r['random_fitting']:.2f} |" + matched_cell + rs_cell)
        lines += ["", "![budget sweep](pareto.png)"]
    lines += ["", "Runs (the CIFAR-10 accuracy of each derived cell in the table):", ""]
    for r in out["runs"] + out["random_search"]:
        how = f" (best of {r['cells']} cells, validation {r['val_acc']:.2f}%)" if "cells" in r \
            else ""
        lines.append(f"- {r['method']}, seed {r['seed']}: `{r['arch']}` {r['cifar10']:.2f}{how}")
    for r in (out.get("sweep") or {}).get("runs", []):
        lines.append(f"- sweep, {out['sweep']['metric']} <= {r['budget']:,.0f}, seed {r['seed']}: "
                     f"`{r['arch']}` {r['cifar10']:.2f} ({r[out['sweep']['metric']]:,.0f})")
    for r in (out.get("sweep") or {}).get("random_search_runs", []):
        lines.append(f"- sweep, {r['method']}, {out['sweep']['metric']} <= {r['budget']:,.0f}, "
                     f"seed {r['seed']}: `{r['arch']}` {r['cifar10']:.2f} (best of {r['cells']} "
                     f"cells, validation {r['val_acc']:.2f}%)")
    return "\n".join(lines) + "\n"


def run_study(study: Study, out: Path, jobs: int) -> int:
    """Run what is missing, then write study.json and study.md; 1 if a run failed."""
    sweep, rows = study.sweep, study.rows
    runs = [(name, seed, out / "runs" / name / f"seed_{seed}") for name in rows
            for seed in study.seeds]
    swept = [(limit, seed, out / "runs" / "sweep" / f"{sweep['metric']}_{limit:g}" / f"seed_{seed}")
             for limit in sweep["budgets"] for seed in sweep["seeds"]] if sweep else []
    randoms = [(rs, seed, out / "runs" / rs["name"] / f"seed_{seed}")
               for rs in study.random_search for seed in study.seeds
               if seed in rs.get("seeds", study.seeds)]
    swept_randoms = sweep_randoms(study, swept)
    bar = tqdm(total=len(runs) + len(swept) + len(randoms) + len(swept_randoms), unit="run",
               disable=not sys.stderr.isatty())

    def say(message: str) -> None:
        if bar.disable:
            print(message, flush=True)
        else:
            bar.write(message)
        bar.update(1)

    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    for name, seed, run in runs:
        if (run / "genotype.json").is_file():
            say(f"{name} seed {seed}: skip (finished)")
        else:
            tasks.append((f"{name} seed {seed}",
                          lambda n=name, s=seed, r=run: search_run(study, n, s, r, jobs)))
    for limit, seed, run in swept:
        label = f"{sweep['method']} {sweep['metric']} <= {limit:g} seed {seed}"
        if (run / "genotype.json").is_file():
            say(f"{label}: skip (finished)")
        else:
            tasks.append((label, lambda b=limit, s=seed, r=run: search_run(
                study, sweep["method"], s, r, jobs, [f"search.budget.{sweep['metric']}={b:g}"])))
    failed = run_pool(tasks, jobs, say)
    records = [{"method": name, "seed": seed, "run_dir": str(run),
                **search_record(study.table, run)}
               for name, seed, run in runs if (run / "genotype.json").is_file()]
    times = [r["seconds"] for r in records if r["method"] == rows[0]]
    tasks = []
    for rs, seed, run in randoms:
        budget = statistics.mean(times) if times else rs.get("seconds")
        if (run / "result.json").is_file():
            say(f"{rs['name']} seed {seed}: skip (finished)")
        else:
            tasks.append((f"{rs['name']} seed {seed}", lambda x=rs, s=seed, r=run, b=budget:
                          random_run(study, x, s, r, jobs, b, rows[0], study.budget)))
    for limit, rs, seed, run in swept_randoms:
        label = f"{rs['name']} {sweep['metric']} <= {limit:g} seed {seed}"
        times = [run_seconds(r) for b, _, r in swept
                 if b == limit and (r / "genotype.json").is_file()]
        if (run / "result.json").is_file():
            say(f"{label}: skip (finished)")
        else:
            tasks.append((label, lambda x=rs, s=seed, r=run, b=limit, t=times: random_run(
                study, x, s, r, jobs, statistics.mean(t) if t else x.get("seconds"),
                sweep["method"], {**sweep["bounds"], sweep["metric"]: b})))
    failed += run_pool(tasks, jobs, say)
    bar.close()
    rs = [{"method": x["name"], "seed": seed, "run_dir": str(run),
           **random_record(study.table, run)}
          for x, seed, run in randoms if (run / "result.json").is_file()]
    rs_swept = [{"method": x["name"], "budget": limit, "seed": seed, "run_dir": str(run),
                 **random_record(study.table, run)}
                for limit, x, seed, run in swept_randoms if (run / "result.json").is_file()]
    return write_study(study, out, jobs, records, rs, swept, failed, rs_swept)


def sweep_randoms(study: Study, swept: list[tuple[float, int, Path]]
                  ) -> list[tuple[float, dict[str, Any], int, Path]]:
    """The sweep's random-search runs: (budget, baseline, seed, run directory) for every
    budget and every sweep seed the baseline runs on."""
    name = study.sweep and study.sweep.get("random_search")
    if not name:
        return []
    (rs,) = [x for x in study.random_search if x["name"] == name]
    return [(limit, rs, seed, run.parent / f"{name}_seed_{seed}") for limit, seed, run in swept
            if seed in rs.get("seeds", study.seeds)]


def write_study(study: Study, out: Path, jobs: int, records: list[dict[str, Any]],
                rs: list[dict[str, Any]], swept: list[tuple[float, int, Path]],
                failed: list[str], rs_swept: Sequence[dict[str, Any]] = ()) -> int:
    """Score the finished runs beside the baselines; write and print study.json and study.md."""
    sweep, rows = study.sweep, study.rows
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True)
    cells = len(study.table)
    first = study.methods[rows[0]]
    first_cfg = load_config(first.config, first.sets)
    costs = table_costs(first_cfg)
    baselines = {name: [{**scored(study.table, a), "seconds": None, "entropy": None} for a in archs]
                 for name, archs in size_baselines(study, costs).items()}
    within = [scored(study.table, a) for a in costs if fits(costs[a], study.budget)] \
        if study.budget else []
    floor = spend_floor(first_cfg, study.budget, costs)
    matched = [c for c in within if size_matched(parse_genotype(c["arch"]), costs, floor)] \
        if floor else []
    swept_cfg = load_config(study.methods[sweep["method"]].config,
                            study.methods[sweep["method"]].sets) if sweep else None
    sweep_runs = [{"budget": limit, "seed": seed, "run_dir": str(run),
                   **search_record(study.table, run), **_cost_of(costs, run)}
                  for limit, seed, run in swept if (run / "genotype.json").is_file()]
    result = {
        "study": str(study.path), "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": git.stdout.strip() if git.returncode == 0 else None,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "benchmark": str(study.benchmark), "seeds": study.seeds, "jobs": jobs,
        "summary": {name: summarize([r for r in records if r["method"] == name], cells)
                    for name in rows},
        "random_search_summary": {x["name"]: summarize([r for r in rs if r["method"] == x["name"]],
                                                       cells) for x in study.random_search},
        "table": {d: study.table.stats(d) for d in ("cifar10", "cifar100")},
        "published": [dict(method=n, cifar10=a, cifar100=b) for n, a, b in PUBLISHED]
        if study.published else [],
        "runs": records, "random_search": rs, "failed": failed,
        "budget": study.budget,
        "baselines": {name: {**summarize(cells_, cells), "cells": [c["arch"] for c in cells_]}
                      for name, cells_ in baselines.items()},
        "within_budget": _spread([c["cifar10"] for c in within]) if within else None,
        "size_matched": _spread([c["cifar10"] for c in matched]) if matched else None,
        "sweep": {**sweep, "runs": sweep_runs, "random_search_runs": list(rs_swept),
                  "summary": {f"{limit:g}": sweep_row(
                      study, costs, sweep["metric"], limit,
                      [r for r in sweep_runs if r["budget"] == limit],
                      [r for r in rs_swept if r["budget"] == limit],
                      spend_floor(swept_cfg, {**sweep["bounds"], sweep["metric"]: limit}, costs))
                      for limit in sweep["budgets"]}} if sweep else None}
    if sweep:
        pareto_image(costs, study.table, sweep, sweep_runs).save(out / "pareto.png")
    (out / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(study, result)
    (out / "study.md").write_text(text)
    print(text, end="")
    if failed:
        print(f"study: {len(failed)} run(s) failed: {', '.join(sorted(failed))}", file=sys.stderr)
    return 1 if failed else 0


def _cost_of(costs: dict[str, dict[str, float]], run: Path) -> dict[str, float]:
    """A finished search's derived cell's parameters and multiply-adds."""
    return costs[canonical_arch(Genotype.load(run / "genotype.json"))]


def _spread(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    n = len(values)
    median = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return {"cells": n, "mean": statistics.mean(values), "median": median, "best": values[-1]}


def top_share(values: Sequence[float], share: float = 0.05) -> float:
    """The accuracy the best ``share`` of cells reach: the ``ceil(share * n)``-th highest."""
    ordered = sorted(values, reverse=True)
    return ordered[max(1, math.ceil(share * len(ordered) - 1e-9)) - 1]


def sweep_row(study: Study, costs: dict[str, dict[str, float]], metric: str, limit: float,
              runs: list[dict[str, Any]], randoms: Sequence[dict[str, Any]] = (),
              floor: dict[str, float] | None = None) -> dict[str, Any]:
    """One budget of a sweep: its runs against the best, the top 5%, the largest and a random
    fitting cell (and a random one of the size ``floor`` keeps, search.budget.spend's), and the
    random search at that budget (if it ran)."""
    rs = [r["cifar10"] for r in randoms]
    fitting = [a for a in costs if costs[a][metric] <= limit]
    acc = {a: study.table.query(a).accuracy["cifar10"] for a in fitting}
    most = max(costs[a]["params"] for a in fitting)
    largest = [acc[a] for a in fitting if costs[a]["params"] == most]
    matched = [acc[a] for a in fitting if size_matched(parse_genotype(a), costs, floor)] \
        if floor else []
    c10 = [r["cifar10"] for r in runs]
    return {"runs": len(runs), "cifar10_mean": statistics.mean(c10) if c10 else None,
            "cifar10_std": statistics.stdev(c10) if len(c10) > 1 else None,
            "cifar10_min": min(c10, default=None), "cifar10_max": max(c10, default=None),
            "over_budget": sum(r[metric] > limit for r in runs),
            "best_fitting": max(acc.values()), "top5_fitting": top_share(list(acc.values())),
            "largest_fitting": statistics.mean(largest),
            "random_fitting": statistics.mean(acc.values()), "fitting_cells": len(fitting),
            "size_matched_fitting": statistics.mean(matched) if matched else None,
            "size_matched_cells": len(matched),
            "random_search_runs": len(rs), "random_search_mean": statistics.mean(rs) if rs else None,
            "random_search_std": statistics.stdev(rs) if len(rs) > 1 else None}


def pareto_image(costs: dict[str, dict[str, float]], table: NB201Table, sweep: dict[str, Any],
                 runs: list[dict[str, Any]]):
    """Table accuracy against the sweep's metric: every cell, their Pareto front, the budgets and
    the cells each budget's searches derived."""
    metric, scale = sweep["metric"], 1e6
    unit = "M multiply-adds" if metric == "macs" else "M parameters"
    cells = [(costs[a][metric] / scale, table.query(a).accuracy["cifar10"]) for a in costs]
    front, best = [], -1.0
    for x, y in sorted(cells):
        if y > best:
            front.append((x, y))
            best = y
    layers = {"every cell of the table": (cells, (200, 200, 200), 1),
              **{f"derived, budget {b / scale:g}M": (
                  [(r[metric] / scale, r["cifar10"]) for r in runs if r["budget"] == b], None, 4)
                 for b in sweep["budgets"]}}
    return scatter(layers, {"Pareto front of the table": front},
                   [b / scale for b in sweep["budgets"]],
                   title=f"NAS-Bench-201 CIFAR-10 test accuracy against {unit} (network of the "
                         f"search's config): cells derived under each budget", xlabel=unit,
                   ylabel="CIFAR-10 %", ylim=(85.0, 94.5))


def study_command(args: argparse.Namespace) -> int:
    """Check the study file and the options, then run the study; InputError for bad input."""
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}")
    study = load_study(args.study, args.seeds, args.only, args.data_dir, args.benchmark)
    out = check_output(args.out or Path("runs") / Path(args.study).stem, "--out", directory=True)
    return run_study(study, out, args.jobs)


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/study.py``: the study command with ``study:`` before its lines; the exit status."""
    p = OneLineParser(prog="study", description=__doc__.split("\n\n")[0])
    add_study_arguments(p)
    args = p.parse_args(argv)
    try:
        return study_command(args)
    except InputError as exc:  # a bad study file or option, or a finished run the table cannot score
        print(f"study: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstudy: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
