"""gdas against the GDAS reference code: the lower limit, a gdas step and the reference's step
timed in turn in one process, on the same few sampled subnetworks and the same batches.

The reference is the GDAS code itself (``TinyNetworkGDAS`` / ``NASNetworkGDAS``), imported at run
time from the user's AutoDL-Projects checkout (nothing of it is part of this project) and run as
written (float32, contiguous), or, without a checkout, a gdas step done as the reference does it
(``step_cost.reference_gdas``). ``scripts/benchmark.py --interleave`` / ``--reference PATH`` is
the command.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import InputError
from ..runtime import keep_freed_memory, resolve_device
from ..search import arch_step, weight_step
from ..spaces import build_supernet
from ..supernet import ArchSample

from .step_cost import lower_step, optimizers, reference_gdas, sampled_genotype, subnet

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
    root = Path(path).expanduser()
    if not (root / REFERENCE_FILE).is_file():
        raise InputError(f"--reference {path}: no {REFERENCE_FILE} there; give the root of "
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
    with torch.no_grad():
        for kind, p in logits.items():
            cols = [names.index(REFERENCE_OPS.get(op_names[i], op_names[i])) if names else i
                    for i in index[kind]]
            p.zero_()
            p[torch.arange(len(cols)), torch.tensor(cols)] = PIN


Steps = dict[str, list[tuple[Callable[[], None], Callable[[], None]]]]  # row -> (prepare, step)


def reference_rows(reference: str | None, space: str, opts: dict, subnets: list[dict],
                   one: list[str], batches: tuple, device: torch.device, fmt: torch.memory_format,
                   amp: bool) -> tuple[str, list]:
    """The reference row: its name and a (pin the subnetwork, step) pair per subnetwork."""
    xw, yw, xa, ya = batches
    if reference:
        # The reference runs as its code is written: float32, contiguous (--amp and
        # --layout are this project's settings).
        ref, ref_ops, ref_logits = reference_supernet(reference, space, opts)
        ref = ref.to(device).train()
        rxw, rxa = xw.contiguous(), xa.contiguous()
        rw_opt, ra_opt = optimizers(ref.get_weights(), ref.get_alphas())

        def ref_step():  # the reference's search step (exps/NAS-Bench-201-algos/GDAS.py), no meters
            rw_opt.zero_grad()
            F.cross_entropy(ref(rxw)[1], yw).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 5)
            rw_opt.step()
            ra_opt.zero_grad()
            F.cross_entropy(ref(rxa)[1], ya).backward()
            ra_opt.step()
        return ("GDAS reference code (AutoDL-Projects), as written (float32, contiguous)",
                [(lambda index=index: pin(ref_logits, one, index, ref_ops), ref_step)
                 for index in subnets])
    emulated = build_supernet(space, 10, "gdas", seed=0, options=opts)
    emulated = emulated.to(device, memory_format=fmt).train()
    e_w, e_a = optimizers(emulated.weight_parameters(), emulated.arch_parameters())
    step = reference_gdas(emulated, e_w, e_a, xw, yw, xa, ya, device, amp)
    return ("gdas, done as the reference code does",
            [(lambda index=index: pin(emulated.arch_logits, one, index), step) for index in subnets])


def rounds_of(steps: Steps, rounds: int, samples: int, device: torch.device,
              space: str) -> dict[str, list[float]]:
    """Per row, the mean step of each round after a warm-up round (rows in turn)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {row: [] for row in steps}
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
    return times


def interleaved(space: str, reference: str | None, batch: int, rounds: int, samples: int,
                device_name: str, amp: bool, channels_last: bool, system_malloc: bool = False,
                options: dict | None = None) -> dict:
    """Time the lower limit, gdas, and the reference (``reference`` checkout, or done as it
    does) in turn in one process: per round, each row runs each of ``samples`` subnetworks.
    ``options``: the supernet's, in place of the GDAS configuration (tests)."""
    device = resolve_device(device_name)
    if device.type == "cpu" and not system_malloc:
        keep_freed_memory()  # as nas search does
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    xw, xa = (torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
              for _ in range(2))
    yw, ya = (torch.randint(0, 10, (batch,), device=device) for _ in range(2))
    opts = options or GDAS_SPACES[space]
    ours = build_supernet(space, 10, "gdas", seed=0, options=opts)
    ours = ours.to(device, memory_format=fmt).train()
    ops = ours.op_names
    one = next(iter(ops.values()))  # every cell kind has the same ops
    gen = torch.Generator().manual_seed(1)
    subnets = [{k: torch.randint(0, len(o), (ours.arch_logits[k].shape[0],), generator=gen).tolist()
                for k, o in ops.items()} for _ in range(samples)]
    w_opt, a_opt = optimizers(ours.weight_parameters(), ours.arch_parameters())
    names = {"lower": "lower limit (sampled subnetwork)", "gdas": "gdas"}

    def gdas_step():
        weight_step(ours, w_opt, xw, yw, 5.0, amp)
        arch_step(ours, a_opt, xa, ya, amp)

    steps: Steps = {"gdas": [], "lower": []}
    for index in subnets:
        steps["gdas"].append((lambda index=index: pin(ours.arch_logits, one, index), gdas_step))
        genotype = sampled_genotype(ours, {k: ArchSample(None, v) for k, v in index.items()})
        net = subnet(space, genotype, opts, device, fmt)
        steps["lower"].append((lambda: None, lower_step(net, xw, yw, xa, ya, device, amp)))
    names["reference"], steps["reference"] = reference_rows(
        reference, space, opts, subnets, one, (xw, yw, xa, ya), device, fmt, amp)
    times = rounds_of(steps, rounds, samples, device, space)
    return summary(space, opts, batch, device, rounds, samples, names, times, channels_last,
                   bool(reference))


def summary(space: str, opts: dict, batch: int, device: torch.device, rounds: int, samples: int,
            names: dict[str, str], times: dict[str, list[float]], channels_last: bool,
            user_reference: bool) -> dict[str, Any]:
    """An ``interleaved`` run's record: medians, their ratios and the ratios' quartiles."""
    med = {row: statistics.median(v) for row, v in times.items()}

    def ratio(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(times[a], times[b])]

    def quart(v: list[float]) -> list[float]:
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
            "user_reference": user_reference}


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


