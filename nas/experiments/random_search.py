"""The random-search baseline of a study: random NAS-Bench-201 cells trained on the weight split
for the wall time of one search, the best kept by its validation accuracy (never by the table).
Under a budget it draws only cells within it; with ``search.budget.spend`` only those whose live
ops cost that share of the costliest cell within it, as the search keeps its cells.

A study runs it in a process of its own:

    python -m nas.experiments.random_search SPEC_JSON

where SPEC_JSON holds the config file and overrides, the seed, the time budget and where to
write the result (see ``nas.experiments.study.random_run``).
"""
from __future__ import annotations

import inspect
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..budget import fits
from ..config import Config, load_config
from ..cost import build_cost_table
from ..data import Batches, load_split, seed_of, split_indices, steps_per_epoch
from ..genotype import Genotype, parse_genotype
from ..files import atomic_write
from ..runtime import channels_last, resolve_device, seed_everything
from ..shortlist import pruned
from ..spaces import build_network, build_supernet
from ..steps import evaluate_model, fit, sgd
from search_spaces.nasbench201 import EDGES, PRIMITIVES, NB201Network, NB201Supernet, all_cells, cell


def table_costs(cfg: Config) -> dict[str, dict[str, float]]:
    """Parameters and multiply-adds of the network ``cfg`` builds, for every NAS-Bench-201 cell
    (CIFAR-10's 10 classes; at search.budget.image_size, else data.image_size)."""
    model = build_supernet(cfg.space, 10, "gdas", 0, cfg.supernet)
    size = cfg.search.budget.image_size or cfg.data.image_size
    with torch.random.fork_rng(devices=[]):
        table = build_cost_table(model, lambda g: build_network(cfg.space, g, 10, cfg.network), size,
                                 ["params", "macs"], torch.device("cpu"), cfg.space)
    return {g.to_nb201_string(): table.of(g) for g in all_cells()}


def draw_cell(gen: torch.Generator, limits: dict[str, float],
              costs: dict[str, dict[str, float]], floor: dict[str, float] | None = None) -> str:
    """A uniformly random cell (within ``limits`` when there are any; with ``floor``, of those
    whose live ops cost at least that, as the search keeps them), as an NB201 string."""
    while True:
        drawn = torch.randint(len(PRIMITIVES), (EDGES,), generator=gen).tolist()
        genotype = cell([PRIMITIVES[i] for i in drawn])
        arch = genotype.to_nb201_string()
        if limits and not fits(costs[arch], limits):
            continue
        if size_matched(genotype, costs, floor):
            return arch


def size_matched(genotype: Genotype, costs: dict[str, dict[str, float]],
                 floor: dict[str, float] | None) -> bool:
    """Whether the cell's live ops cost at least ``floor`` per metric (True without a floor)."""
    if not floor:
        return True
    live = costs[pruned(genotype, "nasbench201").to_nb201_string()]
    return all(live[m] >= f for m, f in floor.items())


def spend_floor(cfg: Config, limits: dict[str, float],
                costs: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """What the search's ``search.budget.spend`` asks of a kept cell: that share of the costliest
    cell within ``limits``, per bounded metric (None: no spend or no limits)."""
    spend = cfg.search.budget.spend
    if not spend or not limits:
        return None
    fitting = [c for c in costs.values() if fits(c, limits)]
    return {m: spend * max(c[m] for c in fitting) for m in limits}


def network_options(cfg: Config, network: dict[str, int]) -> tuple[int, int]:
    """(C, cells per stage) of the network the cells train in: the supernet's proxy, or
    ``network``'s (e.g. the few-shot phase's selection network)."""
    defaults = inspect.signature(NB201Supernet).parameters
    C = cfg.supernet.get("C", defaults["C"].default)
    per_stage = cfg.supernet.get("cells_per_stage", defaults["cells_per_stage"].default)
    return network.get("C", C), network.get("cells_per_stage", per_stage)


def train_cell(model: torch.nn.Module, batches: Batches, cfg: Config, lr: float, epochs: int,
               layout: bool) -> None:
    """SGD with the search's weight settings, cosine from ``lr`` over ``epochs``."""
    s = cfg.search
    opt = sgd(model.parameters(), lr, 0.9, s.weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=s.lr_min)
    fit(model, batches, opt, sched, epochs, s.grad_clip, layout)


def random_search_worker(spec: dict[str, Any]) -> None:
    """Train random cells on the weight split until the budget is spent; keep the best one."""
    cfg, seed, epochs = load_config(spec["config"], spec["set"]), spec["seed"], spec["epochs"]
    cfg.data.root = spec["data_dir"] or cfg.data.root
    s, device = cfg.search, resolve_device(cfg.device)
    # the search's memory format: the baseline's wall time buys as much as the search's does
    layout = channels_last(s.channels_last, device)
    fmt = torch.channels_last if layout else torch.contiguous_format
    data = load_split(cfg.data, train=True)
    w_idx, a_idx = split_indices(len(data), cfg.data.split, seed)
    steps = steps_per_epoch(len(w_idx), len(a_idx), s.batch_size, s.steps_per_epoch)
    C, per_stage = network_options(cfg, spec.get("network") or {})
    lr = spec.get("lr") or s.lr
    train_data = data.subset(w_idx)
    kw = dict(on_device=cfg.data.on_device, workers=cfg.data.workers)
    val = Batches(data.subset(a_idx), s.batch_size, train=False, device=device, **kw)
    gen, tried, deadline = torch.Generator().manual_seed(seed), [], spec["started"] + spec["budget"]
    limits = spec.get("limits") or {}
    costs = table_costs(cfg) if limits else {}  # a cost-aware baseline draws within the budget
    floor = spend_floor(cfg, limits, costs)  # and, as the search keeps cells, size-matched
    while True:
        t0 = time.time()
        arch = draw_cell(gen, limits, costs, floor)
        seed_everything(seed_of(seed, 4, len(tried)))
        model = NB201Network(parse_genotype(arch), data.num_classes, C=C,
                             cells_per_stage=per_stage).to(device, memory_format=fmt)
        batches = Batches(train_data, s.batch_size, train=True, device=device, pad=cfg.data.pad,
                          seed=seed_of(seed, 1, len(tried)), max_steps=steps, **kw)
        train_cell(model, batches, cfg, lr, epochs, layout)
        tried.append({"arch": arch, "val_acc": evaluate_model(model, val, channels_last=layout)[1],
                      "seconds": time.time() - t0})
        # stop before a cell that would not finish in time: the baseline never gets more time
        if time.time() + statistics.mean(t["seconds"] for t in tried) > deadline:
            break
    best = max(tried, key=lambda t: t["val_acc"])
    result = {"arch": best["arch"], "val_acc": best["val_acc"], "cells": len(tried),
              "seconds": time.time() - spec["started"], "budget": spec["budget"], "tried": tried}
    out = Path(spec["out"])
    atomic_write(out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    random_search_worker(json.loads(sys.argv[1]))
