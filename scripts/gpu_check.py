#!/usr/bin/env python
"""GPU readiness in one command: the CUDA paths tested, host syncs counted, speed, memory and a
full search epoch measured, each against the project's GPU targets.

    python scripts/gpu_check.py                                # on a GPU: at most about 8 minutes
    python scripts/gpu_check.py --reference ~/AutoDL-Projects  # also against the GDAS code itself
    python scripts/gpu_check.py --dry-run --out /tmp/check     # every part on the CPU, tiny sizes

The parts, each a function that runs on its own (one that fails, errs or runs out of time does
not stop the others), in this order:

  tests      the pytest tests marked ``cuda`` (tests/test_cuda.py), one row per test
  syncs      host syncs per gdas search step, counted with torch.cuda.set_sync_debug_mode("warn")
             during an epoch of the search loop, by where each comes from
  speed      scripts/benchmark.py's step times at the GPU sizes (NAS-Bench-201: C=16, 5 cells per
             stage; DARTS: C=16, 8 cells; batch 64, 32x32): lower limit, gdas and softmax, with and
             without bf16 autocast and channels-last
  memory     peak GPU memory (torch.cuda.max_memory_allocated) of a gdas and a softmax step, and
             the bytes autograd keeps for the backward of one forward
  epoch      one full NAS-Bench-201 search epoch at the paper's settings on the shared subset
             repeated to 25,000 images per split; the 250-epoch search projected from it, beside
             the published 28,925 s (GDAS, NAS-Bench-201 paper, V100)
  reference  gdas against the GDAS reference code (--reference PATH, an AutoDL-Projects
             checkout) or, without it, against gdas done as the reference does it

It prints a summary table and writes ``gpu-<device>.md`` and ``.json`` into --out (default
scripts/results). ``--budget-s`` bounds the whole run: each part gets a share of what is left and
is stopped, keeping what it measured, when it overruns it. ``--dry-run`` runs every part on the
CPU at tiny sizes (the ``cuda`` tests too, on the CPU), so that CI tests this script; its
numbers are no GPU measurement. Exit status: 0 when every part that ran passed (targets not met
are findings, not failures), 1 when a part failed or erred, 2 for bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import pickle
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's nas (not another installed copy)
# the step timings of scripts/benchmark.py, which the speed, memory and reference parts reuse
from nas.experiments import reference, step_cost  # noqa: E402
from nas.errors import OneLineParser, first_line  # noqa: E402

PUBLISHED_SEARCH_S = 28_925  # GDAS, 250 epochs on NAS-Bench-201 CIFAR-10 (the NAS-Bench-201 paper, V100)
PAPER_EPOCHS = 250
CUDA_TESTS_DEVICE = "NAS_CUDA_TESTS_DEVICE"  # tests/conftest.py: "cpu" runs the cuda tests there
SETTINGS = ((False, False), (True, False), (False, True), (True, True))  # (bf16 autocast, channels-last)
SPEED_ROWS = ("lower", "gdas", "softmax")
PARTS = ("tests", "syncs", "speed", "memory", "epoch", "reference")
# each part's share of the time left when it starts (a part that ends early leaves its rest)
SHARES = {"tests": 0.30, "syncs": 0.05, "speed": 0.28, "memory": 0.05, "epoch": 0.24,
          "reference": 0.08}
MIN_PART_S = 3.0  # a part is not started with less than this left


@dataclass(frozen=True)
class Sizes:
    """How big each part's work is: the GPU sizes, or the dry run's tiny ones."""

    spaces: dict[str, dict]           # supernet options per space (speed, memory)
    batch: int
    image_size: int
    warmup: int                       # speed: steps before timing
    steps: int                        # speed: fewest timed steps per row ...
    min_time: float                   # ... and more until this many seconds (at most 100)
    sync_steps: int                   # syncs: the steps counted (after an epoch of warm-up)
    epoch_images: int                 # epoch: images per split (weights / architecture)
    epoch_overrides: tuple[str, ...]  # epoch: over configs/gdas_nb201_cifar10.yaml
    epochs: int                       # epoch: search epochs timed
    reference_spaces: dict[str, dict]
    rounds: int                       # reference: measured rounds


GPU = Sizes(spaces=step_cost.SPACES, batch=64, image_size=32, warmup=3, steps=10, min_time=1.0,
            sync_steps=20, epoch_images=25_000, epoch_overrides=(), epochs=2,
            reference_spaces=reference.GDAS_SPACES, rounds=5)
TINY = {"darts": {"C": 4, "cells": 3}, "nasbench201": {"C": 4, "cells_per_stage": 1}}
DRY = Sizes(spaces=TINY, batch=4, image_size=8, warmup=0, steps=1, min_time=0.0, sync_steps=3,
            epoch_images=64, epoch_overrides=("supernet.C=4", "supernet.cells_per_stage=1",
                                              "data.image_size=8", "data.pad=1",
                                              "search.batch_size=16", "data.workers=0"),
            epochs=2, reference_spaces=TINY, rounds=1)


# -- the frame of a part: status, values, time guard ---------------------------------------------
@dataclass
class Part:
    """One part's outcome: pass / fail / error / stopped (out of time) / skipped."""

    name: str
    status: str = "running"
    seconds: float = 0.0
    summary: str = ""                 # one line for the summary table
    values: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class OutOfTime(BaseException):
    """A part overran its share of --budget-s (a BaseException, so no ``except Exception`` in
    the code it runs swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise OutOfTime in this (the main) thread once ``seconds`` have passed."""
    def expire(signum, frame):
        raise OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Context:
    """What every part reads: the options, the sizes, the device and the clock."""

    args: argparse.Namespace
    sizes: Sizes
    device: str
    work: Path                        # a temporary directory for runs and data
    end: float                        # time.monotonic() by which the whole check must end
    part_end: float = 0.0             # ... and the running part
    done: dict[str, Part] = field(default_factory=dict)  # the parts run so far
    _data: Path | None = None

    @property
    def dry(self) -> bool:
        return self.args.dry_run

    def part_left(self) -> float:
        return self.part_end - time.monotonic()

    def data_root(self) -> Path:
        """A directory holding cifar-10-batches-py/: --data-dir, the shared subset, or synthetic
        images written once (what the images show changes no time or count measured here)."""
        if self._data is None:
            self._data = self.args.data_dir or find_data() or write_cifar(
                self.work / "synthetic", synthetic_images(512 if self.dry else 4096))
        return self._data


def run_part(name: str, fn: Callable[[Part, Context], None], ctx: Context, shares: dict[str, float]) -> Part:
    """Run one part within its share of the time left; never raises."""
    part = Part(name)
    left = ctx.end - time.monotonic()
    cap = left * shares[name] / sum(shares.values())
    if cap < MIN_PART_S:
        part.status, part.summary = "skipped", f"no time left in --budget-s ({left:.0f} s)"
        return part
    ctx.part_end = time.monotonic() + cap
    print(f"gpu_check: {name} (at most {cap:.0f} s) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        with time_limit(cap + 5.0):  # parts stop themselves at part_end; this is the backstop
            fn(part, ctx)
        if part.status == "running":
            part.status = "pass"
    except OutOfTime:
        part.status = "stopped"
        part.notes.append(f"stopped after its {cap:.0f} s share of --budget-s; what it measured "
                          "until then is kept")
    except Exception as exc:  # reported, and the other parts still run
        part.status = "error"
        part.summary = f"{type(exc).__name__}: {first_line(exc, typed=False)}"
        part.values["traceback"] = traceback.format_exc()[-3000:]
    finally:
        part.seconds = time.perf_counter() - start
        reset_debug_modes()
        free_memory()
    print(f"gpu_check: {name}: {part.status} in {part.seconds:.1f} s", file=sys.stderr, flush=True)
    return part


def reset_debug_modes() -> None:
    """Undo what a part stopped midway may have left on: the sync debug mode, determinism."""
    import torch
    torch.use_deterministic_algorithms(False)
    if torch.cuda.is_available():
        torch.cuda.set_sync_debug_mode("default")


def free_memory() -> None:
    """Drop what a part left behind, so that the next one's peak memory is its own."""
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# -- data ---------------------------------------------------------------------------------------
def find_data() -> Path | None:
    """The shared CIFAR-10 subset, or ./data, where it holds cifar-10-batches-py/."""
    for root in (ROOT.parent / "shared" / "data", ROOT / "shared" / "data", ROOT / "data"):
        if (root / "cifar-10-batches-py").is_dir():
            return root
    return None


def synthetic_images(n: int):
    """``n`` random uint8 32x32 images and labels (where no CIFAR-10 files are at hand)."""
    import torch
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=gen))


def write_cifar(root: Path, images_labels, batches: int = 5) -> Path:
    """Write uint8 ``[N, 3, 32, 32]`` images and their labels as a CIFAR-10 directory (the
    official python-pickle format, which nas reads with its data-only unpickler)."""
    images, labels = images_labels
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    flat = images.reshape(images.shape[0], -1).numpy()
    per = -(-flat.shape[0] // batches)
    for i in range(batches):
        part = slice(i * per, (i + 1) * per)
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": flat[part], b"labels": labels[part].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": flat[:100], b"labels": labels[:100].tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def repeated(root: Path, total: int):
    """The training images under ``root`` repeated (in order) to ``total`` images."""
    import torch
    from nas.data import load_dataset
    data = load_dataset("cifar10", root, train=True)
    index = torch.arange(total) % len(data)
    return data.images[index], data.labels[index]


# -- part: the tests marked cuda ----------------------------------------------------------------
def part_tests(part: Part, ctx: Context) -> None:
    """Run ``pytest -m cuda`` in a fresh process; one row per test, with what it recorded."""
    junit = ctx.work / "junit.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8")}
    if ctx.dry:
        env[CUDA_TESTS_DEVICE] = "cpu"
    else:
        env.pop(CUDA_TESTS_DEVICE, None)
        index = ctx.device.partition(":")[2]
        if index:  # the tests use "cuda": make the chosen device the one they see
            visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            env["CUDA_VISIBLE_DEVICES"] = visible[int(index)] if visible else index
    # in this one process, whatever setup.cfg's addopts say (pytest-xdist need not be installed)
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider",
           "-o", "addopts=", "-o", "junit_family=xunit1", f"--junitxml={junit}",
           str(ROOT / "tests")]
    part.values["command"] = " ".join(["pytest", "-m", "cuda", "tests"])
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=max(ctx.part_left(), 1.0))
        text, finished = out.stdout + out.stderr, True
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) \
            else (exc.stdout or "")
        finished = False
    part.rows = junit_rows(junit) if finished and junit.is_file() else verbose_rows(text)
    counts = Counter(r["outcome"] for r in part.rows)
    part.values.update(counts=dict(counts), output_tail=text[-3000:])
    part.summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test ran"
    if not finished:
        part.status = "stopped"
        part.notes.append("pytest was stopped at the part's time share; the rows are the tests "
                          "that finished before")
    elif counts.get("failed") or counts.get("error") or not part.rows:
        part.status = "fail"


def junit_rows(path: Path) -> list[dict[str, Any]]:
    """The tests of a JUnit XML report: name, outcome, seconds, message, recorded properties."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or node.text or "").strip()
                break
        if outcome == "skipped" and "not present" in message:
            outcome = "not present"
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        rows.append({"test": case.get("name"), "file": case.get("file") or case.get("classname"),
                     "outcome": outcome, "seconds": float(case.get("time") or 0),
                     "message": message.splitlines()[0][:300] if message else "",
                     "recorded": props})
    return rows


def verbose_rows(text: str) -> list[dict[str, Any]]:
    """The tests that ``pytest -v`` reported before it was stopped."""
    found = re.findall(r"^\S+::(\S+) (PASSED|FAILED|SKIPPED|ERROR)", text, re.M)
    return [{"test": name, "outcome": outcome.lower(), "seconds": None, "message": "",
             "recorded": {}} for name, outcome in found]


# -- part: host syncs per step ------------------------------------------------------------------
@dataclass
class SyncSite:
    """Where a sync happened: the innermost frame in this repository, and the innermost overall."""

    ours: str
    inner: str

    def label(self) -> str:
        return self.ours if self.inner == self.ours else f"{self.ours} -> {self.inner}"


def in_repository(filename: str) -> bool:
    """Whether code is this repository's own, not a virtualenv's packages kept inside it (.ci/venv)."""
    path = Path(filename).resolve()
    return path.is_relative_to(ROOT) and "site-packages" not in path.parts and \
        not path.is_relative_to(Path(sys.prefix).resolve())


def site_of(stack: list[traceback.FrameSummary]) -> SyncSite:
    """Name a sync by its stack (the frames of this script left out)."""
    frames = [f for f in stack if Path(f.filename).resolve() != Path(__file__).resolve()
              and "warnings" not in Path(f.filename).name]

    def name(f: traceback.FrameSummary) -> str:
        path = Path(f.filename).resolve()
        try:
            where = str(path.relative_to(ROOT))
        except ValueError:
            parts = path.parts
            where = "/".join(parts[parts.index("torch"):]) if "torch" in parts else path.name
        code = (f.line or "").strip()  # its end: where the call that waits usually is
        return f"{where}:{f.lineno} in {f.name}: {code if len(code) <= 90 else '...' + code[-87:]}"

    ours = [f for f in frames if in_repository(f.filename)]
    inner = frames[-1] if frames else None
    return SyncSite(name(ours[-1]) if ours else "(outside this repository)",
                    name(inner) if inner else "?")


@contextlib.contextmanager
def cuda_syncs() -> Iterator[list[SyncSite]]:
    """Every synchronizing CUDA operation meanwhile, by CUDA's sync debug mode ("warn")."""
    import torch
    found: list[SyncSite] = []

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            found.append(site_of(traceback.extract_stack()[:-1]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "cpu", "numpy")


@contextlib.contextmanager
def host_reads() -> Iterator[list[SyncSite]]:
    """The CPU stand-in for ``cuda_syncs`` (the dry run): the calls of this repository's code
    that read a tensor's values on the host (``.tolist()``, ``.item()``, ``bool()``, ...), each
    a sync on a GPU. Syncs inside torch itself are not seen this way."""
    import torch
    found: list[SyncSite] = []
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name: str, real):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1)
            if in_repository(caller.f_code.co_filename) and \
                    Path(caller.f_code.co_filename).resolve() != Path(__file__).resolve():
                found.append(site_of(traceback.extract_stack(caller)))
            return real(self, *args, **kwargs)
        return read

    for name, real in saved.items():
        setattr(torch.Tensor, name, wrap(name, real))
    try:
        yield found
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)


def part_syncs(part: Part, ctx: Context) -> None:
    """Count the host syncs of gdas search steps in the search loop itself (nas.search's
    ``run_epoch``, TensorBoard step scalars every ``log_every`` steps included), after an epoch
    of warm-up; NAS-Bench-201 at the speed part's sizes, data as ``nas search`` keeps it."""
    from nas.config import build_config
    from nas.monitor import Monitor
    from nas.search import build_search, run_epoch

    s = ctx.sizes
    options = {**s.spaces["nasbench201"], "track_running_stats": False}
    cfg = build_config({"space": "nasbench201", "device": ctx.device, "supernet": options,
                        "data": {"root": str(ctx.data_root()), "image_size": s.image_size,
                                 "workers": 0},
                        "search": {"epochs": 2, "batch_size": s.batch,
                                   "steps_per_epoch": s.sync_steps}})
    setup = build_search(cfg)
    monitor = Monitor(ctx.work / "syncs", epochs=2, quiet=True, log_every=cfg.search.log_every)
    try:
        run_epoch(setup, 0, monitor, None)  # warm-up: first allocations, kernels chosen
        counter = host_reads() if ctx.dry else cuda_syncs()
        with counter as found:
            run_epoch(setup, 1, monitor, None)
    finally:
        monitor.close()
    steps = setup.steps
    by_site = Counter(site.label() for site in found)
    part.rows = [{"source": label, "syncs": n, "per_step": n / steps}
                 for label, n in by_site.most_common()]
    per_step = len(found) / steps
    part.values.update(steps=steps, syncs=len(found), per_step=per_step,
                       method="CPU stand-in: host reads of tensors by this repository's code"
                       if ctx.dry else 'torch.cuda.set_sync_debug_mode("warn")',
                       on_device=setup.w_batches.on_device)
    part.summary = f"{per_step:.2f} per step ({len(found)} in {steps} steps, {len(by_site)} source(s))"


# -- part: speed --------------------------------------------------------------------------------
def setting_name(amp: bool, channels_last: bool) -> str:
    return f"{'bf16' if amp else 'fp32'}, {'channels-last' if channels_last else 'contiguous'}"


def part_speed(part: Part, ctx: Context) -> None:
    """scripts/benchmark.py's ``measure`` for the lower limit, gdas and softmax, in each
    precision and memory format, in this one process (rows in turn, memory freed between)."""
    s = ctx.sizes
    jobs = [(space, amp, cl, mode) for space in ("nasbench201", "darts")
            for amp, cl in SETTINGS for mode in SPEED_ROWS]
    for space, amp, cl, mode in jobs:
        if ctx.part_left() < 2.0:
            part.status = "stopped"
            part.notes.append(f"stopped at its time share: {len(part.rows)} of {len(jobs)} rows")
            break
        row = step_cost.measure(space, mode, s.batch, s.steps, s.warmup, ctx.device, amp, cl,
                            s.min_time, options=s.spaces[space], image_size=s.image_size)
        row.update(amp=amp, channels_last=cl, setting=setting_name(amp, cl))
        part.rows.append(row)
        free_memory()
    part.values["comparisons"] = speed_comparisons(part.rows)
    part.values["fastest_gdas"] = {
        space: min((c for c in part.values["comparisons"] if c["space"] == space),
                   key=lambda c: c["gdas_s"])["setting"]
        for space in {c["space"] for c in part.values["comparisons"]}}
    default = [c for c in part.values["comparisons"] if c["setting"] == setting_name(False, False)]
    part.summary = "; ".join(f"{c['space']}: gdas {c['gdas_vs_lower']:.2f}x lower limit, "
                             f"{c['softmax_vs_gdas']:.1f}x faster than softmax" for c in default
                             if c.get("gdas_vs_lower") and c.get("softmax_vs_gdas"))


def speed_comparisons(rows: list[dict]) -> list[dict]:
    """Per space and setting: the three step times and gdas's ratios to the other two."""
    out = []
    for space in ("nasbench201", "darts"):
        for amp, cl in SETTINGS:
            got = {r["mode"]: r for r in rows if r["space"] == space and r["amp"] == amp
                   and r["channels_last"] == cl}
            if "gdas" not in got:
                continue
            gdas = got["gdas"]["median_s"]
            c = {"space": space, "setting": setting_name(amp, cl),
                 **{f"{m}_s": got[m]["median_s"] for m in got},
                 "gdas_images_per_s": got["gdas"]["images_per_s"]}
            if "lower" in got:
                c["gdas_vs_lower"] = gdas / got["lower"]["median_s"]
            if "softmax" in got:
                c["softmax_vs_gdas"] = got["softmax"]["median_s"] / gdas
            out.append(c)
    return out


# -- part: memory -------------------------------------------------------------------------------
def saved_bytes(space: str, mode: str, ctx: Context) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of one training forward."""
    import torch
    import torch.nn.functional as F
    import nas
    s = ctx.sizes
    torch.manual_seed(0)
    model = nas.build_supernet(space, 10, mode, seed=0, options=s.spaces[space])
    model = model.to(ctx.device).train()
    x = torch.randn(s.batch, 3, s.image_size, s.image_size, device=ctx.device)
    y = torch.randint(0, 10, (s.batch,), device=ctx.device)
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return sum(kept.values())


def part_memory(part: Part, ctx: Context) -> None:
    """Peak memory of a gdas and a softmax search step (the speed part's fp32 contiguous rows,
    measured here when it has none), and the bytes kept for the backward of one forward."""
    s = ctx.sizes
    done = ctx.done.get("speed")
    speed = {(r["space"], r["mode"]): r for r in (done.rows if done else [])
             if not r["amp"] and not r["channels_last"]}
    for space in ("nasbench201", "darts"):
        row = {"space": space}
        for mode in ("gdas", "softmax"):
            row[f"{mode}_saved_mb"] = saved_bytes(space, mode, ctx) / 2 ** 20
            free_memory()
            if not ctx.dry:
                r = speed.get((space, mode)) or step_cost.measure(
                    space, mode, s.batch, 1, 1, ctx.device, False, False,
                    options=s.spaces[space], image_size=s.image_size)
                row[f"{mode}_peak_mb"] = r["peak_mb"]
                free_memory()
        row["saved_ratio"] = row["gdas_saved_mb"] / row["softmax_saved_mb"]
        if "gdas_peak_mb" in row:
            row["peak_ratio"] = row["gdas_peak_mb"] / row["softmax_peak_mb"]
        part.rows.append(row)
    key = "saved_ratio" if ctx.dry else "peak_ratio"
    part.values["measure"] = ("bytes kept for the backward (CPU: no peak memory counter)"
                              if ctx.dry else "torch.cuda.max_memory_allocated")
    part.summary = "; ".join(f"{r['space']}: gdas {r[key]:.3f}x softmax's" for r in part.rows)


# -- part: a full search epoch ------------------------------------------------------------------
def part_epoch(part: Part, ctx: Context) -> None:
    """``nas.search.search`` with configs/gdas_nb201_cifar10.yaml (C=16, 5 cells per stage,
    batch 64, 32x32) for ``epochs`` epochs on the training images repeated to twice
    ``epoch_images`` (split in halves, as the paper's 50,000); epoch times from metrics.jsonl."""
    import torch
    from nas.config import load_config
    from nas.search import search

    s = ctx.sizes
    root = write_cifar(ctx.work / "repeated", repeated(ctx.data_root(), 2 * s.epoch_images))
    run = ctx.work / "epoch_run"
    cfg = load_config(ROOT / "configs" / "gdas_nb201_cifar10.yaml",
                      [f"data.root={root}", f"device={ctx.device}", f"search.epochs={s.epochs}",
                       *s.epoch_overrides])
    part.values.update(images_per_split=s.epoch_images, batch=cfg.search.batch_size,
                       steps=s.epoch_images // cfg.search.batch_size, epochs_run=s.epochs,
                       supernet=dict(cfg.supernet), image_size=cfg.data.image_size,
                       data="the shared subset" if find_data() == ctx.data_root()
                       else f"{ctx.data_root()}")
    start = time.perf_counter()
    try:
        search(cfg, run, quiet=True)
    finally:  # stopped in its second epoch, the first is still on record
        if torch.cuda.is_available() and not ctx.dry:
            torch.cuda.synchronize()
        part.values["wall_s"] = time.perf_counter() - start
        epochs = [json.loads(line)["seconds"] for line in
                  (run / "metrics.jsonl").read_text().splitlines()] \
            if (run / "metrics.jsonl").is_file() else []
        project_epoch(part, epochs)


def project_epoch(part: Part, epochs: list[float]) -> None:
    """Images per second and the 250-epoch projection from the last epoch timed (the first
    includes the warm-up)."""
    v = part.values
    v["epoch_s"] = epochs
    if not epochs:
        part.summary = "no epoch finished"
        return
    last = epochs[-1]
    v["images_per_s"] = v["steps"] * 2 * v["batch"] / last
    v["projected_s"] = PAPER_EPOCHS * last
    v["published_s"] = PUBLISHED_SEARCH_S
    v["vs_published"] = v["projected_s"] / PUBLISHED_SEARCH_S
    if len(epochs) == 1:
        part.notes.append("projected from the first epoch alone, which includes the warm-up")
    part.summary = (f"{v['images_per_s']:,.0f} images/s; {PAPER_EPOCHS} epochs projected "
                    f"{v['projected_s']:,.0f} s = {v['vs_published']:.2f}x the published "
                    f"{PUBLISHED_SEARCH_S:,} s")


# -- part: against the reference code -----------------------------------------------------------
def part_reference(part: Part, ctx: Context) -> None:
    """scripts/benchmark.py's interleaved rounds (lower limit, gdas, reference in turn) on the
    GDAS configurations, this project's networks as ``nas search`` runs them on a GPU (fp32,
    contiguous), the reference code as written."""
    s = ctx.sizes
    for space in ("nasbench201", "darts"):
        if ctx.part_left() < 2.0:
            part.status = "stopped"
            break
        r = reference.interleaved(space, ctx.args.reference, s.batch, s.rounds, 3, ctx.device,
                              False, False, options=s.reference_spaces[space])
        part.rows.append(r)
        free_memory()
    part.values["reference"] = part.rows[0]["names"]["reference"] if part.rows else None
    if not ctx.args.reference:
        part.notes.append("no --reference given: the comparison is with gdas done as the "
                          "reference code does it, not with the reference itself")
    part.summary = "; ".join(f"{r['space']}: gdas {r['reference_vs_gdas']:.2f}x faster than "
                             f"the {'reference' if r['user_reference'] else 'emulated reference'}"
                             for r in part.rows)


# -- targets ------------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "not met")


def check_targets(parts: dict[str, Part]) -> list[dict[str, Any]]:
    """The issue's GPU targets, each met / not met / not measured, with what was measured."""
    out = []
    speed = [c for c in parts["speed"].values.get("comparisons", [])
             if c["setting"] == setting_name(False, False) and "gdas_vs_lower" in c]
    ratios = {c["space"]: c["gdas_vs_lower"] for c in speed}
    out.append({"target": "gdas step <= 1.10x its lower limit, both spaces (fp32, contiguous: "
                          "nas search's GPU default)",
                "measured": ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()) or "-",
                "verdict": verdict(all(v <= 1.10 for v in ratios.values()) if len(ratios) == 2
                                   else None)})
    ref = [r for r in parts["reference"].rows if r.get("user_reference")]
    emulated = [r for r in parts["reference"].rows if not r.get("user_reference")]
    out.append({"target": ">= 2x faster than the GDAS reference code, both spaces",
                "measured": ", ".join(f"{r['space']} {r['reference_vs_gdas']:.2f}x" for r in ref)
                or ("no --reference given (done as the reference does: " + ", ".join(
                    f"{r['space']} {r['reference_vs_gdas']:.2f}x" for r in emulated) + ")"
                    if emulated else "-"),
                "verdict": verdict(all(r["reference_vs_gdas"] >= 2.0 for r in ref)
                                   if len(ref) == 2 else None)})
    syncs = parts["syncs"].values.get("per_step")
    out.append({"target": "<= 1 host sync per gdas search step",
                "measured": f"{syncs:.2f} per step" if syncs is not None else "-",
                "verdict": verdict(None if syncs is None else syncs <= 1.0)})
    mem = [r for r in parts["memory"].rows if "peak_ratio" in r or "saved_ratio" in r]
    key = "peak_ratio" if mem and "peak_ratio" in mem[0] else "saved_ratio"
    out.append({"target": "gdas peak memory <= 1/4 of softmax's, both spaces",
                "measured": ", ".join(f"{r['space']} {r[key]:.3f}x" for r in mem) or "-",
                "verdict": verdict(all(r[key] <= 0.25 for r in mem) if len(mem) == 2 else None)})
    projected = parts["epoch"].values.get("projected_s")
    out.append({"target": f"full NAS-Bench-201 search ({PAPER_EPOCHS} epochs) projected under "
                          f"1/3 of the published {PUBLISHED_SEARCH_S:,} s "
                          f"({PUBLISHED_SEARCH_S / 3:,.0f} s)",
                "measured": f"{projected:,.0f} s" if projected is not None else "-",
                "verdict": verdict(None if projected is None else projected < PUBLISHED_SEARCH_S / 3)})
    return out


# -- the report ---------------------------------------------------------------------------------
def environment(ctx: Context) -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch
    env = {"device": ctx.device, "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "cpus": os.cpu_count(),
           "dry_run": ctx.dry, "budget_s": ctx.args.budget_s,
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "command": " ".join(["python", "scripts/gpu_check.py", *sys.argv[1:]])}
    if not ctx.dry:
        props = torch.cuda.get_device_properties(ctx.device)
        env.update(name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gb=round(props.total_memory / 2 ** 30, 1),
                   cudnn=torch.backends.cudnn.version(),
                   tf32_conv=torch.backends.cudnn.allow_tf32,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        env["name"] = f"CPU dry run ({torch.get_num_threads()} threads)"
    try:
        env["commit"] = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                                       capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        env["commit"] = ""
    return env


def slug(name: str) -> str:
    """``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def md_table(header: list[str], rows: list[list[Any]], align: str = "") -> list[str]:
    """A Markdown table (none without rows); ``align``: l or r per column."""
    if not rows:
        return []
    align = align or "l" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|",
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def section_tests(part: Part) -> list[str]:
    rows = [[r["test"], r["outcome"], fmt(r["seconds"], ".1f"),
             "; ".join([*(f"{k}: {v}" for k, v in r["recorded"].items()),
                        *([r["message"]] if r["message"] and r["outcome"] != "passed" else [])])
             .replace("|", "/") or ""] for r in part.rows]
    return md_table(["test", "outcome", "s", "recorded / message"], rows, "llrl")


def section_syncs(part: Part) -> list[str]:
    v = part.values
    if "steps" not in v:
        return []
    lines = [f"Counted with {v.get('method', '-')} over {v.get('steps', '-')} steps of the search "
             f"loop (after an epoch of warm-up; data on the device: {v.get('on_device', '-')}).", ""]
    return lines + md_table(["where (innermost frame of this repository -> innermost frame)",
                             "syncs", "per step"],
                            [[r["source"].replace("|", "/"), r["syncs"], f"{r['per_step']:.2f}"]
                             for r in part.rows], "lrr")


def section_speed(part: Part) -> list[str]:
    if not part.rows:
        return []
    rows = part.values.get("comparisons") or speed_comparisons(part.rows)
    gpu = part.rows[0]["device"].startswith("cuda")  # a CPU's peak is the process's, not the row's
    peak = {(r["space"], r["setting"], r["mode"]): r.get("peak_mb") for r in part.rows}
    lines = [f"scripts/benchmark.py's `measure` in one process, rows in turn; batch "
             f"{part.rows[0]['batch']}; step: the median of the timed steps (weight step + "
             "architecture step); lower limit: the sampled subnetwork's own two steps"
             + ("; peak: torch.cuda.max_memory_allocated over the row's steps." if gpu else "."),
             ""]
    header = ["space", "setting", "lower (s)", "gdas (s)", "softmax (s)", "gdas vs lower",
              "gdas faster than softmax", "gdas images/s"]
    table = [[c["space"], c["setting"], fmt(c.get("lower_s")), fmt(c.get("gdas_s")),
              fmt(c.get("softmax_s")), fmt(c.get("gdas_vs_lower"), ".2f") + "x",
              fmt(c.get("softmax_vs_gdas"), ".1f") + "x", fmt(c.get("gdas_images_per_s"), ",.0f")]
             + ([fmt(peak.get((c["space"], c["setting"], m)), ",.0f") for m in ("gdas", "softmax")]
                if gpu else []) for c in rows]
    if gpu:
        header += ["gdas peak MB", "softmax peak MB"]
    lines += md_table(header, table, "ll" + "r" * (len(header) - 2))
    best = part.values.get("fastest_gdas", {})
    if best:
        lines += ["", "Fastest gdas step per space: " + "; ".join(
            f"{space}: {setting}" for space, setting in best.items()) + "."]
    return lines


def section_memory(part: Part) -> list[str]:
    if not part.rows:
        return []
    peak = any("gdas_peak_mb" in r for r in part.rows)
    lines = [("No peak memory counter on a CPU (no peak columns); " if not peak else
              "Peak: torch.cuda.max_memory_allocated over a search step (fp32, contiguous); ")
             + "kept: the bytes of the distinct tensors autograd saves for the backward of one "
             "training forward.", ""]
    return lines + md_table(
        ["space", "gdas peak MB", "softmax peak MB", "gdas / softmax (peak)", "gdas kept MB",
         "softmax kept MB", "gdas / softmax (kept)"],
        [[r["space"], fmt(r.get("gdas_peak_mb"), ",.0f"), fmt(r.get("softmax_peak_mb"), ",.0f"),
          fmt(r.get("peak_ratio")), fmt(r["gdas_saved_mb"], ",.1f"),
          fmt(r["softmax_saved_mb"], ",.1f"), fmt(r["saved_ratio"])] for r in part.rows],
        "lrrrrrr")


def section_epoch(part: Part) -> list[str]:
    v = part.values
    if "steps" not in v:
        return []
    lines = [f"`nas.search.search` with configs/gdas_nb201_cifar10.yaml (supernet "
             f"{v.get('supernet')}, batch {v.get('batch')}, {v.get('image_size')}x"
             f"{v.get('image_size')}) on {v.get('data')} repeated to {v.get('images_per_split'):,} "
             f"images per split: {v.get('steps')} steps per epoch, each a weight and an "
             f"architecture step; {v.get('epochs_run')} epochs in {fmt(v.get('wall_s'), '.1f')} s "
             "(start-up included); epoch times from metrics.jsonl (steps and the epoch's "
             "derivation; not the TensorBoard pictures or the checkpoint).", ""]
    return lines + md_table(
        ["epoch times (s)", "images/s", f"{PAPER_EPOCHS} epochs projected (s)", "published (s)",
         "projected / published"],
        [[", ".join(f"{e:.1f}" for e in v.get("epoch_s", [])) or "-",
          fmt(v.get("images_per_s"), ",.0f"), fmt(v.get("projected_s"), ",.0f"),
          f"{PUBLISHED_SEARCH_S:,}", fmt(v.get("vs_published"), ".3f")]], "rrrrr")


def section_reference(part: Part) -> list[str]:
    return reference.interleaved_table(part.rows).rstrip("\n").splitlines() if part.rows else []


SECTIONS = {"tests": ("Tests marked `cuda`", section_tests),
            "syncs": ("Host syncs per gdas search step", section_syncs),
            "speed": ("Speed", section_speed),
            "memory": ("Memory: gdas against softmax", section_memory),
            "epoch": ("A full NAS-Bench-201 search epoch", section_epoch),
            "reference": ("gdas against the GDAS reference code", section_reference)}


def summary_lines(parts: dict[str, Part], targets: list[dict]) -> list[str]:
    lines = md_table(["part", "status", "s", "result"],
                     [[p.name, p.status, f"{p.seconds:.1f}", p.summary.replace("|", "/")]
                      for p in parts.values()], "llrl")
    return lines + [""] + md_table(["target", "measured", "verdict"],
                                   [[t["target"], t["measured"], t["verdict"]] for t in targets])


def markdown(env: dict, parts: dict[str, Part], targets: list[dict]) -> str:
    title = env["name"]
    lines = [f"# GPU check: {title}", ""]
    if env["dry_run"]:
        lines += ["**Dry run on the CPU at tiny sizes**: it tests `scripts/gpu_check.py`; its "
                  "numbers are no GPU measurement and its verdicts mean nothing.", ""]
    lines += [f"{env['date']}; torch {env['torch']} (CUDA {env['cuda']}), Python "
              f"{env['python']}, {env['cpus']} CPUs; commit {env.get('commit') or '-'}; "
              + (f"{env['name']}, compute capability {env['capability']}, {env['memory_gb']} GB, "
                 f"cuDNN {env['cudnn']}, TF32 convolutions {env['tf32_conv']}, TF32 matmul "
                 f"{env['tf32_matmul']}; " if not env["dry_run"] else "")
              + f"`{env['command']}`.", "", "## Summary", ""]
    lines += summary_lines(parts, targets)
    for name, part in parts.items():
        heading, section = SECTIONS[name]
        lines += ["", f"## {heading}", "", f"Status: {part.status}"
                  + (f"; {part.summary}" if part.summary else "") + ".", ""]
        if part.status != "skipped":
            lines += section(part)
        for note in part.notes:
            lines += ["", f"Note: {note}"]
        if "traceback" in part.values:
            lines += ["", "```", part.values["traceback"].rstrip(), "```"]
        if name == "tests" and part.status in ("fail", "stopped") and part.values.get("output_tail"):
            lines += ["", "The end of pytest's output:", "", "```",
                      part.values["output_tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, env: dict, parts: dict[str, Part], targets: list[dict]) -> Path:
    """Write ``gpu-<device>.md`` and ``.json``; returns the Markdown file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "gpu-" + (slug("cpu dry run") if env["dry_run"] else slug(env["name"]))
    data = {"environment": env, "targets": targets,
            "parts": {k: dataclasses.asdict(p) for k, p in parts.items()}}
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    md = out_dir / f"{stem}.md"
    md.write_text(markdown(env, parts, targets))
    return md


# -- the command --------------------------------------------------------------------------------
PART_FUNCTIONS: dict[str, Callable[[Part, Context], None]] = {
    "tests": part_tests, "syncs": part_syncs, "speed": part_speed, "memory": part_memory,
    "epoch": part_epoch, "reference": part_reference}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="gpu_check.py", description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="every part on the CPU at tiny sizes (tests this script)")
    parser.add_argument("--out", type=Path, default=ROOT / "scripts" / "results",
                        help="directory for gpu-<device>.md and .json (default: scripts/results)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="time for the whole check, in seconds (default 480: 8 minutes)")
    parser.add_argument("--reference", metavar="PATH",
                        help="an AutoDL-Projects checkout: compare gdas with its GDAS code")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="the directory holding cifar-10-batches-py/ (default: the shared "
                             "subset if found, else synthetic images)")
    parser.add_argument("--device", default="cuda", help="the CUDA device (default: cuda)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="run only these parts (the others are reported as not selected)")
    return parser.parse_args(argv)


def input_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, in one line; None when nothing."""
    import torch

    from nas.errors import InputError
    from nas.runtime import check_output
    if not (math.isfinite(args.budget_s) and args.budget_s > 0):
        return f"--budget-s must be positive and finite (seconds), got {args.budget_s:g}"
    try:
        check_output(args.out, "--out", directory=True)  # before the parts run, not after them
    except InputError as exc:
        return str(exc)
    if args.reference and not (Path(args.reference).expanduser() / reference.REFERENCE_FILE).is_file():
        return (f"--reference {args.reference}: no {reference.REFERENCE_FILE} there; give the root "
                "of an AutoDL-Projects checkout")
    if args.data_dir is not None and not (args.data_dir / "cifar-10-batches-py").is_dir():
        return f"--data-dir {args.data_dir}: no cifar-10-batches-py/ there"
    if not args.dry_run:
        if not torch.cuda.is_available():
            return "no CUDA device here; --dry-run runs every part on the CPU at tiny sizes"
        if not re.fullmatch(r"cuda(:\d+)?", args.device):
            return f"--device {args.device}: expected cuda or cuda:N"
        if args.device != "cuda" and int(args.device[5:]) >= torch.cuda.device_count():
            return f"--device {args.device}: {torch.cuda.device_count()} CUDA device(s) here"
    return None


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed in one line
        return exc.code if isinstance(exc.code, int) else 2
    problem = input_problem(args)
    if problem:
        print(f"gpu_check.py: error: {problem}", file=sys.stderr)
        return 2
    args.reference = str(Path(args.reference).expanduser()) if args.reference else None
    end = time.monotonic() + args.budget_s
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = Context(args, DRY if args.dry_run else GPU, "cpu" if args.dry_run else args.device,
                      Path(tmp), end)
        env = environment(ctx)
        parts = ctx.done
        for name in PARTS:
            if name not in args.parts:
                parts[name] = Part(name, "skipped", summary="not selected (--parts)")
                continue
            remaining = {k: SHARES[k] for k in PARTS if k in args.parts and k not in parts}
            parts[name] = run_part(name, PART_FUNCTIONS[name], ctx, remaining)
    targets = check_targets(parts)
    md = write_report(args.out, env, parts, targets)
    print("\n".join(summary_lines(parts, targets)))
    print(f"\nwrote {md} and {md.with_suffix('.json')}")
    return 1 if any(p.status in ("fail", "error") for p in parts.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
