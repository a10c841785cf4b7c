"""Multi-fidelity selection: a shortlist of the searched supernet ranked by short trainings.

After the search, ``search.select`` takes the ``shortlist`` most probable architectures whose
network fits the budget (``nas.shortlist``; without a budget, the most probable ones), one per
isomorphism class, and ranks them by successive halving: every candidate is trained from scratch
for ``min_epochs`` on the weight split and scored on the architecture split, the best 1/``eta``
of them are trained again from scratch ``eta`` times longer, and so on up to ``max_epochs`` or
until two are left; the best of the last round becomes the search's genotype. Neither the test
set nor a benchmark table is read. With ``search.budget.spend`` the shortlist is size-matched (``nas.shortlist``):
every candidate costs about as much as the costliest network that fits, since short trainings
rank smaller networks first whatever they score when trained in full.

The ranking does not depend on how busy the machine was: every training runs on ``threads``
threads (one by default), whichever process runs it and however many threads the run chose from
the load, so its float rounding and score are the same; a score is the mean over the training's
last ``average`` epochs; equal scores go to the candidate the supernet ranked first. Candidates
run side by side in forked processes on a CPU (the few-shot phase's workers). ``select.json`` in
the run holds the shortlist, every training's scores and the thread count; a resumed run keeps
the trainings it finished and the thread count it recorded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from .data import Batches, ImageSet, load_split, seed_of, split_indices
from .errors import InputError
from .fewshot import can_fork, in_processes
from .genotype import Genotype
from .runtime import seed_everything
from .shortlist import Candidate, shortlist
from .spaces import build_network
from .supernet import Supernet
from .steps import evaluate_model, fit, sgd

STATE = "select.json"
VERSION = 1


def rounds(candidates: int, min_epochs: int, max_epochs: int, eta: int) -> list[tuple[int, int]]:
    """Successive halving's rounds as (candidates, epochs): ``eta`` times fewer candidates each
    round, trained ``eta`` times longer (at most ``max_epochs``), while at least two are left."""
    out, epochs = [], min_epochs
    while True:
        out.append((candidates, epochs))
        if candidates // eta < 2 or epochs >= max_epochs:
            return out
        candidates, epochs = candidates // eta, min(epochs * eta, max_epochs)


def ranked(scores: dict[int, float]) -> list[int]:
    """Candidate indices by score, best first; equal scores by shortlist order."""
    return sorted(scores, key=lambda i: (-scores[i], i))


def settings(cfg: Any) -> dict[str, Any]:
    """What a finished training depends on beyond its cell: a resumed run reuses it only if equal."""
    out = dataclasses.asdict(cfg.search.select)
    del out["workers"]  # where a training runs does not change it
    return {**out, "network": {**cfg.network, **out["network"]}, "seed": cfg.seed,
            "split": cfg.data.split, "pad": cfg.data.pad}


def train_candidate(cfg: Any, genotype: Genotype, epochs: int, num_classes: int,
                    device: torch.device, data: ImageSet, w_idx: torch.Tensor, a_idx: torch.Tensor,
                    progress: Callable[[], None]) -> dict[str, Any]:
    """Train ``genotype``'s network from scratch for ``epochs`` on the weight split; its loss and
    accuracy (%) on the architecture split after each of the last ``select.average`` epochs, and
    the score (their mean accuracy). Every training starts from the same seed."""
    c = cfg.search.select
    accs, losses = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        seed_everything(seed_of(cfg.seed, 9))
        net = build_network(cfg.space, genotype, num_classes, {**cfg.network, **c.network}).to(device)
        train = Batches(data.subset(w_idx), c.batch_size, train=True, device=device,
                        pad=cfg.data.pad, seed=seed_of(cfg.seed, 10), workers=0)
        held = Batches(data.subset(a_idx), 256, train=False, device=device, workers=0)
        opt = sgd(net.parameters(), c.lr, 0.9, cfg.search.weight_decay, nesterov=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs, eta_min=0.0)
        done = [0]

        def after_epoch() -> None:  # the last ``average`` epochs are scored
            done[0] += 1
            if done[0] > epochs - c.average:
                loss_a, acc_a = evaluate_model(net, held)
                losses.append(loss_a)
                accs.append(acc_a)
            progress()

        fit(net, train, opt, sched, epochs, cfg.search.grad_clip, progress=after_epoch)
    return {"epochs": epochs, "accs": accs, "losses": losses, "score": sum(accs) / len(accs)}


def check_selection(cfg: Any, model: Supernet, num_classes: int, world_size: int) -> None:
    """Fail before the search, in one line, where the selection could not run after it."""
    if not cfg.search.select.shortlist:
        return
    if model.cell_inputs is None:
        raise InputError(f"search.select: a shortlist needs a DARTS-family supernet (one whose "
                         f"cells take cell_inputs); {type(model).__name__} is not")
    if world_size > 1:
        raise InputError("search.select: the selection does not run under torchrun; run the search "
                         "without torchrun, or set search.select.shortlist=0")
    try:
        build_network(cfg.space, model.genotype(), num_classes,
                      {**cfg.network, **cfg.search.select.network})
    except InputError as exc:
        raise InputError(f"search.select.network: {exc}") from None


# -- the record ---------------------------------------------------------------------------------
def read_record(path: Path) -> dict[str, Any] | None:
    """A run's ``select.json``, checked; None if there is none. A damaged one fails in one line."""
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or state.get("version") != VERSION:
            raise ValueError(f"not version {VERSION}")
        threads = state["threads"]
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ValueError(f"threads: {threads!r}")
        if not isinstance(state["settings"], dict):
            raise ValueError("settings is not a mapping")
        for c in state["shortlist"]:
            Genotype.from_dict(c["genotype"])
            float(c["log_prob"]), str(c["key"])
        for key, result in state["trainings"].items():
            index, epochs = (int(v) for v in key.split("@"))
            if not 0 <= index < len(state["shortlist"]) or result["epochs"] != epochs or \
                    not isinstance(result["score"], (int, float)):
                raise ValueError(f"training {key}")
        float(state["seconds"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, InputError) as exc:
        raise InputError(f"{path}: not a selection record this version can read ({type(exc).__name__}: "
                         f"{exc}); remove it to run the selection again") from None
    return state


def write_record(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file (a crash leaves the old one)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(path)


def listed(candidates: list[Candidate]) -> list[dict[str, Any]]:
    """The shortlist as the record holds it."""
    return [{"genotype": c.genotype.to_dict(), "log_prob": c.log_prob, "key": c.key}
            for c in candidates]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads, then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- the phase ----------------------------------------------------------------------------------
def start_record(setup: Any, path: Path, found: list[Candidate],
                 say: Callable[[str], None]) -> dict[str, Any]:
    """The run's record if it was made for this selection, else a new one."""
    cfg = setup.cfg
    state = read_record(path)
    if state is not None and (state["settings"] != settings(cfg) or
                              [c["key"] for c in state["shortlist"]] != [c.key for c in found]):
        say(f"select: {path.name} was made with other settings or another shortlist; "
            "the selection starts again")
        state = None
    return state or {"version": VERSION, "settings": settings(cfg),
                     "threads": cfg.search.select.threads,
                     "search_threads": setup.threads.count if setup.threads is not None
                     else torch.get_num_threads(),
                     "shortlist": listed(found), "trainings": {}, "seconds": 0.0}


def processes(setup: Any, jobs: int, threads: int) -> int:
    """How many processes train candidates side by side: several only on a CPU that can fork."""
    if setup.device.type != "cpu" or not can_fork() or jobs < 2:
        return 1
    chosen = setup.cfg.search.select.workers
    run = setup.threads.count if setup.threads is not None else torch.get_num_threads()
    return max(1, min(jobs, chosen if chosen is not None else run // threads))


def run_round(setup: Any, state: dict[str, Any], path: Path, alive: list[int], epochs: int,
              data: tuple[ImageSet, torch.Tensor, torch.Tensor], progress: Callable[[], None]) -> None:
    """Train every candidate of ``alive`` not yet trained for ``epochs``; record each result."""
    cfg, threads = setup.cfg, state["threads"]
    genotypes = [Genotype.from_dict(c["genotype"]) for c in state["shortlist"]]
    todo = [i for i in alive if f"{i}@{epochs}" not in state["trainings"]]

    def job(i: int) -> Callable[[Callable[[], None]], dict]:
        return lambda tick: train_candidate(cfg, genotypes[i], epochs, setup.num_classes,
                                            setup.device, *data, tick)

    jobs = [(f"{i}@{epochs}", job(i)) for i in todo]
    workers = processes(setup, len(jobs), threads)
    keep = torch_threads(threads) if workers == 1 and setup.device.type == "cpu" \
        else contextlib.nullcontext()
    finished = in_processes(jobs, workers, threads, progress) if workers > 1 else \
        ((name, run(progress)) for name, run in jobs)
    began = time.time()
    try:
        with keep:
            for name, result in finished:
                state["trainings"][name] = result
                state["seconds"] += time.time() - began
                began = time.time()
                write_record(path, state)
    finally:
        finished.close()


def run_selection(setup: Any, run_dir: Path, say: Callable[[str], None],
                  quiet: bool = False) -> Genotype:
    """The selection phase of a finished search: shortlist, successive halving, the best cell."""
    cfg, c, budget = setup.cfg, setup.cfg.search.select, setup.budget
    spend = cfg.search.budget.spend if budget is not None else 0.0  # no bound: every network fits
    found = shortlist(setup.model, c.shortlist, cfg.space, budget.table if budget else None,
                      budget.limits if budget else None, spend)
    path = run_dir / STATE
    state = start_record(setup, path, found, say)
    plan = rounds(len(found), c.min_epochs, c.max_epochs, c.eta) if len(found) > 1 else []
    within = "within the budget " if budget is not None else ""
    if spend:
        within += f"spending at least {spend:g} of the costliest that fits "
    if not plan:
        say(f"select: only one cell {within}(one per isomorphism class): it is the pick")
    else:
        say(f"select: the {len(found)} most probable cells {within}(one per isomorphism class), "
            "ranked by successive halving: " + ", ".join(f"{n} trained {plural(e, 'epoch')}"
                                                         for n, e in plan)
            + f", each from scratch on the weight split, scored by its mean accuracy on the "
            f"architecture split over its last {plural(c.average, 'epoch')} "
            f"({plural(state['threads'], 'thread')} each)")
    data = load_split(cfg.data, train=True)
    w_idx, a_idx = split_indices(len(data), cfg.data.split, cfg.seed)
    alive = list(range(len(found)))
    done = sum(r["epochs"] for r in state["trainings"].values())
    bar = tqdm(total=sum(n * e for n, e in plan), initial=done, desc="select", unit="epoch",
               disable=quiet or None, leave=False)
    try:
        for n, epochs in plan:
            alive = alive[:n]
            run_round(setup, state, path, alive, epochs, (data, w_idx, a_idx), lambda: bar.update(1))
            alive = ranked({i: state["trainings"][f"{i}@{epochs}"]["score"] for i in alive})
            say(f"  {n} cells, {plural(epochs, 'epoch')}: the best {round_line(setup, state, alive[0], epochs)}")
    finally:
        bar.close()
    write_record(path, state)
    genotype = found[alive[0]].genotype
    say(f"select pick: the shortlist's #{alive[0] + 1}")
    return dataclasses.replace(genotype, space=genotype.space or cfg.space)


def round_line(setup: Any, state: dict[str, Any], index: int, epochs: int) -> str:
    """``#3 |...| 41.20%`` (with a benchmark table, its accuracy: monitoring only)."""
    genotype = Genotype.from_dict(state["shortlist"][index]["genotype"])
    text = f"#{index + 1} {genotype} {state['trainings'][f'{index}@{epochs}']['score']:.2f}%"
    if setup.table is not None:
        text += f"; NAS-Bench-201 cifar10 {setup.table.query(genotype).accuracy['cifar10']:.2f}"
    return text


def plural(count: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {word}{'s' if count != 1 else ''}"
