#!/usr/bin/env python
"""What a search step costs, per sampling mode, against the sampled subnetwork's own cost.

For the DARTS space (C=16, 8 cells) and NAS-Bench-201 (C=16, 5 cells per stage), batch 64,
32x32 images, on the device it finds (or --device), it measures in one run:
  * the median time of a search step (the weight step plus the architecture step of
    ``nas.search``) in each mode gdas / st / gumbel / softmax;
  * the lower limit: the same two steps for the discrete subnetwork that the gdas sample
    selected (same sample, same batches): a weight step (forward, backward, clip, SGD) plus the
    work an architecture step cannot avoid (forward, and the backward of the activations down
    to the first cell; no weight gradients);
  * peak memory: CUDA ``max_memory_allocated``; on the CPU the peak resident memory of a fresh
    process per measurement (and its growth over the process's memory before the first step);
  * images per second (2 x batch images per search step);
  * for comparison, a gdas step done the way the GDAS reference code does it;
  * gdas steps with the other architecture-gradient estimators (gumbel_rao with 4 draws,
    reinmax, reinforce with 4 forward-only samples);
  * on the DARTS space, gdas with Gumbel top-2 edge sampling (``gdas+topk2``: each node runs
    2 of its inputs, as the derived cell does).
Each measurement runs in a fresh process. Writes ``benchmark.json`` and ``benchmark.md``.

    python scripts/benchmark.py --out bench            # everything (CPU: about 20 minutes)
    python scripts/benchmark.py --space darts --modes gdas softmax --steps 3
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SPACES = {"darts": {"C": 16, "cells": 8}, "nasbench201": {"C": 16, "cells_per_stage": 5}}
MODES = ("gdas", "st", "gumbel", "softmax")
ESTIMATORS = ("gdas+gumbel_rao", "gdas+reinmax", "gdas+reinforce")  # gdas mode, another estimator
TOPK = ("gdas+topk2",)  # gdas mode, 2 sampled inputs per node (DARTS-family cells only)
ROWS = ("lower", "gdas-reference", *MODES, *ESTIMATORS, *TOPK)
TARGETS = "gdas step <= 1.15 x lower limit; gdas >= 4x faster than softmax with <= 1/3 of its peak memory (DARTS space)"


def rss_mb() -> float:
    """Current resident memory of this process (MB), from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def sampled_genotype(model, sample):
    """The discrete subnetwork a single-path sample selects: every edge with its sampled op."""
    import nas
    cells, concat = {}, {}
    for kind, s in sample.items():
        ops = model.op_names[kind]
        n = nas.genotype.num_nodes(len(s.index), model.cell_inputs)
        edges = nas.edge_inputs(model.cell_inputs, n)
        nodes = [[] for _ in range(n)]
        for (node, src), i in zip(edges, s.index):
            nodes[node].append((ops[i], src))
        cells[kind] = nodes
        if model.cell_inputs > 1:
            concat[kind] = list(range(model.cell_inputs, model.cell_inputs + n))
    return nas.Genotype(cells, concat, space="")


def reference_gdas(supernet, w_opt, a_opt, xw, yw, xa, ya, device, amp):
    """A GDAS step done the way the reference code does it, for comparison ("before").

    Each edge reads its sampled index with ``.item()`` (a host sync per edge) and returns
    ``w_k * op_k(x) + sum of the other hard weights``; each step calls ``loss.backward()``, so
    the weight step also computes the logits' gradients and the architecture step the weights'.
    """
    import torch
    import torch.nn.functional as F
    import nas
    from nas.search import autocast

    def cell_forward(self, inputs, sample):
        states, e = list(inputs), 0
        for _ in range(self.num_nodes):
            outs = []
            for j, state in enumerate(states):
                weights, ops = sample.weights[e + j], self.edges[e + j].ops
                k = int(weights.argmax().item())
                outs.append(sum(weights[i] * ops[i](state) if i == k else weights[i]
                                for i in range(len(ops))))
            e += len(states)
            states.append(sum(outs))
        if self.concat:
            return torch.cat([states[i] for i in self.concat], dim=1)
        return states[-1]

    for cell in supernet.modules():
        if isinstance(cell, nas.SearchCell):
            cell.forward = cell_forward.__get__(cell)

    def step():
        with autocast(device, amp):
            loss = F.cross_entropy(supernet(xw).float(), yw)
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(supernet.weight_parameters(), 5.0)
        w_opt.step()
        with autocast(device, amp):
            loss = F.cross_entropy(supernet(xa).float(), ya)
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        a_opt.step()
    return step


def measure(space: str, mode: str, batch: int, steps: int, warmup: int, device_name: str,
            amp: bool, channels_last: bool, min_time: float = 0.0) -> dict:
    """Time search steps of one mode, or of the lower limit, after ``warmup`` steps: at least
    ``steps`` of them, and more (up to 100) until ``min_time`` seconds have been measured."""
    import torch
    import torch.nn.functional as F
    import nas
    from nas.runtime import resolve_device
    from nas.search import arch_step, autocast, reinforce_step, weight_step

    device = resolve_device(device_name)
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xw = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    xa = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    yw = torch.randint(0, 10, (batch,), device=device)
    ya = torch.randint(0, 10, (batch,), device=device)
    supernet = nas.build_supernet(space, 10, mode if mode in MODES else "gdas", seed=0,
                                  options=SPACES[space], edge_topk=2 if mode in TOPK else 0)
    supernet = supernet.to(device, memory_format=fmt)
    supernet.tau = 1.0
    # Every forward draws the same sample (the sample stream restarts at 0), so each mode and
    # the lower limit run the same subnetwork; otherwise the median would mix random ones.
    supernet.register_forward_pre_hook(lambda module, args: setattr(module, "samples_drawn", 0))

    if mode == "lower":
        supernet.train()
        genotype = sampled_genotype(supernet, supernet.sample())
        extra = ({"auxiliary": False, "affine": False, "pool_bn": True} if space == "darts"
                 else {"affine": False, "track_running_stats": False})
        net = nas.get_space(space).network(genotype, 10, **SPACES[space], **extra)
        net = net.to(device, memory_format=fmt).train()
        opt = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        captured = {}
        net.stem.register_forward_hook(lambda m, i, o: captured.__setitem__("stem", o))

        def logits_of(x):
            out = net(x)
            return out[0] if isinstance(out, tuple) else out

        def step():
            with autocast(device, amp):
                loss = F.cross_entropy(logits_of(xw).float(), yw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            with autocast(device, amp):
                loss = F.cross_entropy(logits_of(xa).float(), ya)
            torch.autograd.grad(loss, captured["stem"])  # activations only, no weight gradients
        params = sum(p.numel() for p in net.parameters())
    else:
        w_opt = torch.optim.SGD(supernet.weight_parameters(), 0.025, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
        a_opt = torch.optim.Adam(supernet.arch_parameters(), 3e-4, betas=(0.5, 0.999),
                                 weight_decay=1e-3)
        supernet.train()
        estimator = mode.partition("+")[2]
        if estimator in ("gumbel_rao", "reinmax"):
            supernet.estimator, supernet.rao_samples = estimator, 4

        def step():
            weight_step(supernet, w_opt, xw, yw, 5.0, amp)
            if estimator == "reinforce":
                reinforce_step(supernet, a_opt, xa, ya, 4, amp)
            else:
                arch_step(supernet, a_opt, xa, ya, amp)

        if mode == "gdas-reference":
            step = reference_gdas(supernet, w_opt, a_opt, xw, yw, xa, ya, device, amp)
        params = sum(p.numel() for p in supernet.weight_parameters())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    base_rss = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    times: list[float] = []
    while len(times) < steps or (sum(times) < min_time and len(times) < 100):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {"space": space, "mode": mode, "batch": batch, "device": str(device),
              "median_s": median, "min_s": min(times), "steps": len(times),
              "images_per_s": 2 * batch / median, "params": params}
    if device.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        result["device_name"] = torch.cuda.get_device_name(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_mb"] = peak
        result["growth_mb"] = peak - base_rss
        result["threads"] = torch.get_num_threads()
    return result


def table(results: list[dict]) -> str:
    """The Markdown table of one run."""
    device = results[0].get("device_name") or results[0]["device"]
    lines = [f"Device: {device}" + (f", {results[0]['threads']} threads" if "threads" in results[0] else "")
             + f"; batch {results[0]['batch']}, 32x32; step time: the median over the steps "
             "counted (at least 3, and at least 30 s of steps).", "",
             "| space | mode | step (s) | steps | vs lower limit | vs softmax | images/s | peak memory (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for space in SPACES:
        rows = {r["mode"]: r for r in results if r["space"] == space}
        if not rows:
            continue
        lower, soft = rows.get("lower"), rows.get("softmax")
        for mode in ROWS:
            r = rows.get(mode)
            if r is None:
                continue
            vs_lower = f"{r['median_s'] / lower['median_s']:.2f}x" if lower else "-"
            vs_soft = f"{soft['median_s'] / r['median_s']:.1f}x faster" if soft and mode != "softmax" else "-"
            mem = f"{r['peak_mb']:.0f}" + (f" (+{r['growth_mb']:.0f})" if "growth_mb" in r else "")
            name = {"lower": "lower limit (sampled subnetwork)",
                    "gdas-reference": "gdas, done as the reference code does"}.get(mode, mode)
            lines.append(f"| {space} | {name} | {r['median_s']:.3f} | {r['steps']} | {vs_lower} | {vs_soft} | "
                         f"{r['images_per_s']:.0f} | {mem} |")
    lines += ["", f"Targets: {TARGETS}."]
    if any("growth_mb" in r for r in results):
        lines.append("CPU memory: peak resident memory of a fresh process per row "
                     "(in brackets: its growth over the memory held before the first step).")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--modes", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="fewest measured steps per row")
    parser.add_argument("--min-time", type=float, default=30.0,
                        help="measure more steps (up to 100) until this many seconds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--out", default="bench", help="directory for benchmark.json/.md")
    parser.add_argument("--one", nargs=2, metavar=("SPACE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.batch, args.steps, args.warmup,
                                 args.device, args.amp, args.channels_last, args.min_time)))
        return 0
    results = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    jobs = [(s, m) for s in args.space for m in args.modes if m not in TOPK or s == "darts"]
    for space, mode in tqdm(jobs, desc="benchmark", unit="row"):
        cmd = [sys.executable, __file__, "--one", space, mode, "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
               "--min-time", str(args.min_time)]
        cmd += ["--amp"] * args.amp + ["--channels-last"] * args.channels_last
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (out_dir / "benchmark.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
