"""The steps of a run, and what a search's steps run on.

A search alternates ``weight_step`` (SGD on the weights, the logits frozen) and ``arch_step``
(Adam on the logits, no weight gradient) or ``reinforce_step`` (the score-function gradient);
``SearchSetup`` holds what they run on, for the search and for its few-shot phase. A retraining,
the few-shot phase's selection training and the studies' random-search baseline take
``train_step``s (``fit``: the short loop of a few epochs), and ``evaluate_model`` scores them.
The optimizers are built here, once for every run.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as dist
from .benchmarks import NB201Table
from .budget import BudgetConstraint, derive_within
from .config import Config, SearchConfig
from .data import Batches
from .genotype import Genotype
from .runtime import Meter, autocast, in_layout
from .schedules import TemperatureScheduler
from .supernet import SAMPLING, Supernet
from .threads import Threads


def sgd(params: Any, lr: float, momentum: float, weight_decay: float,
        nesterov: bool) -> torch.optim.SGD:
    """SGD as every run builds it: Nesterov momentum only where there is momentum."""
    return torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov and momentum > 0)


def search_optimizers(model: Supernet, s: SearchConfig,
                      lr: float) -> tuple[torch.optim.SGD, torch.optim.Adam]:
    """The weights' SGD at ``lr`` and the logits' Adam of the search settings ``s``."""
    return (sgd(model.weight_parameters(), lr, s.momentum, s.weight_decay, s.nesterov),
            torch.optim.Adam(model.arch_parameters(), s.arch_lr, betas=tuple(s.arch_betas),
                             weight_decay=s.arch_weight_decay))


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
    with autocast(x.device, amp):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    step_logits(model, optimizer, loss + penalty() if penalty is not None else loss)
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
    log_prob = torch.stack([model.log_prob(index, edges) for index, edges in drawn])
    objective = (advantage * log_prob).mean()
    step_logits(model, optimizer, objective + penalty() if penalty is not None else objective)
    return loss.mean(), first


def step_logits(model: Supernet, optimizer: torch.optim.Optimizer, objective: Tensor) -> None:
    """Give the logits the gradient of ``objective`` (zero where it does not reach them),
    averaged over the ranks, and take the optimizer's step; no weight gradient is computed."""
    params = model.arch_parameters()
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g
    dist.average_gradients(params)
    optimizer.step()


def draws_together(model: Supernet, s: SearchConfig, weight_logits: dict[str, Tensor] | None,
                   arch_first: bool) -> bool:
    """Whether a search step's two samples can be drawn before either step runs and read on the
    host at once (``draw_step_samples``), giving the very samples the steps would draw.

    In a hard sampling mode with the gdas-style architecture step (not REINFORCE, whose samples
    are forward-only), when the second forward's sample does not depend on the first step's
    update: the weight step leaves the logits as they are, and after an architecture step a
    weight step draws from fixed logits (``weight_sampling``), if no edge logits are learned.
    A supernet with its own ``sample`` draws as it always did.
    """
    return (type(model).sample is Supernet.sample and SAMPLING[model.mode].hard
            and s.estimator != "reinforce"
            and (not arch_first or (weight_logits is not None and not model.edge_logits)))


def draw_step_samples(model: Supernet, weight_logits: dict[str, Tensor] | None, arch_first: bool,
                      amp: bool, device: torch.device) -> None:
    """Draw the samples of a search step's weight and architecture forwards now, in the order
    the step runs them and each as its forward would (the weight step's from ``weight_logits``
    with the logits frozen), read on the host together: one sync for the step, not two. The
    forwards take them in order; ``Supernet.drop_drawn`` forgets any left."""
    def weights() -> None:
        model.sampling_logits = weight_logits
        try:
            with frozen(model.arch_parameters()):
                model.sample()
        finally:
            model.sampling_logits = None

    with model.drawing_ahead(), autocast(device, amp):
        for draw in ((model.sample, weights) if arch_first else (weights, model.sample)):
            draw()


def outputs(out: Any) -> tuple[Tensor, Tensor | None]:
    """Networks return logits, or (logits, auxiliary logits or None)."""
    if isinstance(out, tuple):
        return out[0], out[1] if len(out) > 1 else None
    return out, None


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
               grad_clip: float, amp: bool = False, aux_weight: float = 0.0,
               aux_always: bool = False) -> tuple[Tensor, Tensor]:
    """One step of a network on its cross-entropy; returns (loss, logits), detached.

    An auxiliary head's loss joins, weighted by ``aux_weight``, when that is above 0 or
    ``aux_always`` (under DDP every parameter must get a gradient, zero here, for its
    all-reduce to complete). The gradient norm of the optimizer's parameters is clipped to
    ``grad_clip`` when above 0.
    """
    with autocast(x.device, amp):
        logits, aux = outputs(net(x))
    loss = F.cross_entropy(logits.float(), y)
    total = loss
    if aux is not None and (aux_weight > 0 or aux_always):
        total = loss + aux_weight * F.cross_entropy(aux.float(), y)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]],
                                 grad_clip)
    optimizer.step()
    return loss.detach(), logits.detach()


def fit(net: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int, grad_clip: float,
        channels_last: bool = False, progress: Callable[[], None] = lambda: None) -> None:
    """The short training loop: ``epochs`` epochs of ``train_step`` over ``batches``, the
    schedule stepped after each (the auxiliary head's output, if any, left out)."""
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        net.train()
        for x, y in batches:
            train_step(net, optimizer, in_layout(x, channels_last), y, grad_clip)
        scheduler.step()
        progress()


@torch.no_grad()
def evaluate_model(model: nn.Module, batches: Batches, amp: bool = False,
                   channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) over every batch (of every rank's share)."""
    model.eval()
    meter = Meter(batches.device)
    batches.set_epoch(0)
    for x, y in batches:
        x = in_layout(x, channels_last)
        with autocast(x.device, amp):
            logits, _ = outputs(model(x))
        meter.add(F.cross_entropy(logits.float(), y), logits, y)
    if batches.world > 1:
        meter.reduce()
    return meter.read()


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
        return stamped(genotype, self.cfg.space)


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



def stamped(genotype: Genotype, space: str) -> Genotype:
    """Record the search space in the genotype, so that `nas train` needs no config to build it."""
    return genotype if genotype.space else dataclasses.replace(genotype, space=space)
