"""What a search step costs, per sampling mode, against the sampled subnetwork's own cost.

For the DARTS space (C=16, 8 cells) and NAS-Bench-201 (C=16, 5 cells per stage), batch 64,
32x32 images, ``measure`` times one row:
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
``measure_rows`` runs each row in a fresh process (``python -m nas.experiments.step_cost
ROW_JSON``) and ``table`` writes them as Markdown; ``scripts/benchmark.py`` is the command.
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..genotype import Genotype, edge_inputs, num_nodes
from ..runtime import autocast, keep_freed_memory, resolve_device
from ..search import arch_step, reinforce_step, weight_step
from ..spaces import build_supernet, get_space
from ..supernet import SearchCell, Supernet

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
    cells, concat = {}, {}
    for kind, s in sample.items():
        ops = model.op_names[kind]
        n = num_nodes(len(s.index), model.cell_inputs)
        edges = edge_inputs(model.cell_inputs, n)
        nodes = [[] for _ in range(n)]
        for (node, src), i in zip(edges, s.index):
            nodes[node].append((ops[i], src))
        cells[kind] = nodes
        if model.cell_inputs > 1:
            concat[kind] = list(range(model.cell_inputs, model.cell_inputs + n))
    return Genotype(cells, concat, space="")


def reference_gdas(supernet, w_opt, a_opt, xw, yw, xa, ya, device, amp):
    """A GDAS step done the way the reference code does it, for comparison ("before").

    Each edge reads its sampled index with ``.item()`` (a host sync per edge) and returns
    ``w_k * op_k(x) + sum of the other hard weights``; each step calls ``loss.backward()``, so
    the weight step also computes the logits' gradients and the architecture step the weights'.
    """
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
        if isinstance(cell, SearchCell):
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


def lower_step(net, xw, yw, xa, ya, device, amp: bool):
    """The lower limit's step on ``net``, the discrete subnetwork a sample selected: a weight
    step (forward, backward, clip, SGD) plus the work an architecture step cannot avoid
    (forward, and the backward of the activations down to the stem; no weight gradients)."""
    opt = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9, nesterov=True, weight_decay=5e-4)
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
    return step


def lower_net(space: str, supernet: Supernet, options: dict, device: torch.device,
              fmt: torch.memory_format) -> torch.nn.Module:
    """The discrete subnetwork of ``supernet``'s next sample, without affine or running
    statistics (as the supernet's edges), on ``device``."""
    supernet.train()
    genotype = sampled_genotype(supernet, supernet.sample())
    return subnet(space, genotype, options, device, fmt)


def subnet(space: str, genotype: Genotype, options: dict, device: torch.device,
           fmt: torch.memory_format) -> torch.nn.Module:
    """``genotype``'s network as the supernet runs it: no affine, batch statistics only."""
    extra = ({"auxiliary": False, "affine": False, "pool_bn": True} if space == "darts"
             else {"affine": False, "track_running_stats": False})
    net = get_space(space).network(genotype, 10, **options, **extra)
    return net.to(device, memory_format=fmt).train()


def optimizers(weights: Any, arch: Any) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The search's optimizers at the paper's settings: SGD for the weights, Adam for the logits."""
    return (torch.optim.SGD(weights, 0.025, momentum=0.9, nesterov=True, weight_decay=5e-4),
            torch.optim.Adam(arch, 3e-4, betas=(0.5, 0.999), weight_decay=1e-3))


def search_step(supernet: Supernet, mode: str, batches: tuple, device: torch.device,
                amp: bool) -> Callable[[], None]:
    """One search step of ``mode`` (a sampling mode, ``gdas+ESTIMATOR`` or ``gdas-reference``)."""
    xw, yw, xa, ya = batches
    w_opt, a_opt = optimizers(supernet.weight_parameters(), supernet.arch_parameters())
    supernet.train()
    estimator = mode.partition("+")[2]
    if estimator in ("gumbel_rao", "reinmax"):
        supernet.estimator, supernet.rao_samples = estimator, 4
    if mode == "gdas-reference":  # the same two steps, done as the reference code does them
        return reference_gdas(supernet, w_opt, a_opt, xw, yw, xa, ya, device, amp)

    def step():
        weight_step(supernet, w_opt, xw, yw, 5.0, amp)
        if estimator == "reinforce":
            reinforce_step(supernet, a_opt, xa, ya, 4, amp)
        else:
            arch_step(supernet, a_opt, xa, ya, amp)
    return step


def timed(step: Callable[[], None], device: torch.device, steps: int, warmup: int,
          min_time: float) -> list[float]:
    """Seconds of each measured step after ``warmup``: at least ``steps``, and more (up to 100)
    until ``min_time`` seconds have been measured."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    times: list[float] = []
    while len(times) < steps or (sum(times) < min_time and len(times) < 100):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def measure(space: str, mode: str, batch: int, steps: int, warmup: int, device_name: str,
            amp: bool, channels_last: bool, min_time: float = 0.0,
            system_malloc: bool = False, options: dict | None = None,
            image_size: int = 32) -> dict:
    """Time search steps of one mode, or of the lower limit, after ``warmup`` steps: at least
    ``steps`` of them, and more (up to 100) until ``min_time`` seconds have been measured.
    ``options``: the supernet's (and the lower limit's network's), in place of ``SPACES``."""
    device = resolve_device(device_name)
    if device.type == "cpu" and not system_malloc:
        keep_freed_memory()  # as nas search does
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    opts = options or SPACES[space]
    xw = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    xa = torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
    yw = torch.randint(0, 10, (batch,), device=device)
    ya = torch.randint(0, 10, (batch,), device=device)
    supernet = build_supernet(space, 10, mode if mode in MODES else "gdas", seed=0,
                                  options=opts, edge_topk=2 if mode in TOPK else 0)
    supernet = supernet.to(device, memory_format=fmt)
    supernet.tau = 1.0
    # Every forward draws the same sample (the sample stream restarts at 0), so each mode and
    # the lower limit run the same subnetwork; otherwise the median would mix random ones.
    supernet.register_forward_pre_hook(lambda module, args: setattr(module, "samples_drawn", 0))

    if mode == "lower":
        net = lower_net(space, supernet, opts, device, fmt)
        step = lower_step(net, xw, yw, xa, ya, device, amp)
        params = sum(p.numel() for p in net.parameters())
    else:
        step = search_step(supernet, mode, (xw, yw, xa, ya), device, amp)
        params = sum(p.numel() for p in supernet.weight_parameters())
    base_rss = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = timed(step, device, steps, warmup, min_time)
    median = statistics.median(times)
    result = {"space": space, "mode": mode, "batch": batch, "device": str(device),
              "median_s": median, "min_s": min(times), "steps": len(times),
              "images_per_s": 2 * batch / median, "params": params,
              "layout": "channels-last" if channels_last else "contiguous"}
    if device.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        result["device_name"] = torch.cuda.get_device_name(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_mb"] = peak
        result["growth_mb"] = peak - base_rss
        result["threads"] = torch.get_num_threads()
    return result


def measure_rows(spaces: list[str], modes: list[str], row: dict[str, Any]) -> list[dict]:
    """Every (space, mode) row, each measured in a fresh process with ``measure``'s other
    arguments ``row`` (and ``threads``: torch's CPU threads, 0 for its default)."""
    results = []
    jobs = [(s, m) for s in spaces for m in modes if m not in TOPK or s == "darts"]
    for space, mode in tqdm(jobs, desc="benchmark", unit="row"):
        cmd = [sys.executable, "-m", "nas.experiments.step_cost",
               json.dumps({**row, "space": space, "mode": mode})]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def table(results: list[dict]) -> str:
    """The Markdown table of one run."""
    device = results[0].get("device_name") or results[0]["device"]
    layout = f"; {results[0]['layout']} memory format" if "layout" in results[0] else ""
    lines = [f"Device: {device}" + (f", {results[0]['threads']} threads" if "threads" in results[0] else "")
             + f"{layout}; batch {results[0]['batch']}, 32x32; step time: the median over the steps "
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




if __name__ == "__main__":  # one row of measure_rows, in its own process
    spec = json.loads(sys.argv[1])
    threads = spec.pop("threads", 0)
    if threads > 0:
        torch.set_num_threads(threads)
    print(json.dumps(measure(**spec)))
