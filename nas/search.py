"""The search loop: alternate a weight step and an architecture step, anneal the temperature.

Each step, as the GDAS reference does: an SGD step of the weights on a batch of the weight
split, then an Adam step of the architecture logits on a batch of the architecture split
(``search.order: arch_first`` swaps them, as DARTS does), each forward drawing its own sample.
The weight step does not compute gradients for the logits, nor the architecture step for the
weights. Every epoch ends with a checkpoint from which ``resume`` continues exactly.

Two choices beyond GDAS (docs/explanation/collapse.md): ``weight_sampling`` draws the weight steps'
subnetworks from fixed op probabilities (uniform, or by parameter count) instead of the logits,
and ``estimator: reinforce`` replaces the GDAS gradient of the architecture step by the
score-function gradient with a leave-one-out baseline over several forward-only samples.
``tau_forward`` gives the hard sample its own temperature and schedule (decoupled from ``tau``,
the relaxation's), and ``edge_topk`` samples the inputs each node runs (docs/explanation/estimators.md).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import distributed as dist
from .benchmarks import BenchmarkResult, load_table
from .budget import BudgetConstraint, check_feasible, expected_cost
from .config import Config, budget_limits, forward_tau_on
from .cost import CostTable, build_cost_table, count_cost, format_cost
from .latency import LatencyTable, check_fits, read_table
from .data import Batches, load_split, seed_of, split_indices, steps_per_epoch
from .genotype import Genotype
from .monitor import Monitor
from .lifecycle import begin, epochs_of, open_monitor, open_run_dir, resume_lines, save_epoch
from .runtime import (Meter, channels_last, check_finite, check_finite_values, in_layout,
                      keep_freed_memory, resolve_device, seed_everything, steps_note,
                      stretch_cosine, within_memory)
from .schedules import TemperatureScheduler
from .errors import InputError
from .fewshot import read_state, run_few_shot
from .readback import saved_costs
from .selection import check_selection, run_selection
from .spaces import build_network, build_supernet, check_supernet, inspecting
# the steps are nas.search's public API too (scripts and tests import them from here)
from .steps import (SearchSetup, arch_step, arch_updater, draw_step_samples,  # noqa: F401
                    draws_together, frozen, reinforce_step, search_optimizers, weight_step)
from .supernet import MixedEdge, Supernet
from .threads import use_threads


@dataclass
class SearchResult:
    """What a finished search hands back."""

    genotype: Genotype
    run_dir: Path
    metrics: dict[str, Any]
    benchmark: BenchmarkResult | None = None  # the genotype in search.benchmark's table
    cost: dict[str, float] | None = None      # with search.budget: the derived network's cost
    budget: dict[str, float] | None = None    # with search.budget: its bounds
    cost_how: dict[str, str] | None = None    # with search.budget: how each metric was priced


def edge_parameters(model: Supernet, image_size: int) -> dict[str, Tensor]:
    """Trainable parameters of each op on each edge, ``[edges, ops]`` per cell kind, as built in
    ``model``: summed over the cells of a kind (they share its sample), at the supernet's own
    channels and strides (a reduction cell's stride-2 skip connection is a factorized reduce).

    Found by one eval forward of two blank ``image_size`` images that runs every op and records
    which ``MixedEdge`` receives which row of which kind's weights; nothing changes in ``model``.
    """
    name = type(model).__name__
    if not any(isinstance(m, MixedEdge) for m in model.modules()):
        raise InputError(f"search.weight_sampling: params counts the parameters of each edge's "
                         f"ops in its nas.MixedEdge modules, and {name} has none; use uniform")
    drawn: dict[str, Any] = {}
    seen: list[tuple[MixedEdge, Tensor]] = []
    real_sample = model.sample

    def recording() -> dict[str, Any]:
        drawn.update(real_sample())
        return drawn

    def record(edge: nn.Module, args: tuple) -> None:
        if len(args) > 1 and isinstance(args[1], Tensor):
            seen.append((edge, args[1]))

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, MixedEdge)]
    model.sample = recording  # the kind of each row: the samples this forward hands out
    try:
        with inspecting(model) as device:
            model(torch.zeros(2, 3, image_size, image_size, device=device))
    finally:
        del model.sample
        for h in hooks:
            h.remove()
    counts = {kind: torch.zeros(tuple(v.shape)) for kind, v in model.arch_logits.items()}
    found: dict[str, set[int]] = {kind: set() for kind in counts}
    for edge, row in seen:
        for kind, sample in drawn.items():
            base = sample.weights
            if row._base is base:  # row e of the kind's [edges, ops] weights
                e = (row.storage_offset() - base.storage_offset()) // base.stride(0)
                for op_name, op in zip(edge.op_names, edge.ops):
                    k = model.op_names[kind].index(op_name)
                    counts[kind][e, k] += sum(p.numel() for p in op.parameters() if p.requires_grad)
                found[kind].add(e)
    for kind, value in model.arch_logits.items():
        if len(found[kind]) != value.shape[0]:
            raise InputError(f"search.weight_sampling: params counts the parameters of each "
                             f"edge's ops in its nas.MixedEdge modules, but {name} runs "
                             f"{len(found[kind])} of the {value.shape[0]} edges of cell kind "
                             f"'{kind}' as nas.MixedEdge(x, weights[edge]); use uniform")
    return counts


def weight_sampling_logits(model: Supernet, how: str, image_size: int) -> dict[str, Tensor] | None:
    """Fixed logits the weight steps sample from: None (the architecture's), uniform, or params.

    ``params`` samples op k of an edge with probability proportional to ``n_k + mean(n)``, ``n``
    the parameter counts of that edge's ops in ``model`` (``edge_parameters``): ops with weights
    to learn get more of the training, and ops without any keep at least half their uniform
    share, so every subnetwork stays in the supernet's reach. An edge none of whose ops has
    parameters samples uniformly.
    """
    if how == "arch":
        return None
    if how == "uniform":
        return {kind: torch.zeros(len(ops)) for kind, ops in model.op_names.items()}
    out = {}
    for kind, n in edge_parameters(model, image_size).items():
        logits = (n + n.mean(-1, keepdim=True)).log()
        out[kind] = torch.where(n.sum(-1, keepdim=True) > 0, logits, torch.zeros_like(logits))
    return out


def build_search(cfg: Config, costs_file: Path | None = None) -> SearchSetup:
    """Load the data and build the supernet, optimisers and schedules of ``cfg``'s search.

    With ``search.budget``, also the cost table (its latency read from ``costs_file``, a
    resumed run's ``costs.json``, when given) and the budget's constraint.
    """
    s = cfg.search
    device = dist.local_device(resolve_device(cfg.device))
    dist.per_rank_batch(s.batch_size, "search.batch_size")
    if s.few_shot.epochs and dist.world_size() > 1:
        raise InputError("search.few_shot: the few-shot phase does not run under torchrun; run the "
                         "search without torchrun, or set search.few_shot.epochs=0")
    latency_table = None if costs_file is not None and costs_file.is_file() \
        else table_for(cfg)  # a table that does not fit fails before any work
    threads = use_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults re-touching each step's activations
    seed_everything(cfg.seed)
    data = load_split(cfg.data, train=True)
    w_idx, a_idx = split_indices(len(data), cfg.data.split, cfg.seed)
    steps = steps_per_epoch(len(w_idx), len(a_idx), s.batch_size, s.steps_per_epoch)

    def batches(idx: Tensor, tag: int) -> Batches:
        return Batches(data.subset(idx), s.batch_size, train=True, device=device,
                       on_device=cfg.data.on_device, workers=cfg.data.workers, pad=cfg.data.pad,
                       seed=seed_of(cfg.seed, tag), max_steps=steps,
                       shard=(dist.rank(), dist.world_size()))

    model = build_supernet(cfg.space, data.num_classes, s.mode, cfg.seed, cfg.supernet,
                           edge_topk=s.edge_topk).to(device)
    check_supernet(model, cfg.space, data.num_classes, cfg.data.image_size)  # before any file
    if s.few_shot.epochs:  # the phase's network options fail now, not after the search
        try:
            build_network(cfg.space, model.genotype(), data.num_classes,
                          {**cfg.network, **s.few_shot.select_network})
        except InputError as exc:
            raise InputError(f"search.few_shot.select_network: {exc}") from None
    check_selection(cfg, model, data.num_classes, dist.world_size())
    if s.budget.spend and budget_limits(s.budget) and model.cell_inputs is None:
        raise InputError(f"search.budget.spend: size-matched cells need a DARTS-family supernet "
                         f"(one whose cells take cell_inputs); {type(model).__name__} is not; "
                         "set search.budget.spend=0")
    layout = channels_last(s.channels_last, device)
    if layout:
        model = model.to(memory_format=torch.channels_last)
    w_opt, a_opt = search_optimizers(model, s, s.lr)

    def scheduler(t) -> TemperatureScheduler:
        total = s.epochs if t.per == "epoch" else s.epochs * steps
        return TemperatureScheduler(t.schedule, total, t.max, t.min, t.per, **t.options)

    # the forward temperature has its own schedule, checkpointed only when it is on, so that
    # GDAS runs (and their checkpoints) are what they were before it existed
    taus = {"tau": scheduler(s.tau),
            **({"tau_forward": scheduler(s.tau_forward)} if forward_tau_on(s) else {})}
    table = load_table(s.benchmark) if s.benchmark else None
    if table is not None:
        table.query(model.genotype())  # a space the table cannot score fails before the run starts
    model.estimator = s.estimator if s.estimator in ("gumbel_rao", "reinmax") else "gdas"
    model.rao_samples = s.samples
    budget = build_budget(cfg, model, data.num_classes, device, costs_file, latency_table) \
        if budget_limits(s.budget) else None
    return SearchSetup(cfg, device, data.num_classes, (len(w_idx), len(a_idx)), steps,
                       batches(w_idx, 1), batches(a_idx, 2), model, layout, w_opt,
                       torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, s.epochs, eta_min=s.lr_min),
                       a_opt, taus, table,
                       weight_sampling_logits(model, s.weight_sampling, cfg.data.image_size), budget,
                       threads)


COSTS = "costs.json"  # a budgeted run's cost table; a resumed run reuses its measured latency


def table_for(cfg: Config) -> LatencyTable | None:
    """``search.budget.latency_table`` read and checked against the config (None: not set)."""
    path = cfg.search.budget.latency_table
    if path is None:
        return None
    table = read_table(path)
    check_fits(table, cfg, path)
    return table


def build_budget(cfg: Config, model: Supernet, num_classes: int, device: torch.device,
                 saved: Path | None = None, latency_table: LatencyTable | None = None
                 ) -> BudgetConstraint:
    """The cost table of the ``network:`` that ``cfg`` builds, and the budget's constraint.

    Latency comes from ``saved`` (a resumed run's costs.json), else ``latency_table``, else it is
    timed here. Fails in one line before the run starts when no architecture of the space fits.
    """
    b, limits = cfg.search.budget, budget_limits(cfg.search.budget)
    size = b.image_size or cfg.data.image_size
    measure = "latency_ms" in limits and not (saved is not None and saved.is_file()) \
        and latency_table is None
    metrics = ["params", "macs"] + (["latency_ms"] if measure else [])
    build_network(cfg.space, model.genotype(), num_classes, cfg.network)  # options fail in one line
    with torch.random.fork_rng(devices=[]), within_memory(  # probes draw no number of the run's
            f"search.budget.latency_batch {b.latency_batch} of {size}x{size} images",
            "lower search.budget.latency_batch or search.budget.image_size"):
        table = build_cost_table(model, lambda g: build_network(cfg.space, g, num_classes, cfg.network),
                                 size, metrics, device if measure else torch.device("cpu"),
                                 cfg.space, b.latency_batch)
    if "latency_ms" in limits and latency_table is not None:
        check_fits(latency_table, cfg, b.latency_table, num_classes)
        latency_table.install(table, b.latency_table)
    elif "latency_ms" in limits and not measure:
        table.load_metric(saved_costs(saved), "latency_ms")
    check_feasible(model, table, limits)
    return BudgetConstraint(table, limits, b.dual_lr)


def open_run(setup: SearchSetup, run_dir: Path, resume: bool, force: bool) -> tuple[int, dict]:
    """Create (or resume into) ``run_dir``; returns the epochs done and the epoch counts grown."""
    main = dist.is_main()  # rank 0 alone writes the run directory
    start, grown = open_run_dir("search", run_dir, setup.cfg, setup.objects, resume=resume,
                                force=force, stretch=lambda epochs: stretch_schedules(setup, epochs))
    if main and setup.budget is not None and not (run_dir / COSTS).is_file():
        (run_dir / COSTS).write_text(json.dumps(setup.budget.table.to_dict()) + "\n")
    if main:
        (run_dir / "genotypes").mkdir(exist_ok=True)
        for stale in (run_dir / "genotypes").glob("epoch_*.json"):  # written after the checkpoint
            if stale.stem[6:].isdigit() and int(stale.stem[6:]) > start:
                stale.unlink()
    return start, grown


def stretch_schedules(setup: SearchSetup, epochs: int) -> None:
    """Make the learning-rate and temperature schedules end at ``epochs`` (a resumed run's
    edited config grew them)."""
    stretch_cosine(setup.lr_sched, epochs)
    for schedule in setup.taus.values():
        schedule.total = epochs if schedule.per == "epoch" else epochs * setup.steps


def header(setup: SearchSetup, run_dir: Path, resume: bool, start: int,
           grown: dict[str, tuple]) -> list[str]:
    """The lines a search prints before its first epoch."""
    cfg, s = setup.cfg, setup.cfg.search
    if resume:
        return resume_lines("search", run_dir, start, s.epochs, grown, setup.threads.note(),
                            "the learning-rate and temperature schedules now end there")
    n_params = sum(p.numel() for p in setup.model.weight_parameters())
    how = "".join([f", {s.estimator} estimator" if s.estimator != "gdas" else "",
                   f", {s.weight_sampling} weight sampling" if s.weight_sampling != "arch" else "",
                   ", decoupled forward temperature" if "tau_forward" in setup.taus else "",
                   f", top-{s.edge_topk} inputs per node" if s.edge_topk else ""])
    w, a = setup.images
    per_epoch = steps_note(setup.steps, s.steps_per_epoch, "search.steps_per_epoch",
                           f"the smaller split's {min(w, a):,} images", s.batch_size)
    return [*budget_lines(setup), f"search: {cfg.space} space, {s.mode} mode{how}, {w}/{a} images "
            f"(weights/architecture), {per_epoch}{dist.batch_note(s.batch_size, setup.device)}, "
            f"{n_params:,} weights, device {setup.device}{setup.threads.note()}"]


def budget_lines(setup: SearchSetup) -> list[str]:
    """What a budgeted search promises, and how its costs were measured."""
    if setup.budget is None:
        return []
    table, limits, cfg = setup.budget.table, setup.budget.limits, setup.cfg
    least = table.minimum()
    bounds = ", ".join(f"{m} <= {format_cost(m, v)}" for m, v in limits.items())
    options = ", ".join(f"{k}={v}" for k, v in cfg.network.items()) or "its defaults"
    lines = [f"budget: {bounds} for the network ({options}) built from the derived genotype, "
             f"at {table.image_size}x{table.image_size} "
             f"(the smallest possible: {', '.join(format_cost(m, least[m]) for m in limits)})"]
    return lines + [f"  {m}: {how}" for m, how in table.how.items() if m in limits]


def run_epoch(setup: SearchSetup, epoch: int, monitor: Monitor,
              ddp: nn.Module | None) -> tuple[Meter, Meter]:
    """One epoch of alternating weight and architecture steps; returns their meters."""
    s, model, taus = setup.cfg.search, setup.model, setup.taus
    setup.w_batches.set_epoch(epoch)
    setup.a_batches.set_epoch(epoch)
    update_arch = epoch >= s.warmup_epochs
    train_meter, arch_meter = Meter(setup.device), Meter(setup.device)

    arch_update = arch_updater(setup)

    def update(x: Tensor, y: Tensor) -> None:
        arch_meter.add(*arch_update(setup.a_opt, x, y), y)

    arch_first = s.order == "arch_first"
    together = update_arch and draws_together(model, s, setup.weight_logits, arch_first)
    model.train()
    for (xw, yw), (xa, ya) in monitor.steps(zip(setup.w_batches, setup.a_batches), setup.steps,
                                            epoch, s.batch_size * (2 if update_arch else 1)):
        xw, xa = in_layout(xw, setup.layout), in_layout(xa, setup.layout)
        model.tau = taus["tau"].tau
        if "tau_forward" in taus:
            model.tau_forward = taus["tau_forward"].tau
        if together:  # one host read for both steps' samples
            draw_step_samples(model, setup.weight_logits, arch_first, s.amp, xw.device)
        if update_arch and s.order == "arch_first":
            update(xa, ya)
        model.sampling_logits = setup.weight_logits
        train_meter.add(*weight_step(model, setup.w_opt, xw, yw, s.grad_clip, s.amp, ddp), yw)
        model.sampling_logits = None
        if update_arch and s.order == "weights_first":
            update(xa, ya)
        model.drop_drawn()  # a sample no forward took (a supernet that did not call sample())
        monitor.step_scalars(**{"loss/train": train_meter.last, "tau": model.tau,
                                "loss/arch": arch_meter.last if update_arch else None})
        for t in taus.values():
            if t.per == "iteration":
                t.step()
        if monitor.want_postfix():
            loss, acc = train_meter.read()
            monitor.postfix(loss=loss, acc=acc, **taus_of(model, taus))
    setup.lr_sched.step()
    for t in taus.values():
        if t.per == "epoch":
            t.step()
    return train_meter, arch_meter


def end_epoch(setup: SearchSetup, epoch: int, run_dir: Path, monitor: Monitor,
              meters: tuple[Meter, Meter], lr: float, taus: dict[str, float],
              started: float) -> dict[str, Any]:
    """Derive and save the epoch's genotype, log its metrics, write the checkpoint."""
    cfg, s, model, main = setup.cfg, setup.cfg.search, setup.model, dist.is_main()
    for meter in meters:
        meter.reduce()
    (train_loss, train_acc), (arch_loss, arch_acc) = (m.read() for m in meters)
    update_arch = epoch >= s.warmup_epochs
    # a non-finite loss, logit or multiplier stops the run before any file holds it
    check_finite([train_loss, arch_loss] if update_arch else [train_loss], epoch, run_dir)
    check_finite_values(learned_values(setup), epoch, run_dir)
    dist.check_same(model.arch_parameters(), "architecture logits")
    dist.average_buffers(model)  # each rank's batch-norm statistics saw its slice of the batches
    genotype = setup.derive()
    if main:
        genotype.save(run_dir / "genotypes" / f"epoch_{epoch + 1:03d}.json")
    metrics = {"train_loss": train_loss, "train_acc": train_acc, "arch_loss": arch_loss,
               "arch_acc": arch_acc, **taus, "lr": lr, "arch_lr": s.arch_lr, "entropy": model.entropy(),
               "seconds": time.time() - started}
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v)
               for k, v in metrics.items()}
    scalars = {"loss/train": train_loss, "accuracy/train": train_acc, **taus,
               "lr/weights": lr, "lr/arch": s.arch_lr, "entropy": metrics["entropy"]}
    if setup.table is not None:
        bench = setup.table.query(genotype).scalars()
        scalars.update(bench)
        metrics.update({k.replace("/", "_"): v for k, v in bench.items()})
    if update_arch:
        scalars.update({"loss/arch": arch_loss, "accuracy/arch": arch_acc})
    if setup.budget is not None:
        costs = budget_scalars(setup.budget, model, genotype)
        scalars.update(costs)
        metrics.update({k.replace("/", "_"): v for k, v in costs.items()})
    monitor.epoch_end(epoch, {**metrics, "genotype": str(genotype)}, scalars)
    monitor.architecture(epoch, model, genotype)
    save_epoch("search", epoch, setup.objects, cfg, run_dir, num_classes=setup.num_classes,
               genotype=genotype.to_dict())
    return metrics


def learned_values(setup: SearchSetup) -> dict[str, tuple[Tensor, str]]:
    """What the architecture step learns, for the divergence check: {what: (tensor, the setting
    that drives it)}."""
    model, budget = setup.model, setup.budget
    dual = " or search.budget.dual_lr" if budget is not None else ""
    out = {f"the architecture logits of cell kind '{k}'": (v, f"search.arch_lr{dual}")
           for k, v in model.arch_logits.items()}
    out.update({f"the input logits of cell kind '{k}'": (v, f"search.arch_lr{dual}")
                for k, v in model.edge_logits.items()})
    if budget is not None:
        out["the budget's multipliers"] = (budget.multipliers, "search.budget.dual_lr")
    return out


def budget_scalars(budget: BudgetConstraint, model: Supernet, genotype: Genotype) -> dict[str, float]:
    """The derived network's cost, the expected cost and the multipliers, by TensorBoard tag."""
    return {**{f"cost/{m}": v for m, v in budget.table.of(genotype).items()},
            **{f"cost/expected_{m}": v for m, v in expected_cost(budget.table, model).items()},
            **{f"budget/lambda_{m}": v for m, v in budget.values().items()}}


def search(cfg: Config, run_dir: str | Path, *, resume: bool = False, force: bool = False,
           quiet: bool = False) -> SearchResult:
    """Run (or resume) a search into ``run_dir``; write checkpoints, genotypes and logs there.

    An existing ``run_dir`` is refused unless ``resume`` (continue it) or ``force`` (replace
    it, once the data and the supernet are ready).
    """
    run_dir, resume, force = begin(run_dir, resume, force)
    setup = build_search(cfg, run_dir / COSTS if resume else None)
    s, model = cfg.search, setup.model
    if resume and s.few_shot.epochs:
        read_state(run_dir, cfg, model)  # a few_shot.json that does not fit fails now, not later
    run_dir = dist.agree(run_dir)  # every rank is ready (else all stop), in rank 0's directory
    if setup.budget is not None:
        _same_table_everywhere(setup.budget.table, setup.device)
    start, grown = open_run(setup, run_dir, resume, force)
    # the logits stay out of DDP: the architecture step averages their gradients itself
    ddp = dist.wrap(model, setup.device, [f"arch_logits.{k}" for k in model.arch_logits])
    ddp = None if ddp is model else ddp
    monitor = open_monitor("search", run_dir, s.epochs, start, quiet, s.log_every)
    for line in header(setup, run_dir, resume, start, grown):
        monitor.print(line)
    metrics: dict[str, Any] = {}
    with epochs_of(run_dir, monitor):
        for epoch in range(start, s.epochs):
            started = time.time()
            lr, taus = setup.w_opt.param_groups[0]["lr"], {k: t.tau for k, t in setup.taus.items()}
            meters = run_epoch(setup, epoch, monitor, ddp)
            metrics = end_epoch(setup, epoch, run_dir, monitor, meters, lr, taus, started)
    return finish(setup, run_dir, metrics, quiet)


def finish(setup: SearchSetup, run_dir: Path, metrics: dict[str, Any],
           quiet: bool) -> SearchResult:
    """The searched genotype (after the few-shot phase, if any), saved as ``genotype.json``
    by rank 0, and its cost under a budget; every rank returns the result."""
    cfg, s = setup.cfg, setup.cfg.search
    if s.few_shot.epochs:
        genotype = run_few_shot(setup, run_dir, arch_updater(setup),
                                print if not quiet else (lambda line: None), quiet)
    elif s.select.shortlist:
        genotype = run_selection(setup, run_dir, print if not quiet else (lambda line: None), quiet)
    else:
        genotype = setup.derive()
    cost = limits = None
    if setup.budget is not None:  # counted on the network itself, not by the table
        limits = setup.budget.limits
        cost = {**setup.budget.table.of(genotype), **count_cost(
            build_network(cfg.space, genotype, setup.num_classes, cfg.network),
            setup.budget.table.image_size)}
    if dist.is_main():
        genotype.save(run_dir / "genotype.json")
    dist.barrier()  # every rank returns once the run directory is complete
    return SearchResult(genotype, run_dir, metrics,
                        setup.table.query(genotype) if setup.table is not None else None,
                        cost, limits, dict(setup.budget.table.how) if setup.budget else None)


def _same_table_everywhere(table: CostTable, device: torch.device) -> None:
    """Average a measured latency table over the ranks, so that every rank's penalty is the same."""
    if dist.world_size() == 1 or "latency_ms" not in table.base:
        return
    kinds = list(table.ops["latency_ms"])
    flat = torch.cat([table.ops["latency_ms"][k].flatten() for k in kinds] +
                     [torch.tensor([table.base["latency_ms"]])]).double().to(device)
    flat = dist.all_sum(flat) / dist.world_size()
    start = 0
    for k in kinds:
        n = table.ops["latency_ms"][k].numel()
        table.ops["latency_ms"][k] = flat[start:start + n].view_as(table.ops["latency_ms"][k]).float().cpu()
        start += n
    table.base["latency_ms"] = float(flat[-1])


def taus_of(model: Supernet, taus: dict[str, TemperatureScheduler]) -> dict[str, float]:
    """The temperatures a step just used, for the progress bar."""
    return {"tau": model.tau, **({"tau_f": model.tau_forward} if "tau_forward" in taus else {})}
