"""Retraining a genotype from scratch, and evaluating a trained network (DARTS recipe).

SGD with a cosine learning rate, an auxiliary head whose loss is weighted by
``train.auxiliary_weight``, drop path rising linearly from 0 to ``train.drop_path``, cutout
augmentation, and a test-set evaluation after every epoch. The run directory follows the
search's conventions; it ends with ``result.json``.
"""
from __future__ import annotations

import inspect
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed as dist
from .config import Config, build_config
from .data import Batches, load_split, seed_of
from .errors import InputError, first_line
from .genotype import Genotype
from .monitor import Monitor
from .cost import count_macs
from .network import count_parameters, set_drop_path
from .profiling import profile_network, with_network
from .spaces import build_network, build_supernet, check_network, check_supernet, get_space
from .steps import evaluate_model, sgd, train_step
from .threads import Threads, use_threads
from .lifecycle import begin, epochs_of, open_monitor, open_run_dir, resume_lines, save_epoch
from .runtime import (Meter, channels_last, check_finite, first_mismatch, in_layout,
                      keep_freed_memory, load_checkpoint, resolve_device, seed_everything,
                      steps_note, stretch_cosine)


@dataclass
class TrainResult:
    """What a finished retraining hands back (also written to ``result.json``)."""

    test_acc: float
    test_loss: float
    params: int
    macs: int
    run_dir: Path


def space_of(cfg: Config, genotype: Genotype) -> str:
    """The search space a genotype belongs to: its own record, else the config's."""
    return genotype.space or cfg.space


def recipe_line(cfg: Config, space: str, epochs_set: bool = False) -> str:
    """What a retraining with ``cfg`` will run, in one line (printed when no --config was given).

    The defaults are the DARTS retraining recipe, made for the darts network; for another space
    they are refused (InputError) unless ``epochs_set`` (``--set train.epochs=N``) says the user
    chose at least how long to train. An auxiliary head is named only where the network has one
    (an ``auxiliary`` option that is on).
    """
    t = cfg.train
    if space != "darts" and not epochs_set:
        raise InputError(f"the genotype is of the {space} space, and without --config nas train's "
                         f"defaults are the DARTS retraining recipe ({t.epochs} epochs, made for "
                         "the darts network): pass --config FILE with this space's train: and "
                         "network: sections, or --set train.epochs=N to train with the other "
                         "defaults")
    network = get_space(space).network
    defaults = {k: p.default for k, p in inspect.signature(network).parameters.items()
                if p.default is not inspect.Parameter.empty and k != "num_classes"} if network else {}
    options = {**defaults, **cfg.network}
    listed = ", ".join(f"{k}={v}" for k, v in options.items())
    auxiliary = f", auxiliary weight {t.auxiliary_weight:g}" if options.get("auxiliary") else ""
    darts = space == "darts"
    recipe = "the default recipe (DARTS retraining)" if darts else "the defaults with your --set"
    change = "pass --config FILE or --set train.epochs=N to change it" if darts else \
        "pass --config FILE to change them"
    return (f"train: no --config, so {recipe}: {space} network ({listed}), {t.epochs} epochs of "
            f"batch {t.batch_size}, lr {t.lr:g} cosine, drop path {t.drop_path:g}, cutout "
            f"{t.cutout}{auxiliary}; {change}")


def checked_network(cfg: Config, space: str, genotype: Genotype, num_classes: int) -> nn.Module:
    """Build the network ``train`` retrains and run two images through it (one line if it fails)."""
    try:
        model = build_network(space, genotype, num_classes, cfg.network)
    except InputError as exc:
        if space == cfg.space:
            raise
        raise InputError(f"{exc} (the genotype belongs to the {space} space, the config is for "
                         f"{cfg.space})") from None
    check_network(model, num_classes, cfg.data.image_size, f"search space '{space}'")
    if cfg.train.drop_path > 0 and set_drop_path(model, 0.0) == 0:
        raise InputError(f"search space '{space}': its network has no nas.GenotypeCell, no "
                         f"nas.ResidualBranch and no drop_path_prob attribute, so "
                         f"train.drop_path={cfg.train.drop_path} would do nothing; set "
                         "train.drop_path: 0, or build the cells from nas.GenotypeCell")
    return model


def check_retraining(cfg: Config) -> None:
    """What ``nas run`` checks before it searches: the ``network:`` and ``train:`` sections
    build a network that runs, for the genotype of the config's supernet as it starts."""
    classes = 10  # the options are checked, not the dataset: the data is read once, by the search
    supernet = build_supernet(cfg.space, classes, cfg.search.mode, cfg.seed, cfg.supernet,
                              edge_topk=cfg.search.edge_topk)
    check_supernet(supernet, cfg.space, classes, cfg.data.image_size)
    genotype = supernet.genotype()
    checked_network(cfg, space_of(cfg, genotype), genotype, classes)


@dataclass
class TrainSetup:
    """Everything a retraining runs on, built before any file is written (``build_training``)."""

    cfg: Config
    genotype: Genotype
    space: str
    device: torch.device
    num_classes: int
    images: tuple[int, int]          # (training, test) images
    model: nn.Module
    layout: bool                     # channels-last
    params: int                      # counted before SyncBatchNorm, an auxiliary head excluded
    macs: int
    train_batches: Batches
    test_batches: Batches
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.CosineAnnealingLR
    threads: Threads

    @property
    def objects(self) -> dict[str, Any]:
        """What a checkpoint holds, by key."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler}


def build_training(cfg: Config, genotype: Genotype) -> TrainSetup:
    """Load the data and build the network, optimiser and schedule of ``cfg``'s retraining."""
    t = cfg.train
    device = dist.local_device(resolve_device(cfg.device))
    dist.per_rank_batch(t.batch_size, "train.batch_size")
    if t.sync_bn and dist.world_size() > 1 and device.type != "cuda":
        raise InputError("train.sync_bn: PyTorch's SyncBatchNorm runs on GPUs only; set it to "
                         "false on the CPU")
    threads = use_threads(cfg.threads)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults re-touching each step's activations
    seed_everything(cfg.seed)
    train_data, test_data = load_split(cfg.data, True), load_split(cfg.data, False)
    if test_data.num_classes != train_data.num_classes:
        raise InputError("the training and test splits have different numbers of classes")
    space = space_of(cfg, genotype)
    model = checked_network(cfg, space, genotype, train_data.num_classes)
    params = count_parameters(model)
    macs = count_macs(model, (1, 3, cfg.data.image_size, cfg.data.image_size))
    if t.sync_bn and dist.world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same state dict keys
    model = model.to(device)
    layout = channels_last(t.channels_last, device)
    if layout:
        model = model.to(memory_format=torch.channels_last)
    shard = (dist.rank(), dist.world_size())
    train_batches = Batches(train_data, t.batch_size, train=True, device=device,
                            on_device=cfg.data.on_device, workers=cfg.data.workers, pad=cfg.data.pad,
                            cutout=t.cutout, seed=seed_of(cfg.seed, 3), max_steps=t.steps_per_epoch,
                            shard=shard)
    test_batches = Batches(test_data, -(-t.eval_batch_size // shard[1]), train=False,
                           device=device, on_device=cfg.data.on_device, workers=cfg.data.workers,
                           shard=shard)
    optimizer = sgd(model.parameters(), t.lr, t.momentum, t.weight_decay, t.nesterov)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, t.epochs, eta_min=t.lr_min)
    return TrainSetup(cfg, genotype, space, device, train_data.num_classes,
                      (len(train_data), len(test_data)), model, layout, params, macs,
                      train_batches, test_batches, optimizer, scheduler, threads)


def header(setup: TrainSetup) -> str:
    """The line a new retraining prints before its first epoch."""
    t = setup.cfg.train
    n_train, n_test = setup.images
    per_epoch = steps_note(len(setup.train_batches), t.steps_per_epoch, "train.steps_per_epoch",
                           f"the {n_train:,} training images", t.batch_size)
    auxiliary = any("auxiliary" in name for name, _ in setup.model.named_parameters())
    return (f"train: {setup.space} network, {setup.params:,} parameters"
            f"{' (auxiliary head excluded)' if auxiliary else ''}, "
            f"{setup.macs / 1e6:.1f}M multiply-adds, {n_train} training / "
            f"{n_test} test images, {per_epoch}"
            f"{dist.batch_note(t.batch_size, setup.device)}, device {setup.device}"
            f"{setup.threads.note()}")


def run_epoch(setup: TrainSetup, net: nn.Module, epoch: int, monitor: Monitor,
              run_dir: Path) -> dict[str, float]:
    """One epoch of training, then the test set; logs and returns the epoch's metrics."""
    t, model, optimizer = setup.cfg.train, setup.model, setup.optimizer
    started = time.time()
    drop_prob = t.drop_path * epoch / t.epochs
    set_drop_path(model, drop_prob)  # every GenotypeCell, and drop_path_prob if any
    lr = optimizer.param_groups[0]["lr"]
    setup.train_batches.set_epoch(epoch)
    meter = Meter(setup.device)
    model.train()
    for x, y in monitor.steps(setup.train_batches, len(setup.train_batches), epoch, t.batch_size):
        loss, logits = train_step(net, optimizer, in_layout(x, setup.layout), y, t.grad_clip,
                                  t.amp, t.auxiliary_weight, aux_always=net is not model)
        meter.add(loss, logits, y)
        monitor.step_scalars(**{"loss/train": meter.last, "lr": lr})
        if monitor.want_postfix():
            mean_loss, acc = meter.read()
            monitor.postfix(loss=mean_loss, acc=acc)
    setup.scheduler.step()
    meter.reduce()
    train_loss, train_acc = meter.read()
    check_finite([train_loss], epoch, run_dir)
    dist.broadcast_buffers(model)  # every rank tests rank 0's network, the one saved
    test_loss, test_acc = evaluate_model(model, setup.test_batches, t.amp, setup.layout)
    metrics = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
               "test_acc": test_acc, "lr": lr, "drop_path": drop_prob,
               "seconds": time.time() - started}
    monitor.epoch_end(epoch, metrics, {
        "loss/train": train_loss, "accuracy/train": train_acc, "loss/test": test_loss,
        "accuracy/test": test_acc, "lr": lr, "drop_path": drop_prob})
    return metrics


def train(cfg: Config, genotype: Genotype, run_dir: str | Path, *, resume: bool = False,
          force: bool = False, quiet: bool = False) -> TrainResult:
    """Train the network of ``genotype`` from scratch into ``run_dir`` (or resume it there).

    An existing ``run_dir`` is refused unless ``resume`` or ``force``, as in ``search``.
    """
    run_dir, resume, force = begin(run_dir, resume, force)
    setup, t = build_training(cfg, genotype), cfg.train
    run_dir = dist.agree(run_dir)  # every rank is ready (else all stop), in rank 0's directory
    start, grown = open_run_dir("train", run_dir, cfg, setup.objects, resume=resume, force=force,
                                stretch=lambda epochs: stretch_cosine(setup.scheduler, epochs))
    if not resume and dist.is_main():
        genotype.save(run_dir / "genotype.json")
    net = dist.wrap(setup.model, setup.device)  # every parameter gets a gradient: DDP's own all-reduce
    monitor = open_monitor("train", run_dir, t.epochs, start, quiet, t.log_every)
    lines = resume_lines("train", run_dir, start, t.epochs, grown, setup.threads.note(),
                         "the learning-rate schedule now ends there") if resume else [header(setup)]
    for line in lines:
        monitor.print(line)
    test_loss = test_acc = math.nan
    with epochs_of(run_dir, monitor):
        for epoch in range(start, t.epochs):
            metrics = run_epoch(setup, net, epoch, monitor, run_dir)
            test_loss, test_acc = metrics["test_loss"], metrics["test_acc"]
            save_epoch("train", epoch, setup.objects, cfg, run_dir, space=setup.space,
                       num_classes=setup.num_classes, genotype=genotype.to_dict(),
                       test_acc=test_acc, test_loss=test_loss)
    if math.isnan(test_acc):  # resumed a finished run: evaluate what it holds
        test_loss, test_acc = evaluate_model(setup.model, setup.test_batches, t.amp, setup.layout)
    return finish(setup, run_dir, test_loss, test_acc)


def finish(setup: TrainSetup, run_dir: Path, test_loss: float, test_acc: float) -> TrainResult:
    """Write ``result.json`` and ``profile.json`` (rank 0); every rank returns the result."""
    cfg = setup.cfg
    result = {"test_acc": test_acc, "test_loss": test_loss, "params": setup.params,
              "macs": setup.macs, "epochs": cfg.train.epochs, "space": setup.space,
              "genotype": str(setup.genotype)}
    if dist.is_main():
        (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        write_profile(run_dir / "profile.json", setup.model, cfg, setup.genotype, setup.space,
                      setup.num_classes, setup.device, setup.layout)
    dist.barrier()
    return TrainResult(test_acc, test_loss, setup.params, setup.macs, run_dir)


def write_profile(path: Path, model: nn.Module, cfg: Config, genotype: Genotype, space: str,
                  num_classes: int, device: torch.device, layout: bool) -> None:
    """``profile.json``: what the trained network costs on the run's device (``nas profile``).

    The run's results are saved already: a network the profiler cannot follow costs this file
    alone, with one line saying so.
    """
    try:
        profile = profile_network(model, cfg.data.image_size, device, genotype=genotype,
                                  channels_last=layout)
    except Exception as exc:  # a plugin's network the counters cannot follow
        print(f"nas train: profile.json not written: {first_line(exc)}", file=sys.stderr)
        return
    path.write_text(json.dumps(with_network(profile, space, genotype, cfg.network, num_classes),
                               indent=2) + "\n")


def evaluate_checkpoint(path: str | Path, *, data_root: str | None = None, device: str = "auto",
                        batch_size: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Test accuracy of the network in a ``nas train`` checkpoint (``threads``: as ``threads``
    in a config; None: the checkpoint's config's)."""
    state = load_checkpoint(path, "train")
    needed = {"config": dict, "genotype": dict, "space": str, "num_classes": int, "model": dict}
    for key, kind in needed.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise InputError(f"{path} is not a complete train checkpoint: its '{key}' is "
                             f"{'missing' if key not in state else type(state[key]).__name__}, "
                             f"expected a {kind.__name__}")
    overrides = [f"device={device}"]
    cfg = build_config(state["config"], overrides)
    if data_root is not None:
        cfg.data.root = data_root
    genotype = Genotype.from_dict(state["genotype"])
    dev = resolve_device(cfg.device)
    use_threads(cfg.threads if threads is None else threads)
    model = build_network(state["space"], genotype, state["num_classes"], cfg.network)
    problem = first_mismatch(model, state["model"])
    if problem:
        raise InputError(f"{path} does not match the network its config builds: {problem}")
    model.load_state_dict(state["model"])
    layout = channels_last(cfg.train.channels_last, dev)  # as the run evaluated it
    model = model.to(dev, memory_format=torch.channels_last if layout else torch.preserve_format)
    test_data = load_split(cfg.data, False)
    batches = Batches(test_data, batch_size or cfg.train.eval_batch_size, train=False, device=dev,
                      on_device=cfg.data.on_device, workers=cfg.data.workers)
    loss, acc = evaluate_model(model, batches, cfg.train.amp, layout)
    return {"test_acc": acc, "test_loss": loss, "images": len(test_data), "epoch": state["epoch"],
            "params": count_parameters(model)}
