"""The search loop: alternate a weight step and an architecture step, anneal the temperature.

Each step, as the GDAS reference does: an SGD step of the weights on a batch of the weight
split, then an Adam step of the architecture logits on a batch of the architecture split
(``search.order: arch_first`` swaps them, as DARTS does), each forward drawing its own sample.
The weight step does not compute gradients for the logits, nor the architecture step for the
weights. Every epoch ends with a checkpoint from which ``resume`` continues exactly.

Two choices beyond GDAS (README, "Search quality"): ``weight_sampling`` draws the weight steps'
subnetworks from fixed op probabilities (uniform, or by parameter count) instead of the logits,
and ``estimator: reinforce`` replaces the GDAS gradient of the architecture step by the
score-function gradient with a leave-one-out baseline over several forward-only samples.
``tau_forward`` gives the hard sample its own temperature and schedule (decoupled from ``tau``,
the relaxation's), and ``edge_topk`` samples the inputs each node runs (README, "Sampling modes").
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as dist
from .benchmarks import BenchmarkResult, load_table
from .config import Config, forward_tau_on, save_config, to_dict
from .data import Batches, load_split, seed_of, split_indices
from .genotype import Genotype
from .monitor import Monitor
from .runtime import (CHECKPOINT, Meter, autocast, channels_last, check_finite, checkpoint_state,
                      discard_failed_start, in_layout, keep_freed_memory,
                      prepare_run_dir, resolve_device, resume_from, save_checkpoint,
                      seed_everything, start_mode, stretch_cosine)
from .schedules import TemperatureScheduler
from .ops import build_op
from .spaces import build_supernet, check_supernet
from .supernet import Supernet
from .threads import use_threads


@dataclass
class SearchResult:
    """What a finished search hands back."""

    genotype: Genotype
    run_dir: Path
    metrics: dict[str, Any]
    benchmark: BenchmarkResult | None = None  # the genotype in search.benchmark's table


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
              amp: bool) -> tuple[Tensor, Tensor]:
    """One Adam step of the logits; no weight gradient is computed. Returns (loss, logits)."""
    params = model.arch_parameters()
    with autocast(x.device, amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g
    dist.average_gradients(params)
    optimizer.step()
    return loss.detach(), logits.detach()


def reinforce_step(model: Supernet, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
                   samples: int, amp: bool) -> tuple[Tensor, Tensor]:
    """One Adam step of the logits by the score function with a leave-one-out baseline (RLOO).

    ``samples`` subnetworks drawn from the supernet's distribution are run forward only on the same batch;
    each one's log-probability is weighted by its loss minus the mean loss of the others, so no
    gradient flows through the ops. Returns the mean loss and the first subnetwork's logits.
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
    grads = torch.autograd.grad((advantage * log_prob).mean(), params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g
    dist.average_gradients(params)
    optimizer.step()
    return loss.mean(), first


def op_parameters(name: str) -> int:
    """Trainable parameters of op ``name`` on a 16-channel stride-1 edge of a supernet."""
    return sum(p.numel() for p in build_op(name, 16, 1, False, False).parameters())


def weight_sampling_logits(model: Supernet, how: str) -> dict[str, Tensor] | None:
    """Fixed logits the weight steps sample from: None (the architecture's), uniform, or params.

    ``params`` samples op k with probability proportional to ``n_k + mean(n)``, ``n`` the ops'
    parameter counts: ops with weights to learn get more of the training, and ops without any
    keep at least half their uniform share, so every subnetwork stays in the supernet's reach.
    """
    if how == "arch":
        return None
    out = {}
    for kind, ops in model.op_names.items():
        n = torch.tensor([float(op_parameters(op)) for op in ops])
        out[kind] = torch.zeros(len(ops)) if how == "uniform" else (n + n.mean()).log()
    return out


def search(cfg: Config, run_dir: str | Path, *, resume: bool = False, force: bool = False,
           quiet: bool = False) -> SearchResult:
    """Run (or resume) a search into ``run_dir``; write checkpoints, genotypes and logs there.

    An existing ``run_dir`` is refused unless ``resume`` (continue it) or ``force`` (replace
    it, once the data and the supernet are ready).
    """
    dist.begin_setup()
    run_dir, resume, force = start_mode(run_dir, resume, force)
    s = cfg.search
    device = dist.local_device(resolve_device(cfg.device))
    dist.per_rank_batch(s.batch_size, "search.batch_size")
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

    w_batches, a_batches = batches(w_idx, 1), batches(a_idx, 2)
    model = build_supernet(cfg.space, data.num_classes, s.mode, cfg.seed, cfg.supernet,
                           edge_topk=s.edge_topk).to(device)
    check_supernet(model, cfg.space, data.num_classes, cfg.data.image_size)  # before any file
    layout = channels_last(s.channels_last, device)
    if layout:
        model = model.to(memory_format=torch.channels_last)
    w_opt = torch.optim.SGD(model.weight_parameters(), s.lr, momentum=s.momentum,
                            weight_decay=s.weight_decay, nesterov=s.nesterov and s.momentum > 0)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, s.epochs, eta_min=s.lr_min)
    a_opt = torch.optim.Adam(model.arch_parameters(), s.arch_lr, betas=tuple(s.arch_betas),
                             weight_decay=s.arch_weight_decay)

    def scheduler(t) -> TemperatureScheduler:
        total = s.epochs if t.per == "epoch" else s.epochs * steps
        return TemperatureScheduler(t.schedule, total, t.max, t.min, t.per, **t.options)

    tau = scheduler(s.tau)
    # the forward temperature has its own schedule, checkpointed only when it is on, so that
    # GDAS runs (and their checkpoints) are what they were before it existed
    taus = {"tau": tau, **({"tau_forward": scheduler(s.tau_forward)} if forward_tau_on(s) else {})}
    # Monitoring only: the table is read after each epoch's genotype is fixed, never by a step.
    table = load_table(s.benchmark) if s.benchmark else None
    if table is not None:
        table.query(model.genotype())  # a space the table cannot score fails before the run starts

    weight_logits = weight_sampling_logits(model, s.weight_sampling)
    model.estimator = s.estimator if s.estimator in ("gumbel_rao", "reinmax") else "gdas"
    model.rao_samples = s.samples

    def update(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if s.estimator == "reinforce":
            return reinforce_step(model, a_opt, x, y, s.samples, s.amp)
        return arch_step(model, a_opt, x, y, s.amp)

    start = 0
    run_dir = dist.agree(run_dir)  # every rank is ready (else all stop), in rank 0's directory
    main = dist.is_main()  # rank 0 alone writes the run directory
    if main:
        prepare_run_dir(run_dir, resume=resume, force=force)
    objects = {"model": model, "w_opt": w_opt, "a_opt": a_opt, "lr_sched": lr_sched, **taus}
    grown: dict[str, tuple] = {}
    if resume:
        start, grown = resume_from(run_dir, "search", objects, to_dict(cfg))
        if "search.epochs" in grown:  # the saved config was edited: the schedules stretch
            stretch_cosine(lr_sched, s.epochs)
            for schedule in taus.values():
                schedule.total = s.epochs if schedule.per == "epoch" else s.epochs * steps
    elif main:
        save_config(cfg, run_dir / "config.yaml")
    if main:
        (run_dir / "genotypes").mkdir(exist_ok=True)
        for stale in (run_dir / "genotypes").glob("epoch_*.json"):  # written after the checkpoint
            if stale.stem[6:].isdigit() and int(stale.stem[6:]) > start:
                stale.unlink()
    # the logits stay out of DDP: the architecture step averages their gradients itself
    ddp = dist.wrap(model, device, [f"arch_logits.{k}" for k in model.arch_logits])
    ddp = None if ddp is model else ddp

    monitor = Monitor(run_dir, epochs=s.epochs, start_epoch=start, quiet=quiet, title="search",
                      write=main)
    if not resume:
        n_params = sum(p.numel() for p in model.weight_parameters())
        how = "".join([f", {s.estimator} estimator" if s.estimator != "gdas" else "",
                       f", {s.weight_sampling} weight sampling" if s.weight_sampling != "arch" else "",
                       ", decoupled forward temperature" if "tau_forward" in taus else "",
                       f", top-{s.edge_topk} inputs per node" if s.edge_topk else ""])
        monitor.print(f"search: {cfg.space} space, {s.mode} mode{how}, {len(w_idx)}/{len(a_idx)} "
                      f"images (weights/architecture), {steps} steps/epoch"
                      f"{dist.batch_note(s.batch_size, device)}, {n_params:,} weights, "
                      f"device {device}{threads.note()}")
    else:
        monitor.print(f"resuming {run_dir} at epoch {start + 1}/{s.epochs}{threads.note()}"
                      if start < s.epochs else f"{run_dir} has finished all {s.epochs} epochs")
        for key, (was, now) in grown.items():
            monitor.print(f"config.yaml was edited: {key} {was} -> {now}" + (
                "; the learning-rate and temperature schedules now end there"
                if key == "search.epochs" else ""))
    metrics: dict[str, Any] = {}
    try:
        for epoch in range(start, s.epochs):
            started = time.time()
            w_batches.set_epoch(epoch)
            a_batches.set_epoch(epoch)
            update_arch = epoch >= s.warmup_epochs
            train_meter, arch_meter = Meter(device), Meter(device)
            lr, tau_used = w_opt.param_groups[0]["lr"], {k: t.tau for k, t in taus.items()}
            model.train()
            for (xw, yw), (xa, ya) in monitor.steps(zip(w_batches, a_batches), steps, epoch):
                xw, xa = in_layout(xw, layout), in_layout(xa, layout)
                model.tau = tau.tau
                if "tau_forward" in taus:
                    model.tau_forward = taus["tau_forward"].tau
                if update_arch and s.order == "arch_first":
                    arch_meter.add(*update(xa, ya), ya)
                model.sampling_logits = weight_logits
                train_meter.add(*weight_step(model, w_opt, xw, yw, s.grad_clip, s.amp, ddp), yw)
                model.sampling_logits = None
                if update_arch and s.order == "weights_first":
                    arch_meter.add(*update(xa, ya), ya)
                for t in taus.values():
                    if t.per == "iteration":
                        t.step()
                if monitor.want_postfix():
                    loss, acc = train_meter.read()
                    monitor.postfix(loss=loss, acc=acc, **taus_of(model, taus))
            lr_sched.step()
            for t in taus.values():
                if t.per == "epoch":
                    t.step()
            dist.check_same(model.arch_parameters(), "architecture logits")
            genotype = _stamped(model.genotype(), cfg.space)
            if main:
                genotype.save(run_dir / "genotypes" / f"epoch_{epoch + 1:03d}.json")
            train_meter.reduce()
            arch_meter.reduce()
            train_loss, train_acc = train_meter.read()
            arch_loss, arch_acc = arch_meter.read()
            check_finite([train_loss, arch_loss] if update_arch else [train_loss], epoch, run_dir)
            metrics = {"train_loss": train_loss, "train_acc": train_acc, "arch_loss": arch_loss,
                       "arch_acc": arch_acc, **tau_used, "lr": lr, "arch_lr": s.arch_lr,
                       "entropy": model.entropy(), "seconds": time.time() - started}
            metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                       for k, v in metrics.items()}
            scalars = {"loss/train": train_loss, "accuracy/train": train_acc, **tau_used,
                       "lr/weights": lr, "lr/arch": s.arch_lr, "entropy": metrics["entropy"]}
            if table is not None:
                bench = table.query(genotype).scalars()
                scalars.update(bench)
                metrics.update({k.replace("/", "_"): v for k, v in bench.items()})
            if update_arch:
                scalars.update({"loss/arch": arch_loss, "accuracy/arch": arch_acc})
            monitor.epoch_end(epoch, {**metrics, "genotype": str(genotype)}, scalars)
            monitor.architecture(epoch, model, genotype)
            if main:
                save_checkpoint(checkpoint_state("search", epoch + 1, objects,
                                                 config=to_dict(cfg), num_classes=data.num_classes,
                                                 genotype=genotype.to_dict()), run_dir / CHECKPOINT)
    except Exception:
        monitor.close()
        discard_failed_start(run_dir)
        raise
    finally:
        monitor.close()
    genotype = _stamped(model.genotype(), cfg.space)
    if main:
        genotype.save(run_dir / "genotype.json")
    dist.barrier()  # every rank returns once the run directory is complete
    return SearchResult(genotype, run_dir, metrics,
                        table.query(genotype) if table is not None else None)


def taus_of(model: Supernet, taus: dict[str, TemperatureScheduler]) -> dict[str, float]:
    """The temperatures a step just used, for the progress bar."""
    return {"tau": model.tau, **({"tau_f": model.tau_forward} if "tau_forward" in taus else {})}


def _stamped(genotype: Genotype, space: str) -> Genotype:
    """Record the search space in the genotype, so that `nas train` needs no config to build it."""
    return genotype if genotype.space else dataclasses.replace(genotype, space=space)
