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

``--interleave`` instead times, in one process and in turn, the lower limit, a gdas step and a
gdas step done as the reference code does it, on the GDAS configurations (NAS-Bench-201: C=16,
5 cells per stage; DARTS space: C=16, 6 cells); ``--reference PATH`` replaces the last by the
GDAS reference code itself (``TinyNetworkGDAS`` / ``NASNetworkGDAS``), imported at run time
from the user's AutoDL-Projects checkout at PATH (nothing of it is part of this project) and
run as written (float32, contiguous; ``--amp`` and ``--layout`` are ours). Every
row runs the same few sampled subnetworks in turn on the same batches; ratios are taken between
medians of the same run. Writes ``interleaved.json`` and ``interleaved.md``.

``--contention`` instead times the README's first command, ``nas search --config
configs/quick.yaml``, alone and beside N busy processes (``--busy``), with each thread setting
(``--settings``: ``default``, a count, or ``N:spin`` for N threads whose idle OpenMP threads spin
as libgomp's default lets them, i.e. as before ``nas`` set a wait policy); every run is a fresh
process. Besides the wall time it records the thread count each run used and the CPUs that other
processes (neither the search nor the busy ones) kept busy meanwhile. Writes
``contention.json`` and ``contention.md``.

    python scripts/benchmark.py --out bench            # everything (CPU: about 20 minutes)
    python scripts/benchmark.py --space darts --modes gdas softmax --steps 3
    python scripts/benchmark.py --reference ~/AutoDL-Projects --rounds 15
    python scripts/benchmark.py --contention --busy 0 2 --data-dir ../shared/data
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
    from nas.runtime import autocast

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


def lower_step(net, xw, yw, xa, ya, device, amp: bool):
    """The lower limit's step on ``net``, the discrete subnetwork a sample selected: a weight
    step (forward, backward, clip, SGD) plus the work an architecture step cannot avoid
    (forward, and the backward of the activations down to the stem; no weight gradients)."""
    import torch
    import torch.nn.functional as F
    from nas.runtime import autocast

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


def measure(space: str, mode: str, batch: int, steps: int, warmup: int, device_name: str,
            amp: bool, channels_last: bool, min_time: float = 0.0,
            system_malloc: bool = False, options: dict | None = None,
            image_size: int = 32) -> dict:
    """Time search steps of one mode, or of the lower limit, after ``warmup`` steps: at least
    ``steps`` of them, and more (up to 100) until ``min_time`` seconds have been measured.
    ``options``: the supernet's (and the lower limit's network's), in place of ``SPACES``."""
    import torch
    import nas
    from nas.runtime import keep_freed_memory, resolve_device
    from nas.search import arch_step, reinforce_step, weight_step

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
    supernet = nas.build_supernet(space, 10, mode if mode in MODES else "gdas", seed=0,
                                  options=opts, edge_topk=2 if mode in TOPK else 0)
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
        net = nas.get_space(space).network(genotype, 10, **opts, **extra)
        net = net.to(device, memory_format=fmt).train()
        step = lower_step(net, xw, yw, xa, ya, device, amp)
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

        if mode == "gdas-reference":  # the same two steps, done as the reference code does them
            step = reference_gdas(  # noqa: F811
                supernet, w_opt, a_opt, xw, yw, xa, ya, device, amp)
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


# The GDAS configurations that the reference code is run with; DARTS space: its N=2 is 6 cells.
GDAS_SPACES = {"darts": {"C": 16, "cells": 6}, "nasbench201": {"C": 16, "cells_per_stage": 5}}
# This project's op names -> the reference's (its DARTS space names the separable convs so).
REFERENCE_OPS = {"sep_conv_3x3": "dua_sepc_3x3", "sep_conv_5x5": "dua_sepc_5x5",
                 "dil_conv_3x3": "dil_sepc_3x3", "dil_conv_5x5": "dil_sepc_5x5"}
REFERENCE_FILE = "xautodl/models/cell_searchs/search_model_gdas.py"
PIN = 200.0  # a logit margin no Gumbel draw overturns: every forward runs the pinned subnetwork
INTERLEAVED_TARGETS = ("gdas <= 1.10x its lower limit on NAS-Bench-201, <= 1.05x on the DARTS "
                       "space; >= 1.5x faster than the reference code on a CPU, >= 2x on a GPU")


def reference_supernet(path: str, space: str, opt: dict):
    """The GDAS reference's own search network, built from the checkout at ``path``.

    Returns the network, its op names and its logits per cell kind, in this project's kinds.
    """
    import nas
    root = Path(path).expanduser()
    if not (root / REFERENCE_FILE).is_file():
        raise nas.InputError(f"--reference {path}: no {REFERENCE_FILE} there; give the root of "
                             "an AutoDL-Projects checkout (github.com/D-X-Y/AutoDL-Projects)")
    sys.path.insert(0, str(root))
    from xautodl.models.cell_operations import SearchSpaceNames
    from xautodl.models.cell_searchs import NASNetworkGDAS, TinyNetworkGDAS
    if space == "nasbench201":  # affine=False, track_running_stats=False: GDAS's NB201 setting
        ops = SearchSpaceNames["nas-bench-201"]
        net = TinyNetworkGDAS(opt["C"], opt["cells_per_stage"], 4, 10, ops, False, False)
        return net, ops, {"cell": net.arch_parameters}
    ops = SearchSpaceNames["darts"]
    net = NASNetworkGDAS(opt["C"], opt["cells"] // 3, 4, 4, 3, 10, ops, False, True)
    return net, ops, {"normal": net.arch_normal_parameters, "reduce": net.arch_reduce_parameters}


def pin(logits, op_names, index, names=None) -> None:
    """Set every edge's logits so that op ``op_names[index[kind][e]]`` is sampled; ``names``:
    the network's own op order and names, where they differ from this project's (the reference)."""
    import torch
    with torch.no_grad():
        for kind, p in logits.items():
            cols = [names.index(REFERENCE_OPS.get(op_names[i], op_names[i])) if names else i
                    for i in index[kind]]
            p.zero_()
            p[torch.arange(len(cols)), torch.tensor(cols)] = PIN


def interleaved(space: str, reference: str | None, batch: int, rounds: int, samples: int,
                device_name: str, amp: bool, channels_last: bool, system_malloc: bool = False,
                options: dict | None = None) -> dict:
    """Time the lower limit, gdas, and the reference (``reference`` checkout, or done as it
    does) in turn in one process: per round, each row runs each of ``samples`` subnetworks.
    ``options``: the supernet's, in place of the GDAS configuration (tests)."""
    import torch
    import torch.nn.functional as F
    import nas
    from nas.runtime import keep_freed_memory, resolve_device
    from nas.search import arch_step, weight_step

    device = resolve_device(device_name)
    if device.type == "cpu" and not system_malloc:
        keep_freed_memory()  # as nas search does
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    xw, xa = (torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
              for _ in range(2))
    yw, ya = (torch.randint(0, 10, (batch,), device=device) for _ in range(2))
    opts = options or GDAS_SPACES[space]

    def supernet():
        model = nas.build_supernet(space, 10, "gdas", seed=0, options=opts)
        return model.to(device, memory_format=fmt).train()

    def optimizers(weights, arch):
        return (torch.optim.SGD(weights, 0.025, momentum=0.9, nesterov=True, weight_decay=5e-4),
                torch.optim.Adam(arch, 3e-4, betas=(0.5, 0.999), weight_decay=1e-3))

    ours = supernet()
    ops = ours.op_names
    one = next(iter(ops.values()))  # every cell kind has the same ops
    gen = torch.Generator().manual_seed(1)
    subnets = [{k: torch.randint(0, len(o), (ours.arch_logits[k].shape[0],), generator=gen).tolist()
                for k, o in ops.items()} for _ in range(samples)]
    w_opt, a_opt = optimizers(ours.weight_parameters(), ours.arch_parameters())
    names = {"lower": "lower limit (sampled subnetwork)", "gdas": "gdas"}

    def gdas_step(model, w_opt, a_opt):
        def step():
            weight_step(model, w_opt, xw, yw, 5.0, amp)
            arch_step(model, a_opt, xa, ya, amp)
        return step

    steps = {"gdas": [], "lower": []}
    for index in subnets:
        steps["gdas"].append((lambda index=index: pin(ours.arch_logits, one, index),
                              gdas_step(ours, w_opt, a_opt)))
        genotype = sampled_genotype(ours, {k: nas.ArchSample(None, v) for k, v in index.items()})
        extra = ({"auxiliary": False, "affine": False, "pool_bn": True} if space == "darts"
                 else {"affine": False, "track_running_stats": False})
        net = nas.get_space(space).network(genotype, 10, **opts, **extra)
        net = net.to(device, memory_format=fmt).train()
        steps["lower"].append((lambda: None, lower_step(net, xw, yw, xa, ya, device, amp)))

    if reference:
        # The reference runs as its code is written: float32, contiguous (--amp and
        # --layout are this project's settings).
        ref, ref_ops, ref_logits = reference_supernet(reference, space, opts)
        ref = ref.to(device).train()
        rxw, rxa = xw.contiguous(), xa.contiguous()
        rw_opt, ra_opt = optimizers(ref.get_weights(), ref.get_alphas())
        names["reference"] = "GDAS reference code (AutoDL-Projects), as written (float32, contiguous)"

        def ref_step():  # the reference's search step (exps/NAS-Bench-201-algos/GDAS.py), no meters
            rw_opt.zero_grad()
            F.cross_entropy(ref(rxw)[1], yw).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 5)
            rw_opt.step()
            ra_opt.zero_grad()
            F.cross_entropy(ref(rxa)[1], ya).backward()
            ra_opt.step()
        steps["reference"] = [(lambda index=index: pin(ref_logits, one, index, ref_ops), ref_step)
                              for index in subnets]
    else:
        emulated = supernet()
        e_w, e_a = optimizers(emulated.weight_parameters(), emulated.arch_parameters())
        names["reference"] = "gdas, done as the reference code does"
        step = reference_gdas(emulated, e_w, e_a, xw, yw, xa, ya, device, amp)
        steps["reference"] = [(lambda index=index: pin(emulated.arch_logits, one, index), step)
                              for index in subnets]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {row: [] for row in steps}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    for r in tqdm(range(rounds + 1), desc=f"{space} rounds", unit="round"):
        total = dict.fromkeys(steps, 0.0)
        for k in range(samples):
            for row, pairs in steps.items():
                prepare, step = pairs[k]
                prepare()
                sync()
                start = time.perf_counter()
                step()
                sync()
                total[row] += time.perf_counter() - start
        if r:  # round 0 warms up
            for row in steps:
                times[row].append(total[row] / samples)
    med = {row: statistics.median(v) for row, v in times.items()}
    ratio = lambda a, b: [x / y for x, y in zip(times[a], times[b])]  # noqa: E731
    def quart(v):
        return statistics.quantiles(v, n=4, method="inclusive")[::2] if len(v) > 1 else v * 2
    return {"space": space, "options": opts, "batch": batch, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"cpu, {torch.get_num_threads()} threads", "rounds": rounds, "samples": samples,
            "names": names, "median_s": med, "times_s": times,
            "layout": "channels-last" if channels_last else "contiguous",
            "gdas_vs_lower": med["gdas"] / med["lower"],
            "reference_vs_gdas": med["reference"] / med["gdas"],
            "gdas_vs_lower_quartiles": quart(ratio("gdas", "lower")),
            "reference_vs_gdas_quartiles": quart(ratio("reference", "gdas")),
            "user_reference": bool(reference)}


def interleaved_table(results: list[dict]) -> str:
    """The Markdown table of ``interleaved`` runs."""
    r0 = results[0]
    lines = [f"Device: {r0['device_name']}; this project's networks in {r0['layout']} memory "
             f"format; batch {r0['batch']}, 32x32; every row runs the same "
             f"{r0['samples']} random subnetworks per round, in turn, in one process; step time: "
             f"the median over {r0['rounds']} rounds of the mean step of the round; ratios: "
             "of medians (in brackets: the quartiles of the per-round ratios).", "",
             "| space | lower limit (s) | gdas (s) | reference (s) | gdas vs lower limit | "
             "gdas faster than the reference |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        m, q1, q2 = r["median_s"], r["gdas_vs_lower_quartiles"], r["reference_vs_gdas_quartiles"]
        lines.append(f"| {r['space']} ({', '.join(f'{k}={v}' for k, v in r['options'].items())}) | "
                     f"{m['lower']:.3f} | {m['gdas']:.3f} | {m['reference']:.3f} | "
                     f"{r['gdas_vs_lower']:.2f}x ({q1[0]:.2f}-{q1[1]:.2f}) | "
                     f"{r['reference_vs_gdas']:.2f}x ({q2[0]:.2f}-{q2[1]:.2f}) |")
    lines += ["", f"reference: {r0['names']['reference']}. Targets: {INTERLEAVED_TARGETS}."]
    return "\n".join(lines) + "\n"


# -- threads under contention -------------------------------------------------------------------
CONTENTION_TARGET = "beside 2 busy processes on 2 cores, default <= 1.5x the best setting's time"
BUSY_LOOP = "while True: pass"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc."""
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def contention_run(setting: str, busy_pids: list[int], config: str, data_dir: str,
                   overrides: list[str], timeout: float) -> dict:
    """Time one ``nas search`` in a fresh process with one thread setting; see ``--contention``."""
    import os
    import re
    import resource
    import tempfile
    from nas import threads as nthreads

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
    import os
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


def main(argv: list[str] | None = None) -> int:
    from nas.errors import InputError, OneLineParser
    from nas.runtime import check_output
    parser = OneLineParser(description=__doc__.split("\n")[0])
    parser.add_argument("--space", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--modes", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="fewest measured steps per row")
    parser.add_argument("--min-time", type=float, default=30.0,
                        help="measure more steps (up to 100) until this many seconds")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--layout", choices=("auto", "channels-last", "contiguous"), default="auto",
                        help="memory format of this project's networks and inputs (auto: as nas "
                             "search does, channels-last on a CPU)")
    parser.add_argument("--out", default="bench", help="directory for benchmark.json/.md")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads (torch.set_num_threads; 0: torch's default)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's allocator as it is (CPU; nas search keeps freed "
                             "memory)")
    parser.add_argument("--interleave", action="store_true",
                        help="lower limit, gdas and the reference in turn in one process")
    parser.add_argument("--reference", metavar="PATH",
                        help="an AutoDL-Projects checkout: compare with its GDAS code "
                             "(implies --interleave)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="measured rounds (--interleave: 10, --contention: 1)")
    parser.add_argument("--samples", type=int, default=3,
                        help="--interleave: subnetworks per round, the same for every row")
    parser.add_argument("--contention", action="store_true",
                        help="time the quick search alone and beside busy processes, per thread "
                             "setting")
    parser.add_argument("--busy", nargs="+", type=int, default=[0, 2],
                        help="--contention: numbers of busy processes beside the search")
    parser.add_argument("--settings", nargs="+", default=["default", "1", "2", "2:spin"],
                        help="--contention: default, a thread count N, or N:spin")
    parser.add_argument("--config", default="configs/quick.yaml", help="--contention: the search")
    parser.add_argument("--data-dir", default="data", help="--contention: the data directory")
    parser.add_argument("--set", nargs="+", default=["search.steps_per_epoch=10"],
                        metavar="KEY=VALUE", help="--contention: overrides of the search")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="--contention: stop a run after this many seconds")
    parser.add_argument("--one", nargs=2, metavar=("SPACE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        check_output(args.out, "--out", directory=True)  # before the measurements, not after
    except InputError as exc:
        parser.error(str(exc))
    if args.contention:
        bad = [s for s in args.settings if s != "default" and not (
            s.partition(":")[0].isdigit() and s.partition(":")[2] in ("", "spin"))]
        if bad or any(b < 0 for b in args.busy):
            print(f"benchmark.py: error: --settings takes default, N or N:spin and --busy counts "
                  f">= 0, got {' '.join(bad) or args.busy}", file=sys.stderr)
            return 2
        found = contention(args.busy, args.settings, args.config, args.data_dir, args.set,
                           args.timeout, args.rounds or 1)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "contention.json").write_text(json.dumps(found, indent=2) + "\n")
        command = f"nas search --config {args.config} --set {' '.join(args.set)}"
        text = contention_table(found, command)
        (out_dir / "contention.md").write_text(text)
        print(text)
        return 0
    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)
    import nas
    from nas.runtime import channels_last, resolve_device
    layout = {"auto": "auto", "channels-last": True, "contiguous": False}[args.layout]
    try:
        cl = channels_last(layout, resolve_device(args.device))
    except nas.InputError as exc:
        print(f"benchmark.py: error: {exc}", file=sys.stderr)
        return 2
    if args.reference and not (Path(args.reference).expanduser() / REFERENCE_FILE).is_file():
        print(f"benchmark.py: error: --reference {args.reference}: no {REFERENCE_FILE} there; "
              "give the root of an AutoDL-Projects checkout", file=sys.stderr)
        return 2

    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.batch, args.steps, args.warmup,
                                 args.device, args.amp, cl, args.min_time,
                                 args.system_malloc)))
        return 0
    if args.interleave or args.reference:
        found = [interleaved(space, args.reference, args.batch, args.rounds or 10, args.samples,
                             args.device, args.amp, cl, args.system_malloc)
                 for space in args.space]
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "interleaved.json").write_text(json.dumps(found, indent=2) + "\n")
        text = interleaved_table(found)
        (out_dir / "interleaved.md").write_text(text)
        print(text)
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
               "--min-time", str(args.min_time), "--threads", str(args.threads)]
        cmd += ["--system-malloc"] * args.system_malloc
        cmd += ["--amp"] * args.amp + ["--layout", args.layout]
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
