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

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as dist
from .benchmarks import BenchmarkResult, NB201Table, load_table
from .budget import BudgetConstraint, check_feasible, derive_within, describe, expected_cost
from .config import Config, budget_limits, forward_tau_on, save_config, to_dict
from .cost import CostTable, build_cost_table, count_cost, format_cost
from .data import Batches, load_split, seed_of, split_indices
from .genotype import Genotype
from .monitor import Monitor
from .runtime import (CHECKPOINT, Meter, autocast, channels_last, check_finite, checkpoint_state,
                      discard_failed_start, in_layout, keep_freed_memory,
                      prepare_run_dir, resolve_device, resume_from, save_checkpoint,
                      seed_everything, start_mode, steps_note, stretch_cosine)
from .schedules import TemperatureScheduler
from .errors import InputError
from .fewshot import run_few_shot
from .selection import check_selection, run_selection
from .spaces import build_network, build_supernet, check_supernet, inspecting
from .supernet import MixedEdge, Supernet
from .threads import Threads, use_threads


@dataclass
class SearchResult:
    """What a finished search hands back."""

    genotype: Genotype
    run_dir: Path
    metrics: dict[str, Any]
    benchmark: BenchmarkResult | None = None  # the genotype in search.benchmark's table
    cost: dict[str, float] | None = None      # with search.budget: the derived network's cost
    budget: dict[str, float] | None = None    # with search.budget: its bounds


@contextlib.contextmanager
def frozen(params: list[nn.Parameter]) -> Iterator[None]:
    """Record a forward in which ``params`` need no gradient."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def weight_step(model: Supernet, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                grad_clip: float, amp: bool, ddp: nn.Module | None = None) -> tuple[Tensor, Tensor]:
    """One SGD step of the weights; the logits get no gradient. Returns (loss, logits).

    ``ddp``, the model in DistributedDataParallel, averages the gradients over the ranks. In
    gdas mode only the sampled ops get gradients: DDP would wait forever for the others (or
    search the graph for them every step, with ``find_unused_parameters``), so its hooks are
    off and the gradients that exist, the same on every rank, go in one all-reduce instead.
    """
    sampled = ddp is not None and model.mode == "gdas"
    with contextlib.ExitStack() as stack:
        if sampled:
            stack.enter_context(ddp.no_sync())
        with frozen(model.arch_parameters()), autocast(x.device, amp):
            logits = (ddp or model)(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    if sampled:
        dist.average_gradients(model.weight_parameters())
    if grad_clip > 0:  # the optimizer's parameters are the weights; only the sampled ops have grads
        nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]
                                  if p.grad is not None], grad_clip)
    optimizer.step()
    return loss.detach(), logits.detach()


def arch_step(model: Supernet, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
              amp: bool, penalty: Callable[[], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """One Adam step of the logits; no weight gradient is computed. Returns (loss, logits).

    ``penalty()``, a differentiable function of the logits (a budget's), is added to the loss.
    """
    params = model.arch_parameters()
    with autocast(x.device, amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    objective = loss + penalty() if penalty is not None else loss
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g
    dist.average_gradients(params)
    optimizer.step()
    return loss.detach(), logits.detach()


def reinforce_step(model: Supernet, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   samples: int, amp: bool,
                   penalty: Callable[[], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """One Adam step of the logits by the score function with a leave-one-out baseline (RLOO).

    ``samples`` subnetworks drawn from the supernet's distribution are run forward only on the same batch;
    each one's log-probability is weighted by its loss minus the mean loss of the others, so no
    gradient flows through the ops. ``penalty()`` is added to the objective, as in ``arch_step``.
    Returns the mean loss and the first subnetwork's logits.
    """
    losses, drawn, first = [], [], None
    with torch.no_grad(), autocast(x.device, amp):
        for _ in range(samples):
            logits = model(x)
            first = logits if first is None else first
            losses.append(F.cross_entropy(logits.float(), y))
            drawn.append((dict(model.last_index), dict(model.last_edges)))
    loss = torch.stack(losses)
    advantage = loss - (loss.sum() - loss) / (samples - 1)
    params = model.arch_parameters()
    log_prob = torch.stack([model.log_prob(index, edges) for index, edges in drawn])
    objective = (advantage * log_prob).mean()
    objective = objective + penalty() if penalty is not None else objective
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g
    dist.average_gradients(params)
    optimizer.step()
    return loss.mean(), first


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


@dataclass
class SearchSetup:
    """Everything a search runs on, built before any file is written (``build_search``)."""

    cfg: Config
    device: torch.device
    num_classes: int
    images: tuple[int, int]          # (weights, architecture) split sizes
    steps: int                       # steps per epoch
    w_batches: Batches
    a_batches: Batches
    model: Supernet
    layout: bool                     # channels-last
    w_opt: torch.optim.Optimizer
    lr_sched: torch.optim.lr_scheduler.CosineAnnealingLR
    a_opt: torch.optim.Optimizer
    taus: dict[str, TemperatureScheduler]
    table: NB201Table | None         # monitoring only: never read by a step
    weight_logits: dict[str, Tensor] | None
    budget: BudgetConstraint | None = None
    threads: Threads | None = None   # how many threads, and why (stated in the header)

    @property
    def objects(self) -> dict[str, Any]:
        """What a checkpoint holds, by key."""
        return {"model": self.model, "w_opt": self.w_opt, "a_opt": self.a_opt,
                "lr_sched": self.lr_sched, **self.taus,
                **({"budget": self.budget} if self.budget is not None else {})}

    def derive(self) -> Genotype:
        """The genotype the logits point to now: the most probable one within the budget, if any."""
        genotype = self.model.genotype() if self.budget is None else \
            derive_within(self.model, self.budget.table, self.budget.limits)
        return _stamped(genotype, self.cfg.space)


def build_search(cfg: Config, saved_costs: Path | None = None) -> SearchSetup:
    """Load the data and build the supernet, optimisers and schedules of ``cfg``'s search.

    With ``search.budget``, also the cost table (its latency read from ``saved_costs``, a
    resumed run's ``costs.json``, when given) and the budget's constraint.
    """
    s = cfg.search
    device = dist.local_device(resolve_device(cfg.device))
    dist.per_rank_batch(s.batch_size, "search.batch_size")
    if s.few_shot.epochs and dist.world_size() > 1:
        raise InputError("search.few_shot: the few-shot phase does not run under torchrun; run the "
                         "search without torchrun, or set search.few_shot.epochs=0")
    threads = use_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults re-touching each step's activations
    seed_everything(cfg.seed)
    data = load_split(cfg.data, train=True)
    w_idx, a_idx = split_indices(len(data), cfg.data.split, cfg.seed)
    steps = min(len(w_idx), len(a_idx)) // s.batch_size or 1
    steps = min(steps, s.steps_per_epoch) if s.steps_per_epoch else steps

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
    layout = channels_last(s.channels_last, device)
    if layout:
        model = model.to(memory_format=torch.channels_last)
    w_opt = torch.optim.SGD(model.weight_parameters(), s.lr, momentum=s.momentum,
                            weight_decay=s.weight_decay, nesterov=s.nesterov and s.momentum > 0)
    a_opt = torch.optim.Adam(model.arch_parameters(), s.arch_lr, betas=tuple(s.arch_betas),
                             weight_decay=s.arch_weight_decay)

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
    budget = build_budget(cfg, model, data.num_classes, device, saved_costs) \
        if budget_limits(s.budget) else None
    return SearchSetup(cfg, device, data.num_classes, (len(w_idx), len(a_idx)), steps,
                       batches(w_idx, 1), batches(a_idx, 2), model, layout, w_opt,
                       torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, s.epochs, eta_min=s.lr_min),
                       a_opt, taus, table,
                       weight_sampling_logits(model, s.weight_sampling, cfg.data.image_size), budget,
                       threads)


COSTS = "costs.json"  # a budgeted run's cost table; a resumed run reuses its measured latency


def build_budget(cfg: Config, model: Supernet, num_classes: int, device: torch.device,
                 saved: Path | None = None) -> BudgetConstraint:
    """The cost table of the ``network:`` that ``cfg`` builds, and the budget's constraint.

    Fails in one line before the run starts when no architecture of the space fits.
    """
    b, limits = cfg.search.budget, budget_limits(cfg.search.budget)
    size = b.image_size or cfg.data.image_size
    measure = "latency_ms" in limits and not (saved is not None and saved.is_file())
    metrics = ["params", "macs"] + (["latency_ms"] if measure else [])
    build_network(cfg.space, model.genotype(), num_classes, cfg.network)  # options fail in one line
    with torch.random.fork_rng(devices=[]):  # building probe networks draws no number of the run's
        table = build_cost_table(model, lambda g: build_network(cfg.space, g, num_classes, cfg.network),
                                 size, metrics, device if measure else torch.device("cpu"),
                                 cfg.space, b.latency_batch)
    if "latency_ms" in limits and not measure:
        table.load_metric(json.loads(saved.read_text()), "latency_ms")
    check_feasible(model, table, limits)
    return BudgetConstraint(table, limits, b.dual_lr)


def open_run(setup: SearchSetup, run_dir: Path, resume: bool, force: bool) -> tuple[int, dict]:
    """Create (or resume into) ``run_dir``; returns the epochs done and the epoch counts grown."""
    cfg, main = setup.cfg, dist.is_main()  # rank 0 alone writes the run directory
    if main:
        prepare_run_dir(run_dir, resume=resume, force=force)
    start, grown = 0, {}
    if resume:
        start, grown = resume_from(run_dir, "search", setup.objects, to_dict(cfg))
        if "search.epochs" in grown:  # the saved config was edited: the schedules stretch
            epochs = cfg.search.epochs
            stretch_cosine(setup.lr_sched, epochs)
            for schedule in setup.taus.values():
                schedule.total = epochs if schedule.per == "epoch" else epochs * setup.steps
    elif main:
        save_config(cfg, run_dir / "config.yaml")
    if main and setup.budget is not None and not (run_dir / COSTS).is_file():
        (run_dir / COSTS).write_text(json.dumps(setup.budget.table.to_dict()) + "\n")
    if main:
        (run_dir / "genotypes").mkdir(exist_ok=True)
        for stale in (run_dir / "genotypes").glob("epoch_*.json"):  # written after the checkpoint
            if stale.stem[6:].isdigit() and int(stale.stem[6:]) > start:
                stale.unlink()
    return start, grown


def header(setup: SearchSetup, run_dir: Path, resume: bool, start: int,
           grown: dict[str, tuple]) -> list[str]:
    """The lines a search prints before its first epoch."""
    cfg, s = setup.cfg, setup.cfg.search
    if resume:
        lines = [f"resuming {run_dir} at epoch {start + 1}/{s.epochs}{setup.threads.note()}"
                 if start < s.epochs
                 else f"{run_dir} has finished all {s.epochs} epochs"]
        return lines + [f"config.yaml was edited: {key} {was} -> {now}" + (
            "; the learning-rate and temperature schedules now end there"
            if key == "search.epochs" else "") for key, (was, now) in grown.items()]
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

    model.train()
    for (xw, yw), (xa, ya) in monitor.steps(zip(setup.w_batches, setup.a_batches), setup.steps,
                                            epoch, s.batch_size * (2 if update_arch else 1)):
        xw, xa = in_layout(xw, setup.layout), in_layout(xa, setup.layout)
        model.tau = taus["tau"].tau
        if "tau_forward" in taus:
            model.tau_forward = taus["tau_forward"].tau
        if update_arch and s.order == "arch_first":
            update(xa, ya)
        model.sampling_logits = setup.weight_logits
        train_meter.add(*weight_step(model, setup.w_opt, xw, yw, s.grad_clip, s.amp, ddp), yw)
        model.sampling_logits = None
        if update_arch and s.order == "weights_first":
            update(xa, ya)
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


def arch_updater(setup: SearchSetup) -> Callable[[torch.optim.Optimizer, Tensor, Tensor],
                                                  tuple[Tensor, Tensor]]:
    """The architecture step of ``setup``'s estimator, with its budget's penalty and dual step."""
    s, model, budget = setup.cfg.search, setup.model, setup.budget
    penalty = (lambda: budget.penalty(model)) if budget is not None else None

    def update(optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if s.estimator == "reinforce":
            out = reinforce_step(model, optimizer, x, y, s.samples, s.amp, penalty)
        else:
            out = arch_step(model, optimizer, x, y, s.amp, penalty)
        if budget is not None:
            budget.update()
        return out
    return update


def end_epoch(setup: SearchSetup, epoch: int, run_dir: Path, monitor: Monitor,
              meters: tuple[Meter, Meter], lr: float, taus: dict[str, float],
              started: float) -> dict[str, Any]:
    """Derive and save the epoch's genotype, log its metrics, write the checkpoint."""
    cfg, s, model, main = setup.cfg, setup.cfg.search, setup.model, dist.is_main()
    dist.check_same(model.arch_parameters(), "architecture logits")
    dist.average_buffers(model)  # each rank's batch-norm statistics saw its slice of the batches
    genotype = setup.derive()
    if main:
        genotype.save(run_dir / "genotypes" / f"epoch_{epoch + 1:03d}.json")
    for meter in meters:
        meter.reduce()
    (train_loss, train_acc), (arch_loss, arch_acc) = (m.read() for m in meters)
    update_arch = epoch >= s.warmup_epochs
    check_finite([train_loss, arch_loss] if update_arch else [train_loss], epoch, run_dir)
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
    if main:
        save_checkpoint(checkpoint_state("search", epoch + 1, setup.objects, config=to_dict(cfg),
                                         num_classes=setup.num_classes,
                                         genotype=genotype.to_dict()), run_dir / CHECKPOINT)
    return metrics


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
    dist.begin_setup()
    run_dir, resume, force = start_mode(run_dir, resume, force)
    setup = build_search(cfg, run_dir / COSTS if resume else None)
    s, model = cfg.search, setup.model
    run_dir = dist.agree(run_dir)  # every rank is ready (else all stop), in rank 0's directory
    if setup.budget is not None:
        _same_table_everywhere(setup.budget.table, setup.device)
    start, grown = open_run(setup, run_dir, resume, force)
    # the logits stay out of DDP: the architecture step averages their gradients itself
    ddp = dist.wrap(model, setup.device, [f"arch_logits.{k}" for k in model.arch_logits])
    ddp = None if ddp is model else ddp
    monitor = Monitor(run_dir, epochs=s.epochs, start_epoch=start, quiet=quiet, title="search",
                      write=dist.is_main(), log_every=s.log_every)
    for line in header(setup, run_dir, resume, start, grown):
        monitor.print(line)
    metrics: dict[str, Any] = {}
    try:
        for epoch in range(start, s.epochs):
            started = time.time()
            lr, taus = setup.w_opt.param_groups[0]["lr"], {k: t.tau for k, t in setup.taus.items()}
            meters = run_epoch(setup, epoch, monitor, ddp)
            metrics = end_epoch(setup, epoch, run_dir, monitor, meters, lr, taus, started)
    except Exception:
        monitor.close()
        discard_failed_start(run_dir)
        raise
    finally:
        monitor.close()
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
                        cost, limits)


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


def _stamped(genotype: Genotype, space: str) -> Genotype:
    """Record the search space in the genotype, so that `nas train` needs no config to build it."""
    return genotype if genotype.space else dataclasses.replace(genotype, space=space)
