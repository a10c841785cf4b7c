"""Retraining a genotype from scratch, and evaluating a trained network (DARTS recipe).

SGD with a cosine learning rate, an auxiliary head whose loss is weighted by
``train.auxiliary_weight``, drop path rising linearly from 0 to ``train.drop_path``, cutout
augmentation, and a test-set evaluation after every epoch. The run directory follows the
search's conventions; it ends with ``result.json``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as dist
from .config import Config, build_config, save_config, to_dict
from .data import Batches, load_split, seed_of
from .errors import InputError
from .genotype import Genotype
from .monitor import Monitor
from .cost import count_macs
from .network import count_parameters, set_drop_path
from .spaces import build_network, check_network
from .threads import use_threads
from .runtime import (CHECKPOINT, Meter, autocast, channels_last, check_finite, checkpoint_state,
                      discard_failed_start, first_mismatch, in_layout, keep_freed_memory,
                      load_checkpoint, prepare_run_dir, resolve_device, resume_from,
                      save_checkpoint, seed_everything, start_mode, steps_note, stretch_cosine)


@dataclass
class TrainResult:
    """What a finished retraining hands back (also written to ``result.json``)."""

    test_acc: float
    test_loss: float
    params: int
    macs: int
    run_dir: Path


def _outputs(out: Any) -> tuple[Tensor, Tensor | None]:
    """Networks return logits, or (logits, auxiliary logits or None)."""
    if isinstance(out, tuple):
        return out[0], out[1] if len(out) > 1 else None
    return out, None


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
    import inspect
    from .spaces import get_space

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
            logits, _ = _outputs(model(x))
        meter.add(F.cross_entropy(logits.float(), y), logits, y)
    if batches.world > 1:
        meter.reduce()
    return meter.read()


def fit_epoch(model: nn.Module, opt: torch.optim.Optimizer, batches: Batches, grad_clip: float) -> None:
    """One epoch of plain steps on ``batches`` (an auxiliary head's output left out): the short
    trainings from scratch that rank cells after a search."""
    model.train()
    for x, y in batches:
        logits, _ = _outputs(model(x))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()


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
        raise InputError(f"search space '{space}': its network has no nas.GenotypeCell and no "
                         f"drop_path_prob attribute, so train.drop_path={cfg.train.drop_path} would "
                         "do nothing; set train.drop_path: 0, or build the cells from nas.GenotypeCell")
    return model


def check_retraining(cfg: Config) -> None:
    """What ``nas run`` checks before it searches: the ``network:`` and ``train:`` sections
    build a network that runs, for the genotype of the config's supernet as it starts."""
    from .spaces import build_supernet, check_supernet
    classes = 10  # the options are checked, not the dataset: the data is read once, by the search
    supernet = build_supernet(cfg.space, classes, cfg.search.mode, cfg.seed, cfg.supernet,
                              edge_topk=cfg.search.edge_topk)
    check_supernet(supernet, cfg.space, classes, cfg.data.image_size)
    genotype = supernet.genotype()
    checked_network(cfg, space_of(cfg, genotype), genotype, classes)


def train(cfg: Config, genotype: Genotype, run_dir: str | Path, *, resume: bool = False,
          force: bool = False, quiet: bool = False) -> TrainResult:
    """Train the network of ``genotype`` from scratch into ``run_dir`` (or resume it there).

    An existing ``run_dir`` is refused unless ``resume`` or ``force``, as in ``search``.
    """
    dist.begin_setup()
    run_dir, resume, force = start_mode(run_dir, resume, force)
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
    optimizer = torch.optim.SGD(model.parameters(), t.lr, momentum=t.momentum,
                                weight_decay=t.weight_decay, nesterov=t.nesterov and t.momentum > 0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, t.epochs, eta_min=t.lr_min)

    start = 0
    run_dir = dist.agree(run_dir)  # every rank is ready (else all stop), in rank 0's directory
    main = dist.is_main()  # rank 0 alone writes the run directory
    if main:
        prepare_run_dir(run_dir, resume=resume, force=force)
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler}
    grown: dict[str, tuple] = {}
    if resume:
        start, grown = resume_from(run_dir, "train", objects, to_dict(cfg))
        if "train.epochs" in grown:  # the saved config was edited: the schedule stretches
            stretch_cosine(scheduler, t.epochs)
    elif main:
        save_config(cfg, run_dir / "config.yaml")
        genotype.save(run_dir / "genotype.json")
    net = dist.wrap(model, device)  # every parameter gets a gradient: DDP's own all-reduce

    monitor = Monitor(run_dir, epochs=t.epochs, start_epoch=start, quiet=quiet, title="train",
                      write=main, log_every=t.log_every)
    if resume:
        monitor.print(f"resuming {run_dir} at epoch {start + 1}/{t.epochs}{threads.note()}"
                      if start < t.epochs else f"{run_dir} has finished all {t.epochs} epochs")
        for key, (was, now) in grown.items():
            monitor.print(f"config.yaml was edited: {key} {was} -> {now}" + (
                "; the learning-rate schedule now ends there" if key == "train.epochs" else ""))
    else:
        per_epoch = steps_note(len(train_batches), t.steps_per_epoch, "train.steps_per_epoch",
                               f"the {len(train_data):,} training images", t.batch_size)
        auxiliary = any("auxiliary" in name for name, _ in model.named_parameters())
        monitor.print(f"train: {space} network, {params:,} parameters"
                      f"{' (auxiliary head excluded)' if auxiliary else ''}, "
                      f"{macs / 1e6:.1f}M multiply-adds, {len(train_data)} training / "
                      f"{len(test_data)} test images, {per_epoch}"
                      f"{dist.batch_note(t.batch_size, device)}, device {device}{threads.note()}")
    test_loss = test_acc = math.nan
    try:
        for epoch in range(start, t.epochs):
            started = time.time()
            drop_prob = t.drop_path * epoch / t.epochs
            set_drop_path(model, drop_prob)  # every GenotypeCell, and drop_path_prob if any
            lr = optimizer.param_groups[0]["lr"]
            train_batches.set_epoch(epoch)
            meter = Meter(device)
            model.train()
            for x, y in monitor.steps(train_batches, len(train_batches), epoch, t.batch_size):
                x = in_layout(x, layout)
                with autocast(device, t.amp):
                    logits, aux = _outputs(net(x))
                loss = F.cross_entropy(logits.float(), y)
                total = loss
                # under DDP an auxiliary head of weight 0 still joins the loss: every parameter
                # must get a gradient (zero here) for DDP's all-reduce to complete
                if aux is not None and (t.auxiliary_weight > 0 or net is not model):
                    total = loss + t.auxiliary_weight * F.cross_entropy(aux.float(), y)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if t.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                meter.add(loss.detach(), logits.detach(), y)
                monitor.step_scalars(**{"loss/train": meter.last, "lr": lr})
                if monitor.want_postfix():
                    mean_loss, acc = meter.read()
                    monitor.postfix(loss=mean_loss, acc=acc)
            scheduler.step()
            meter.reduce()
            train_loss, train_acc = meter.read()
            check_finite([train_loss], epoch, run_dir)
            dist.broadcast_buffers(model)  # every rank tests rank 0's network, the one saved
            test_loss, test_acc = evaluate_model(model, test_batches, t.amp, layout)
            metrics = {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                       "test_acc": test_acc, "lr": lr, "drop_path": drop_prob,
                       "seconds": time.time() - started}
            monitor.epoch_end(epoch, metrics, {
                "loss/train": train_loss, "accuracy/train": train_acc, "loss/test": test_loss,
                "accuracy/test": test_acc, "lr": lr, "drop_path": drop_prob})
            if main:
                save_checkpoint(checkpoint_state(
                    "train", epoch + 1, objects, config=to_dict(cfg), space=space,
                    num_classes=train_data.num_classes, genotype=genotype.to_dict(),
                    test_acc=test_acc, test_loss=test_loss), run_dir / CHECKPOINT)
    except Exception:
        monitor.close()
        discard_failed_start(run_dir)
        raise
    finally:
        monitor.close()
    if math.isnan(test_acc):  # resumed a finished run: evaluate what it holds
        test_loss, test_acc = evaluate_model(model, test_batches, t.amp, layout)
    result = {"test_acc": test_acc, "test_loss": test_loss, "params": params, "macs": macs,
              "epochs": t.epochs, "space": space, "genotype": str(genotype)}
    if main:
        (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
        write_profile(run_dir / "profile.json", model, cfg, genotype, space,
                      train_data.num_classes, device, layout)
    dist.barrier()
    return TrainResult(test_acc, test_loss, params, macs, run_dir)


def write_profile(path: Path, model: nn.Module, cfg: Config, genotype: Genotype, space: str,
                  num_classes: int, device: torch.device, layout: bool) -> None:
    """``profile.json``: what the trained network costs on the run's device (``nas profile``).

    The run's results are saved already: a network the profiler cannot follow costs this file
    alone, with one line saying so.
    """
    from .profiling import profile_network, with_network
    from .spaces import first_line
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
