#!/usr/bin/env python
"""How well a latency table predicts whole networks: predicted against measured latency.

    python scripts/latency_study.py --config CONFIG [--set KEY=VALUE ...] --table FILE
        [--measure] [--runtime onnxruntime] [--networks 20] [--threads 1] [--runs 30]
        [--deployed N] [--seed S] [--out FILE.md]

``--table FILE`` is a ``nas latency-table`` file of the config (with ``--measure``: measured
here first, with ``--runtime``, ``--threads`` and the config's batch, and written there). Then
``--networks`` random architectures of the config's space (random logits, the space's own
derivation; a seed apart from the networks the table's correction was fitted on) are built with
the config's ``network:`` options and timed whole in the table's runtime (batch and threads as
the table's). The table predicts each network twice, by the per-op sum (base + ops) and with its
whole-network correction. Reported: mean and max relative error, Spearman's rank correlation,
each network's numbers; with ``--deployed N`` the first N networks are also exported as
``nas export`` writes them (the dynamo exporter, opset 18) and timed, to show that what the
table was measured on is what deployment runs. Writes a Markdown report (device, load, commit).
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from nas.config import load_config  # noqa: E402
from nas.errors import InputError  # noqa: E402
from nas.export import ONNX_OPSET, Logits  # noqa: E402
from nas.latency import (Job, check_out, cpu_model, measure, measure_table, onnx_session,  # noqa: E402
                         predict, random_genotypes, read_table, relative_errors, supernet_of,
                         time_session)
from nas.spaces import build_network  # noqa: E402

SEED_OFFSET = 1000  # the study's networks are not the ones the correction was fitted on


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties given their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's on the ranks."""
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var > 0 else 0.0


def deployed_ms(net: torch.nn.Module, size: int, batch: int, threads: int, runs: int,
                clock: str) -> float:
    """The network exported as ``nas export`` exports it (dynamo, opset 18), in onnxruntime."""
    x = torch.zeros(batch, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Logits(net).eval(), (x,), dynamo=True,
                                    opset_version=ONNX_OPSET, verbose=False)
    buffer = io.BytesIO(program.model_proto.SerializeToString())
    return time_session(onnx_session(buffer.getvalue(), threads), x.numpy(), runs, clock=clock)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summary(predicted: Sequence[float], measured: Sequence[float]) -> tuple[float, float, float]:
    """Mean and max relative error, Spearman's rho."""
    errors = relative_errors(predicted, measured)
    return statistics.fmean(errors), max(errors), spearman(predicted, measured)


def report(args, table, genotypes, rows, deployed, load, seconds, clock) -> str:
    """The Markdown report."""
    measured = [r[0] for r in rows]
    versions = ", ".join(dict.fromkeys([table.runtime_version, f"torch {torch.__version__}"]))
    how = "the network exported alone to ONNX" if table.runtime == "onnxruntime" else "eager"
    lines = [f"# Latency table against measured whole networks: {table.space}, {table.runtime}", "",
             f"{time.strftime('%Y-%m-%d', time.gmtime())}, commit {commit()}, {cpu_model()} "
             f"({platform.machine()}, {os.cpu_count()} CPUs), {versions}; load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after "
             f"(other processes shared the CPUs); {seconds / 60:.1f} minutes.", "",
             "    " + " ".join(["OMP_NUM_THREADS=1 python scripts/latency_study.py", *sys.argv[1:]]),
             "",
             f"Table: {args.table}, measured with {table.describe()}, median of {table.runs} runs; "
             f"network {table.network}, {table.image_size}x{table.image_size} images, "
             f"{table.num_classes} classes; {table.fits_note()}.", "",
             f"{len(genotypes)} random architectures (seed {args.seed + SEED_OFFSET}, not the "
             f"correction's networks), each timed whole in the table's runtime ({how}; "
             f"{'the thread CPU time' if clock == 'cpu' else 'wall clock'}"
             f", the least of 3 medians of {args.runs // 3} runs after 5 warm-up), against the "
             "table's prediction:", "",
             "| prediction | mean relative error | max relative error | Spearman |",
             "|---|---:|---:|---:|"]
    per_op = table.correction.get("per_op")
    for name, i in (("per-op sum (base + ops)", 1), ("with the line a * sum + b", 2),
                    *([("with the per-op correction", 3)] if per_op else [])):
        mean, worst, rho = summary([r[i] for r in rows], measured)
        lines.append(f"| {name} | {100 * mean:.1f}% | {100 * worst:.1f}% | {rho:.3f} |")
    lines += ["", f"Measured: {min(measured):.3f} to {max(measured):.3f} ms.", ""]
    if deployed:
        diffs = relative_errors(deployed, measured[:len(deployed)])
        lines += [f"The first {len(deployed)} networks exported as `nas export` writes them "
                  "(dynamo exporter, opset 18) and timed the same way: "
                  f"{statistics.fmean(diffs) * 100:.1f}% from the table's export on average "
                  f"(max {max(diffs) * 100:.1f}%).", ""]
    if per_op:
        scales = "; ".join(f"{g}: " + ", ".join(f"{op} {k:.2f}" for op, k in
                                                 zip(table.groups[g]["ops"], per_op["scales"][g])
                                                 if op != "none")
                           for g in per_op["scales"])
        lines += [f"The per-op correction: base {per_op['base']:.3f} ms, scales {scales}.", ""]
    lines += ["| # | architecture | measured ms | per-op sum ms | line ms | per-op corrected ms |"
              + (" deployed export ms |" if deployed else ""),
              "|---:|---|---:|---:|---:|---:|" + ("---:|" if deployed else "")]
    for i, (g, (m, raw, line, corr)) in enumerate(zip(genotypes, rows)):
        extra = f" {deployed[i]:.3f} |" if i < len(deployed) else (" |" if deployed else "")
        lines.append(f"| {i + 1} | `{g}` | {m:.3f} | {raw:.3f} | {line:.3f} | {corr:.3f} |{extra}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", nargs="+", default=[], action="extend")
    p.add_argument("--table", required=True)
    p.add_argument("--measure", action="store_true", help="measure the table first")
    p.add_argument("--runtime", default="onnxruntime", choices=("torch", "onnxruntime"))
    p.add_argument("--networks", type=int, default=20)
    p.add_argument("--table-networks", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--deployed", type=int, default=0)
    p.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="how the networks are timed (default: as the table was)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"latency_study: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    load_before, started = os.getloadavg()[0], time.time()
    if args.networks < 3:
        raise InputError(f"--networks must be at least 3, got {args.networks}")
    if args.measure:
        job = Job(cfg, args.runtime, cfg.search.budget.latency_batch, args.threads, args.runs,
                  args.table_networks, clock=args.clock or "wall")
        job.check()
        out = check_out(args.table, force=False)
        model = supernet_of(job)
        with tqdm(total=job.steps(model), desc="table", leave=False) as bar:
            table = measure_table(job, model, lambda text: bar.update(1))
        table.save(out)
        print(f"wrote {out} in {(time.time() - started) / 60:.1f} minutes; {table.fits_note()}")
    table = read_table(args.table)
    model = supernet_of(Job(cfg, table.runtime, num_classes=table.num_classes))
    genotypes = random_genotypes(model, args.networks, args.seed + SEED_OFFSET)
    raw = predict(table, args.table, cfg, genotypes, "none")
    line = predict(table, args.table, cfg, genotypes, "line")
    corrected = predict(table, args.table, cfg, genotypes, "best")
    clock = args.clock or table.clock
    rows, deployed = [], []
    x = torch.zeros(table.batch, 3, table.image_size, table.image_size)
    for i, g in enumerate(tqdm(genotypes, desc="networks", leave=False)):
        net = build_network(cfg.space, g, table.num_classes, cfg.network).eval()
        rows.append((measure(net, x, table.runtime, table.threads, args.runs, clock=clock),
                     raw[i], line[i], corrected[i]))
        if i < args.deployed and table.runtime == "onnxruntime":
            deployed.append(deployed_ms(net, table.image_size, table.batch, table.threads,
                                        args.runs, clock))
    text = report(args, table, genotypes, rows, deployed, (load_before, os.getloadavg()[0]),
                  time.time() - started, clock)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
