"""Few-shot phase: split the searched supernet on its most certain edge, search each part, pick one.

A one-shot supernet shares every op's weights across all the cells it holds, and on NAS-Bench-201
that sharing favours the op on the edge that reads the cell's input directly (a 3x3 convolution
on 0->3), whichever cells would train best alone. Few-shot NAS (Zhao et al., 2021) splits the
supernet on one edge into one copy per op of that edge. Here the split edge is the one the
search is most certain of, after the search: each copy, from the searched weights, with every
other edge's logits back at uniform and the split edge fixed to its op, is searched
``few_shot.epochs`` more (the same steps, estimator and budget as the search) and derives its
cell (with ``search.budget.spend``, the most probable of those whose live ops cost at least that
share of the costliest network that fits: ``nas.shortlist``). The copies' cells are then compared as DARTS compares its seeds' cells: each is trained
from scratch for ``few_shot.select_epochs`` on the weight split, in the ``network:`` the
search derives for (``select_network`` overrides its options, such as a smaller C), and scored
on the architecture split. The best becomes the search's genotype. ``few_shot.json`` in the run
holds each part's cell and score; a resumed run keeps the parts it finished.

The parts are independent: on a CPU they run side by side in forked processes that share the
run's threads (``few_shot.workers``). Every part starts from the same seed, so a part's cell does
not depend on which process ran it, or on the parts before it.
"""
from __future__ import annotations

import copy
import ctypes
import dataclasses
import json
import math
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from .budget import derive_within
from .config import Config
from .data import Batches, ImageSet, load_split, seed_of, split_indices
from .errors import Diverged
from .files import atomic_write
from .genotype import Genotype, edge_inputs, num_nodes
from .readback import few_shot_state
from .runtime import in_layout, seed_everything
from .shortlist import shortlist
from .spaces import build_network
from .steps import (SearchSetup, draw_step_samples, draws_together, evaluate_model, fit,
                    search_optimizers, sgd, stamped, weight_step)
from .supernet import Supernet, canonical_order

STATE = "few_shot.json"
FIXED = -1.0e4  # a logit that is never drawn, and that carries no gradient to speak of


def certain_edge(model: Supernet) -> tuple[str, int]:
    """The (cell kind, edge) whose most probable op has the highest probability."""
    best = max(((p.max().item(), kind, int(p.max(-1).values.argmax()))
                for kind, p in model.probabilities().items()), key=lambda t: t[0])
    return best[1], best[2]


def fix_edge(model: Supernet, kind: str, edge: int, op: int) -> None:
    """Set every architecture logit to uniform, then ``kind``'s ``edge`` to ``op`` alone."""
    with torch.no_grad():
        for p in model.arch_parameters():
            p.zero_()
        row = model.arch_logits[kind][edge]
        row.fill_(FIXED)
        row[op] = 0.0


def fixed_sampling(model: Supernet, logits: dict[str, torch.Tensor] | None, kind: str, edge: int,
                   op: int) -> dict[str, torch.Tensor] | None:
    """The weight steps' sampling logits with ``edge`` fixed (None: they follow the logits)."""
    if logits is None:
        return None
    # one row per edge (uniform sampling holds one row for all of them)
    out = {k: v.expand_as(model.arch_logits[k]).clone() for k, v in logits.items()}
    out[kind][edge] = FIXED
    out[kind][edge, op] = 0.0
    return out


def settings(cfg: Config) -> dict[str, Any]:
    """What a finished part depends on beyond the search: a resumed run reuses it only if equal."""
    out = dataclasses.asdict(cfg.search.few_shot)
    del out["workers"]  # where the parts run does not change them
    if cfg.search.budget.spend:  # only then: the records of runs without it stay valid
        out["spend"] = cfg.search.budget.spend
    return out


def read_state(run_dir: Path, cfg: Config, model: Supernet) -> dict[str, Any]:
    """The run's checked ``few_shot.json`` ({} when there is none; readback.few_shot_state)."""
    edges = {kind: logits.shape[0] for kind, logits in model.arch_logits.items()}
    return few_shot_state(run_dir / STATE, model.op_names, edges, model.cell_inputs, cfg.space)


def search_part(setup: SearchSetup, kind: str, edge: int, op: int, arch_update: Callable[..., Any],
                progress: Callable[[], None]) -> Genotype | None:
    """Search one part, ``setup.model`` already holding the searched state; its derived cell
    (None: no cell with this op there fits the budget)."""
    cfg, model, budget = setup.cfg, setup.model, setup.budget
    s, f = cfg.search, cfg.search.few_shot
    fix_edge(model, kind, edge, op)
    sampling = fixed_sampling(model, setup.weight_logits, kind, edge, op)
    lr = f.lr if f.lr is not None else s.lr
    w_opt, a_opt = search_optimizers(model, s, lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, f.epochs, eta_min=min(s.lr_min, lr))
    together = draws_together(model, s, sampling, arch_first=False)  # the weights step first
    model.train()
    for epoch in range(f.epochs):
        setup.w_batches.set_epoch(s.epochs + epoch)  # orders the search did not see
        setup.a_batches.set_epoch(s.epochs + epoch)
        for (xw, yw), (xa, ya) in zip(setup.w_batches, setup.a_batches):
            xw, xa = in_layout(xw, setup.layout), in_layout(xa, setup.layout)
            if together:  # one host read for both steps' samples, as in the search
                draw_step_samples(model, sampling, False, s.amp, xw.device)
            model.sampling_logits = sampling
            weight_step(model, w_opt, xw, yw, s.grad_clip, s.amp)
            model.sampling_logits = None
            arch_update(a_opt, xa, ya)
            model.drop_drawn()
        sched.step()
        progress()
    if budget is None:
        return setup.derive()
    genotype = derive_within(model, budget.table, budget.limits) if not s.budget.spend else \
        next((c.genotype for c in shortlist(model, 1, cfg.space, budget.table, budget.limits,
                                            s.budget.spend)), None)
    if genotype is None or not _holds(genotype, model, kind, edge, model.op_names[kind][op]):
        return None  # the most probable fitting cell would need another op there
    return stamped(genotype, cfg.space)


def _holds(genotype: Genotype, model: Supernet, kind: str, edge: int, op: str) -> bool:
    """Whether ``genotype`` keeps ``op`` on ``edge`` (or drops the edge, as a top-k cell may).
    Only budgeted runs ask, and a budget's cost table needs the cell's edge layout (or a
    chain's layers: then whether the layer carries ``op``)."""
    if model.chain:
        return genotype.layers.get(model.edge_names(kind)[edge]) == op
    node, src = edge_inputs(model.cell_inputs, num_nodes(model.arch_logits[kind].shape[0],
                                                           model.cell_inputs))[edge]
    return all(o == op for o, j in genotype.cells[kind][node] if j == src)


def select_score(cfg: Config, genotype: Genotype, num_classes: int, device: torch.device,
                 data: ImageSet, w_idx: torch.Tensor, a_idx: torch.Tensor,
                 progress: Callable[[], None]) -> tuple[float, float]:
    """Train ``genotype``'s selection network from scratch on the weight split; its (loss,
    accuracy %) on the architecture split. Every part's network starts from the same seed."""
    f, d = cfg.search.few_shot, cfg.data
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        seed_everything(seed_of(cfg.seed, 6))
        net = build_network(cfg.space, genotype, num_classes,
                            {**cfg.network, **f.select_network}).to(device)
        train = Batches(data.subset(w_idx), f.select_batch_size, train=True, device=device,
                        pad=d.pad, seed=seed_of(cfg.seed, 7), workers=0)
        opt = sgd(net.parameters(), f.select_lr, 0.9, cfg.search.weight_decay, nesterov=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, f.select_epochs, eta_min=0.0)
        fit(net, train, opt, sched, f.select_epochs, cfg.search.grad_clip, progress=progress)
        with torch.no_grad():
            return evaluate_model(net, Batches(data.subset(a_idx), 256, train=False,
                                               device=device, workers=0))


def run_few_shot(setup: SearchSetup, run_dir: Path, arch_update: Callable[..., Any],
                 say: Callable[[str], None], quiet: bool = False) -> Genotype:
    """The few-shot phase of a finished search: search every part, score its cell, keep the best."""
    cfg, model = setup.cfg, setup.model
    f = cfg.search.few_shot
    path = run_dir / STATE
    saved = read_state(run_dir, cfg, model)
    if saved.get("edge") and saved.get("settings") == settings(cfg):
        kind, edge = saved["edge"]
    else:
        kind, edge = certain_edge(model)
        saved = {}
    parts: dict[str, dict] = saved.get("parts", {})
    spent = saved.get("phase_seconds", 0.0)
    ops = model.op_names[kind]
    todo = [k for k in canonical_order(ops) if ops[k] not in parts]  # by name: a reordered op
    workers, threads = _processes(setup, len(todo))                   # list runs the same phase
    name = model.edge_names(kind)[edge] + (f" of the {kind} cell" if kind != "cell" and
                                           not model.chain else "")
    where = f"; {_n(len(todo), 'part')} to run in {workers} processes of {_n(threads, 'thread')}" \
        if workers > 1 else ""
    say(f"few-shot: {len(ops)} parts, edge {name} fixed to each op ({_n(f.epochs, 'epoch')} each "
        f"from the searched supernet); each part's cell trained {_n(f.select_epochs, 'epoch')} "
        f"from scratch on the weight split, the best on the architecture split kept{where}")
    data = load_split(cfg.data, train=True)
    w_idx, a_idx = split_indices(len(data), cfg.data.split, cfg.seed)
    searched = copy.deepcopy(model.state_dict())
    multipliers = setup.budget.multipliers.clone() if setup.budget is not None else None

    def part(k: int, progress: Callable[[], None]) -> dict[str, Any]:
        started = time.time()
        model.load_state_dict(searched)
        if multipliers is not None:
            setup.budget.multipliers = multipliers.clone()
        seed_everything(seed_of(cfg.seed, 8))  # every part draws the same numbers, in any process
        genotype = search_part(setup, kind, edge, k, arch_update, progress)
        out: dict[str, Any] = {"genotype": None, "loss": None, "acc": None}
        if genotype is not None:
            loss, acc = select_score(cfg, genotype, setup.num_classes, setup.device, data,
                                     w_idx, a_idx, progress)
            if not math.isfinite(loss):  # a score few_shot.json must not hold, nor the pick use
                raise Diverged(f"few-shot: the selection training of part {ops[k]} diverged "
                               f"(loss {loss}): try a lower search.few_shot.select_lr")
            out = {"genotype": genotype.to_dict(), "loss": loss, "acc": acc}
        else:
            for _ in range(f.select_epochs):
                progress()
        return {**out, "seconds": time.time() - started}

    bar = tqdm(total=len(todo) * (f.epochs + f.select_epochs), desc="few-shot", unit="epoch",
               disable=quiet or None, leave=False)
    began = time.time()
    jobs = [(ops[k], lambda progress, k=k: part(k, progress)) for k in todo]
    finished = (in_processes(jobs, workers, threads, lambda: bar.update(1)) if workers > 1 else
                ((op, job(lambda: bar.update(1))) for op, job in jobs))
    try:
        for op, result in finished:
            parts[op] = result
            atomic_write(path, json.dumps({"edge": [kind, edge], "settings": settings(cfg),
                                           "parts": parts,
                                           "phase_seconds": spent + time.time() - began},
                                          indent=1) + "\n")
            genotype = Genotype.from_dict(result["genotype"]) if result["genotype"] else None
            bench = ""
            if genotype is not None and setup.table is not None:
                bench = f"; NAS-Bench-201 cifar10 {setup.table.query(genotype).accuracy['cifar10']:.2f}"
            say(f"  {op}: " + (f"{genotype}, {result['acc']:.2f}% on the architecture split{bench}"
                               if genotype is not None else "no cell with it there fits the budget"))
    finally:
        finished.close()  # stops any part's process still running
        bar.close()
        model.load_state_dict(searched)  # the checkpoint's supernet, as the search left it
        if multipliers is not None:
            setup.budget.multipliers = multipliers
    scored = [(p["acc"], -p["loss"], op) for op, p in parts.items() if p["genotype"] is not None]
    if not scored:
        raise ValueError("few-shot: no part derived a cell within the budget")
    _, _, best = max(scored)
    say(f"few-shot pick: the part with {best} on edge {name} ({parts[best]['acc']:.2f}%)")
    return stamped(Genotype.from_dict(parts[best]["genotype"]), cfg.space)


def _processes(setup: SearchSetup, parts: int) -> tuple[int, int]:
    """(processes, threads each) for ``parts`` parts: several only on a CPU that can fork."""
    threads = setup.threads.count if setup.threads is not None else torch.get_num_threads()
    chosen = setup.cfg.search.few_shot.workers
    if setup.device.type != "cpu" or not can_fork() or parts < 2:
        return 1, threads
    workers = min(parts, chosen if chosen is not None else threads)
    return workers, max(1, threads // workers)


def can_fork() -> bool:
    """Whether parts may run in forked processes (Linux: a forked child shares the searched
    supernet, the data and any search space registered in this process, without pickling)."""
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def in_processes(jobs: list[tuple[str, Callable[[Callable[[], None]], dict]]], workers: int,
                 threads: int, progress: Callable[[], None]) -> Iterator[tuple[str, dict]]:
    """Run ``jobs`` (name, job(progress) -> result) in at most ``workers`` forked processes of
    ``threads`` threads; yield (name, result) as each finishes. A job's error is raised here."""
    ctx = mp.get_context("fork")
    messages = ctx.Queue()
    parent = os.getpid()
    waiting, running = list(jobs), {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                name, job = waiting.pop(0)
                proc = ctx.Process(target=_child, args=(name, job, threads, messages, parent),
                                   name=f"few-shot {name}")
                proc.start()
                running[name] = proc
            try:
                what, name, value = messages.get(timeout=1.0)
            except queue.Empty:
                for name, proc in running.items():
                    if proc.exitcode is not None and messages.empty():
                        raise RuntimeError(f"few-shot: the process of part {name} stopped "
                                           f"(exit code {proc.exitcode}) before its result")
                continue
            if what == "epoch":
                progress()
            elif what == "error":
                raise value
            else:
                running.pop(name).join()
                yield name, value
    finally:
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.join()


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies (Linux)


def die_with_parent(parent: int) -> None:
    """In a forked part's process: be killed when the parent dies, even by SIGKILL (no orphan
    goes on running), leave Ctrl-C to the parent (which reports it once; a terminal sends it to
    the whole process group), and let the parent's terminate() end it without a word."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's handler, which this fork inherited
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not glibc: the parent's terminate() is what ends it
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child(name: str, job: Callable[[Callable[[], None]], dict], threads: int,
           messages: Any, parent: int) -> None:
    die_with_parent(parent)
    torch.set_num_threads(threads)  # before any op: a forked OpenMP pool is not reused
    try:
        messages.put(("done", name, job(lambda: messages.put(("epoch", name, None)))))
    except BaseException as exc:  # noqa: BLE001 - raised again in the parent
        try:
            pickle.dumps(exc)
        except Exception:
            exc = RuntimeError(f"few-shot part {name}: {type(exc).__name__}: {exc}")
        messages.put(("error", name, exc))


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"
