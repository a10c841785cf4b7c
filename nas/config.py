"""Typed, validated configuration: YAML files over defaults, plus ``--set key=value`` overrides.

Every key has a type and a default here, so a config file holds only what differs. An unknown
key fails naming the closest known one; a value of the wrong type fails with its dotted path.
The ``supernet`` and ``network`` sections are the keyword arguments of the search space's
builders, checked against their signatures when the space is built.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import yaml

from .errors import InputError
from .registry import closest, is_spec, resolve_spec


@dataclass
class DataConfig:
    """Where the images come from and how they are prepared."""

    dataset: str = "cifar10"            # a registered dataset: cifar10, cifar100, imagefolder, ...
    root: str = "data"                  # directory holding cifar-10-batches-py/ etc.
    download: bool = False              # fetch the official files (progress bar) when missing
    image_size: int = 32                # images are resized to this once, when loaded
    pad: int = 4                        # random-crop padding of the standard augmentation
    split: float = 0.5                  # search: fraction of the training set for the weights
    limit: int | None = None            # use only the first N training images (quick runs)
    test_limit: int | None = None       # evaluate on only the first N test images
    on_device: bool | None = None       # hold uint8 images on the device, augment there; null: on CUDA
    workers: int = 2                    # DataLoader workers when not on the device


@dataclass
class TauConfig:
    """The temperature schedule of the Gumbel-softmax."""

    schedule: str = "linear"            # a registered schedule or 'module:attr'
    max: float = 10.0                   # the temperature at the start
    min: float = 0.1                    # the temperature at the end (never below 1e-4)
    per: Literal["epoch", "iteration"] = "epoch"  # the schedule steps once per epoch or per step
    options: dict = field(default_factory=dict)  # extra keyword arguments of the schedule


@dataclass
class BudgetConfig:
    """Upper bounds on the cost of the network built from the derived genotype (null: none)."""

    params: float | None = None         # parameters (an auxiliary head not counted)
    macs: float | None = None           # multiply-adds of one image
    latency_ms: float | None = None     # milliseconds per batch, by a per-op table measured on the device
    image_size: int | None = None       # the images the cost is counted at; null: data.image_size
    latency_batch: int = 1              # the batch the latency is measured at
    latency_table: str | None = None    # a nas latency-table file (the target's runtime and
                                        # machine) pricing latency_ms; null: timed in PyTorch here
    dual_lr: float = 0.05               # step of the Lagrange multipliers per architecture step
    spend: float = 0.0                  # the cells kept after the search (few-shot parts, the
                                        # selection's shortlist) cost at least this share of the
                                        # costliest network that fits, live ops only; 0 or
                                        # no bound: any


@dataclass
class FewShotConfig:
    """After the search: one supernet per op of its most certain edge, then a short training each."""

    epochs: int = 0                     # epochs each part is searched, that op fixed there; 0: off
    lr: float | None = None             # their weights' learning rate, cosine to lr_min; null: search.lr
    select_epochs: int = 15             # each part's cell trained from scratch on the weight split
    select_lr: float = 0.05             # SGD, cosine to 0
    select_batch_size: int = 64         # its batch
    select_network: dict = field(default_factory=dict)  # network: options it overrides (C: 8)
    workers: int | None = None          # CPU processes running parts side by side, sharing the
                                        # run's threads; null: one per thread; 1: in this process


@dataclass
class SelectConfig:
    """After the search: its most probable cells within the budget, ranked by short trainings."""

    shortlist: int = 0                  # candidates (one per isomorphism class); 0: off
    min_epochs: int = 2                 # successive halving: every candidate trained this long first
    max_epochs: int = 16                # the longest training
    eta: int = 2                        # each round keeps the best 1/eta, trained eta times longer
    average: int = 2                    # a score: mean architecture-split accuracy, last N epochs
    lr: float = 0.05                    # SGD, cosine to 0 over each training
    batch_size: int = 64                # its batch
    network: dict = field(default_factory=dict)  # network: options it overrides (C: 8)
    workers: int | None = None          # CPU processes training candidates side by side; null:
                                        # one per thread of the run
    threads: int = 1                    # threads of each training: its float rounding, hence
                                        # its score, does not depend on the machine's load


@dataclass
class SearchConfig:
    """The alternating optimisation of weights and architecture (GDAS defaults)."""

    mode: Literal["gdas", "st", "gumbel", "softmax"] = "gdas"  # gdas runs one op per edge; the rest all
    epochs: int = 250                   # search epochs, warm-up included
    batch_size: int = 64                # the global batch: split over the processes of a torchrun
    steps_per_epoch: int | None = None  # a cap: at most this many steps per epoch, fewer when
                                        # the smaller split has fewer batches; null: one pass
    order: Literal["weights_first", "arch_first"] = "weights_first"  # arch_first: as DARTS
    warmup_epochs: int = 0              # epochs that train the weights only
    weight_sampling: Literal["arch", "uniform", "params"] = "arch"  # ops the weight steps train
    estimator: Literal["gdas", "reinforce", "gumbel_rao", "reinmax"] = "gdas"  # the arch gradient
    samples: int = 4                    # reinforce: subnetworks per arch step; gumbel_rao: draws
    lr: float = 0.025                   # weights: SGD, cosine from lr to lr_min
    lr_min: float = 0.001               # the cosine schedule's last learning rate
    momentum: float = 0.9               # SGD momentum of the weights
    nesterov: bool = True               # Nesterov momentum
    weight_decay: float = 5e-4          # of the weights
    grad_clip: float = 5.0              # gradient-norm clip of the weights; 0 disables
    arch_lr: float = 3e-4               # architecture: Adam
    arch_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam betas of the logits
    arch_weight_decay: float = 1e-3     # of the logits
    tau: TauConfig = field(default_factory=TauConfig)  # the relaxation's (backward) temperature
    # gdas/st: the forward sample is drawn from softmax(logits / tau_forward); constant 1 is GDAS
    tau_forward: TauConfig = field(default_factory=lambda: TauConfig("constant", 1.0, 1.0))
    edge_topk: int = 0                  # > 0: run only k sampled inputs per node (gdas; DARTS-family cells)
    amp: bool = False                   # bf16 autocast (CUDA only)
    channels_last: bool | Literal["auto"] = "auto"  # channels-last memory format; auto: on a CPU
    benchmark: str | None = None        # NAS-Bench-201 table: log the derived cell's accuracy
    log_every: int = 10                 # TensorBoard per-step scalars (step/...) every N steps; 0: off
    budget: BudgetConfig = field(default_factory=BudgetConfig)  # bounds on the derived network's cost
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)  # split, search the parts, pick
    select: SelectConfig = field(default_factory=SelectConfig)  # a shortlist ranked by training


@dataclass
class TrainConfig:
    """Retraining of the derived network (DARTS recipe defaults)."""

    epochs: int = 600                   # retraining epochs
    batch_size: int = 96                # global, as search.batch_size
    steps_per_epoch: int | None = None  # a cap, as search.steps_per_epoch
    lr: float = 0.025                   # SGD, cosine from lr to lr_min
    lr_min: float = 0.0                 # the cosine schedule's last learning rate
    momentum: float = 0.9               # SGD momentum
    nesterov: bool = False              # Nesterov momentum
    weight_decay: float = 3e-4          # of the weights
    grad_clip: float = 5.0              # gradient-norm clip; 0 disables
    auxiliary_weight: float = 0.4       # 0 disables the auxiliary head's loss
    drop_path: float = 0.2              # final drop-path probability, rising linearly from 0
    cutout: int = 16                    # cutout square side; 0 disables
    eval_batch_size: int = 256          # the test set's batch
    amp: bool = False                   # bf16 autocast (CUDA only)
    channels_last: bool | Literal["auto"] = "auto"  # as search.channels_last
    sync_bn: bool = False               # SyncBatchNorm across the processes of a torchrun (CUDA)
    log_every: int = 10                 # TensorBoard per-step scalars every N steps; 0: off


@dataclass
class Config:
    """A whole run: data, search space, search and retraining."""

    name: str = ""                      # run name; empty: the config file's name
    seed: int = 0                       # every random draw follows it; in [0, 2^63)
    device: str = "auto"                # auto, cpu, cuda, cuda:1, ...
    threads: int | None = None          # CPU threads; null: the usable CPUs other work leaves free
    space: str = "darts"                # a registered search space or 'module:attr'
    data: DataConfig = field(default_factory=DataConfig)
    supernet: dict = field(default_factory=dict)   # keyword arguments of the space's supernet
    search: SearchConfig = field(default_factory=SearchConfig)
    network: dict = field(default_factory=dict)    # keyword arguments of the space's network
    train: TrainConfig = field(default_factory=TrainConfig)


MAX_IMAGE_SIZE = 1024  # images are resized once and held in memory: beyond this, a typo
MAX_THREADS = 1024     # more threads (or processes) than any machine's CPUs: a typo
MAX_BATCH = 8192       # images in one batch: more than any run of these networks holds, a typo
MAX_RUNS = 10_000      # timed runs of one measurement
MAX_SAMPLES = 1024     # subnetworks an architecture step draws (search.samples)
MAX_NAME = 200         # a run name, and the date and time after it, fit a file name (255 bytes)
MAX_VALUES = 100_000   # values in a config once its YAML aliases are expanded: no config is near
MAX_DEPTH = 64         # levels of nesting: a config has four or five


def check_count(name: str, value: Any, least: int, most: int, nullable: bool = False) -> Any:
    """The one rule for a count a user passes (an image size, a batch, threads, workers, runs),
    in a config or as a flag: a whole number from ``least`` to ``most`` (or None when
    ``nullable``), checked before any work; returns it. ``name``: ``--flag`` or ``section.key``."""
    if value is None and nullable:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        sep = "" if name.startswith("-") else ":"
        raise InputError(f"{name}{sep} must be from {least} to {most}{' or null' if nullable else ''}"
                         f", got {value!r}")
    return value


# -- type checking ------------------------------------------------------------------------------
def _describe(value: Any) -> str:
    return f"{value!r}" if not isinstance(value, str) else f"'{value}'"


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Return ``value`` as type ``tp`` or raise InputError naming ``path``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except InputError as exc:
                errors.append(exc)
        if all(a is bool or typing.get_origin(a) is Literal for a in args):  # a switch with words
            words = ["true", "false", *(str(c) for a in args if a is not bool for c in typing.get_args(a))]
            raise InputError(f"{path}: expected one of {', '.join(words)}, got {_describe(value)}")
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = closest(str(value), [str(c) for c in choices])
            hint = f"; did you mean '{close}'?" if close else ""
            raise InputError(f"{path}: expected one of {', '.join(map(str, choices))}, "
                             f"got {_describe(value)}{hint}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{path}: expected true or false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(f"{path}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise InputError(f"{path}: expected a finite number, got {value!r}")
            return float(value)
        raise InputError(f"{path}: expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise InputError(f"{path}: expected a string, got {_describe(value)}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise InputError(f"{path}: expected a mapping of keys to values, got {_describe(value)}")
    if tp is list or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{path}: expected a list, got {_describe(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise InputError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {_describe(value)}")


def _unknown_key(path: str, key: str, known: list[str]) -> InputError:
    where = f"{path}.{key}" if path else key
    close = closest(key, known)
    hint = f"; did you mean '{close}'?" if close else f" (known: {', '.join(sorted(known))})"
    return InputError(f"{where}: unknown key{hint}")


def _merge(obj: Any, data: Mapping[str, Any], path: str = "") -> None:
    """Write the keys of ``data`` into the dataclass ``obj``, checking names and types."""
    if not isinstance(data, Mapping):
        raise InputError(f"{path or 'config'}: expected a mapping of keys to values, "
                         f"got {_describe(data)}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        key = str(key)
        where = f"{path}.{key}" if path else key
        if key not in names:
            raise _unknown_key(path, key, names)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value if value is not None else {}, where)
        elif isinstance(current, dict) and isinstance(value, Mapping):
            current.update(value)  # builder options: merged key by key, checked at build time
        else:
            setattr(obj, key, _coerce(value, hints[key], where))


def need(ok: bool, message: str) -> None:
    """Raise ``InputError(message)`` unless ``ok``."""
    if not ok:
        raise InputError(message)


def _check_ranges(cfg: Config) -> None:
    """Every value in its range, checked in one order (the first one out is the error)."""
    _check_loops(cfg)
    _check_budget_and_few_shot(cfg)
    _check_data_and_train(cfg)


def _check_loops(cfg: Config) -> None:
    for sec in ("search", "train"):
        s = getattr(cfg, sec)
        need(s.epochs >= 1, f"{sec}.epochs: must be at least 1, got {s.epochs}")
        check_count(f"{sec}.batch_size", s.batch_size, 1, MAX_BATCH)
        need(s.steps_per_epoch is None or s.steps_per_epoch >= 1,
             f"{sec}.steps_per_epoch: must be at least 1 or null, got {s.steps_per_epoch}")
        need(s.lr > 0, f"{sec}.lr: must be positive, got {s.lr}")
        need(0 <= s.lr_min <= s.lr, f"{sec}.lr_min: must be in [0, lr], got {s.lr_min}")
        need(s.grad_clip >= 0, f"{sec}.grad_clip: must be >= 0, got {s.grad_clip}")
        need(s.weight_decay >= 0, f"{sec}.weight_decay: must be >= 0, got {s.weight_decay}")
        need(s.log_every >= 0, f"{sec}.log_every: must be >= 0 (0: off), got {s.log_every}")
        need(0 <= s.momentum < 1, f"{sec}.momentum: must be in [0, 1), got {s.momentum}")
    need(len(cfg.search.arch_betas) == 2 and all(0 <= b < 1 for b in cfg.search.arch_betas),
         f"search.arch_betas: expected two numbers in [0, 1), got {cfg.search.arch_betas}")
    need(cfg.search.arch_lr > 0, f"search.arch_lr: must be positive, got {cfg.search.arch_lr}")
    need(cfg.search.arch_weight_decay >= 0,
         f"search.arch_weight_decay: must be >= 0, got {cfg.search.arch_weight_decay}")
    check_count("train.eval_batch_size", cfg.train.eval_batch_size, 1, MAX_BATCH)
    need(0 <= cfg.seed < 2 ** 63, f"seed: must be in [0, 2^63), got {cfg.seed}")
    need(not any(c in cfg.name for c in "/\\") and cfg.name not in (".", "..")
         and len(cfg.name) <= MAX_NAME,
         f"name: a run name is a name, not a path (no / or \\, not . or .., at most {MAX_NAME} "
         f"characters), got {cfg.name!r}; --run-dir chooses where the run goes")
    check_count("threads", cfg.threads, 1, MAX_THREADS, nullable=True)  # null: the usable CPUs
    need(0 <= cfg.search.warmup_epochs <= cfg.search.epochs,
         f"search.warmup_epochs: must be in [0, search.epochs], got {cfg.search.warmup_epochs}")
    check_count("search.samples", cfg.search.samples, 2, MAX_SAMPLES)
    need(cfg.search.weight_sampling == "arch" or cfg.search.mode != "softmax",
         f"search.weight_sampling: {cfg.search.weight_sampling} needs a sampling mode (gdas, st, "
         "gumbel), got softmax")
    need(cfg.search.estimator != "reinforce" or cfg.search.mode == "gdas",
         f"search.estimator: reinforce needs search.mode: gdas, got {cfg.search.mode}")
    need(cfg.search.estimator in ("gdas", "reinforce") or cfg.search.mode in ("gdas", "st"),
         f"search.estimator: {cfg.search.estimator} needs a hard sample (search.mode: gdas or st), "
         f"got {cfg.search.mode}")
    for key in ("tau", "tau_forward"):
        tau = getattr(cfg.search, key)
        need(tau.min > 0, f"search.{key}.min: must be positive, got {tau.min}")
        need(tau.max >= tau.min, f"search.{key}.max: must be >= search.{key}.min, got {tau.max}")
    need(not forward_tau_on(cfg.search) or cfg.search.mode in ("gdas", "st"),
         f"search.tau_forward: a forward temperature needs a hard sample (search.mode: gdas or "
         f"st), got {cfg.search.mode}; leave it at {{schedule: constant, max: 1.0}}")
    need(cfg.search.edge_topk >= 0, f"search.edge_topk: must be >= 0 (0: off), got {cfg.search.edge_topk}")
    need(cfg.search.edge_topk == 0 or cfg.search.mode == "gdas",
         f"search.edge_topk: sampling the inputs of a node needs search.mode: gdas, got {cfg.search.mode}")


def _check_budget_and_few_shot(cfg: Config) -> None:
    b = cfg.search.budget
    for key in ("params", "macs", "latency_ms"):
        need(getattr(b, key) is None or getattr(b, key) > 0,
             f"search.budget.{key}: must be positive or null, got {getattr(b, key)}")
    need(b.image_size is None or 4 <= b.image_size <= MAX_IMAGE_SIZE and b.image_size % 2 == 0,
         f"search.budget.image_size: must be an even number from 4 to {MAX_IMAGE_SIZE} or null, "
         f"got {b.image_size}")
    check_count("search.budget.latency_batch", b.latency_batch, 1, MAX_BATCH)
    need(b.latency_table is None or (b.latency_table.strip() != "" and b.latency_ms is not None),
         "search.budget.latency_table: needs a file name and search.budget.latency_ms (the bound "
         f"it prices), got latency_table {b.latency_table!r}, latency_ms {b.latency_ms}")
    need(b.dual_lr > 0, f"search.budget.dual_lr: must be positive, got {b.dual_lr}")
    need(0 <= b.spend <= 1, f"search.budget.spend: must be from 0 to 1, got {b.spend}")
    f = cfg.search.few_shot
    need(f.epochs >= 0, f"search.few_shot.epochs: must be >= 0 (0: off), got {f.epochs}")
    need(f.lr is None or f.lr > 0, f"search.few_shot.lr: must be positive or null, got {f.lr}")
    need(f.select_epochs >= 1, f"search.few_shot.select_epochs: must be at least 1, got {f.select_epochs}")
    check_count("search.few_shot.workers", f.workers, 1, MAX_THREADS, nullable=True)
    need(f.select_lr > 0, f"search.few_shot.select_lr: must be positive, got {f.select_lr}")
    check_count("search.few_shot.select_batch_size", f.select_batch_size, 1, MAX_BATCH)
    need(f.epochs == 0 or cfg.search.mode == "gdas",
         f"search.few_shot: fixing an edge's op needs search.mode: gdas, got {cfg.search.mode}")
    _check_select(cfg.search, need)


def _check_data_and_train(cfg: Config) -> None:
    need(0 < cfg.data.split < 1, f"data.split: must be in (0, 1), got {cfg.data.split}")
    size = cfg.data.image_size
    need(4 <= size <= MAX_IMAGE_SIZE and size % 2 == 0,
         f"data.image_size: must be an even number from 4 to {MAX_IMAGE_SIZE}, got {size}")
    need(cfg.data.pad <= size, f"data.pad: must be at most data.image_size ({size}), got {cfg.data.pad}")
    need(cfg.data.pad >= 0, f"data.pad: must be >= 0, got {cfg.data.pad}")
    need(cfg.data.limit is None or cfg.data.limit >= 2,
         f"data.limit: must be at least 2 or null, got {cfg.data.limit}")
    need(cfg.data.test_limit is None or cfg.data.test_limit >= 1,
         f"data.test_limit: must be at least 1 or null, got {cfg.data.test_limit}")
    check_count("data.workers", cfg.data.workers, 0, MAX_THREADS)
    need(0 <= cfg.train.drop_path < 1, f"train.drop_path: must be in [0, 1), got {cfg.train.drop_path}")
    need(cfg.train.cutout >= 0, f"train.cutout: must be >= 0, got {cfg.train.cutout}")
    need(cfg.train.auxiliary_weight >= 0,
         f"train.auxiliary_weight: must be >= 0, got {cfg.train.auxiliary_weight}")


def _check_select(s: SearchConfig, need: Callable[[bool, str], None]) -> None:
    c = s.select
    need(c.shortlist >= 0 and c.shortlist != 1,
         f"search.select.shortlist: must be 0 (off) or at least 2, got {c.shortlist}")
    need(c.min_epochs >= 1, f"search.select.min_epochs: must be at least 1, got {c.min_epochs}")
    need(c.max_epochs >= c.min_epochs,
         f"search.select.max_epochs: must be at least min_epochs ({c.min_epochs}), got {c.max_epochs}")
    need(c.eta >= 2, f"search.select.eta: must be at least 2, got {c.eta}")
    need(1 <= c.average <= c.min_epochs,
         f"search.select.average: must be from 1 to min_epochs ({c.min_epochs}), got {c.average}")
    need(c.lr > 0, f"search.select.lr: must be positive, got {c.lr}")
    need(c.batch_size >= 1, f"search.select.batch_size: must be at least 1, got {c.batch_size}")
    need(c.workers is None or 1 <= c.workers <= MAX_THREADS,
         f"search.select.workers: must be from 1 to {MAX_THREADS} or null, got {c.workers}")
    need(1 <= c.threads <= MAX_THREADS,
         f"search.select.threads: must be from 1 to {MAX_THREADS}, got {c.threads}")
    need(c.shortlist == 0 or s.few_shot.epochs == 0,
         "search.select: the few-shot phase and the selection both pick the cell; set "
         "search.few_shot.epochs=0 to rank a shortlist instead")


def budget_limits(b: BudgetConfig) -> dict[str, float]:
    """The bounds ``search.budget`` sets, ``{metric: limit}`` (empty: no budget)."""
    return {k: float(getattr(b, k)) for k in ("params", "macs", "latency_ms")
            if getattr(b, k) is not None}


def forward_tau_on(s: SearchConfig) -> bool:
    """Whether ``search.tau_forward`` differs from GDAS's (constant 1)."""
    return not (s.tau_forward.schedule == "constant" and s.tau_forward.max == 1.0)


# -- loading ------------------------------------------------------------------------------------
def check_plain(data: Any, where: str) -> None:
    """Refuse config data that is huge once its YAML aliases are expanded (``&a [*b, *b, ...]``
    nested: every later step walks the expansion), nested deeper than any config, or holding a
    NUL character (which no file name or name may hold). Walks at most MAX_VALUES values."""
    stack, count = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise InputError(f"{where}: more than {MAX_VALUES:,} values once its aliases "
                             "(&name, *name) are expanded; a config is far smaller")
        if depth > MAX_DEPTH:
            raise InputError(f"{where}: nested more than {MAX_DEPTH} levels deep; a config is not")
        if isinstance(value, dict):
            for k, v in value.items():
                stack += [(k, depth + 1), (v, depth + 1)]
        elif isinstance(value, (list, tuple)):
            stack += [(v, depth + 1) for v in value]
        elif isinstance(value, str) and "\0" in value:
            raise InputError(f"{where}: {value!r} holds a NUL character")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and YAML-parsed value."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise InputError(f"--set {text!r}: expected key=value, e.g. search.epochs=50")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise InputError(f"--set {key}=...: nested too deeply") from None
    check_plain(value, f"--set {key}")
    return key.split("."), value


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for key in reversed(keys):
        out = {key: out}
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a file, with one-line errors."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except OSError as exc:  # a directory, no permission, a symlink loop, a name too long, ...
        raise InputError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read config file {path}: {exc}") from None
    except ValueError as exc:  # a NUL byte in the path
        raise InputError(f"cannot read config file {path!r}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise InputError(f"{path}: nested too deeply to be a config") from None
    check_plain(data, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def build_config(data: Mapping[str, Any] | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then ``data`` (a parsed YAML mapping), then ``key=value`` overrides; validated.

    File-path plugin references (``my_space.py:SPACE``) are made absolute, so that the saved
    config works from any directory.
    """
    cfg = Config()
    check_plain(data, "config")  # also a checkpoint's saved config, which no YAML reader saw
    _merge(cfg, data or {})
    for text in overrides:
        keys, value = parse_override(text)
        _merge(cfg, _nest(keys, value))
    _check_ranges(cfg)
    _map_specs(cfg, resolve_spec)
    return cfg


def _map_specs(obj: Any, fn: Callable[[str], str]) -> Any:
    """Apply ``fn`` to every plugin reference in a config (dataclasses, dicts, lists), in place."""
    def visit(value: Any) -> Any:
        if is_spec(value):
            return fn(value)
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                setattr(value, f.name, visit(getattr(value, f.name)))
        elif isinstance(value, dict):
            for k in value:
                value[k] = visit(value[k])
        elif isinstance(value, list):
            value[:] = [visit(v) for v in value]
        return value
    return visit(obj)


def config_specs(cfg: Config) -> list[str]:
    """Every plugin reference (``module:attr``, ``file.py:attr``) that ``cfg`` names."""
    found: list[str] = []
    _map_specs(cfg, lambda spec: found.append(spec) or spec)
    return found


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config file (or the defaults alone) and apply ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    cfg = build_config(data, overrides)
    if not cfg.name and path is not None:
        cfg.name = Path(path).stem[:MAX_NAME]
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain data, ready for YAML."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# -- builder keyword arguments ------------------------------------------------------------------
def check_options(fn: Callable[..., Any], options: Mapping[str, Any], section: str,
                  skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``options`` against the keyword parameters of ``fn``; return them type-coerced."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    params = {name: p for name, p in inspect.signature(fn).parameters.items()
              if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations in a plugin: skip type checks
        hints = {}
    out = {}
    for key, value in options.items():
        if key not in params:
            if takes_any:
                out[key] = value
                continue
            raise _unknown_key(section, key, list(params))
        tp = hints.get(key)
        out[key] = _coerce(value, tp, f"{section}.{key}") if tp in (int, float, bool, str) or \
            typing.get_origin(tp) in (Literal, typing.Union, types.UnionType, list) else value
    return out
