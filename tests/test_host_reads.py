"""A search step waits for the host at most once: the weight step's and the architecture step's
samples are drawn together and their ops read on the host in one transfer (on a GPU each read
of a tensor's values is a device-to-host sync), and the samples are the ones the steps would
have drawn one by one."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest
import torch

import nas
import nas.search
import nas.steps
from nas.config import build_config
from nas.monitor import Monitor
from nas.search import build_search, run_epoch

PACKAGE = Path(nas.__file__).resolve().parent
# every Tensor method that hands a tensor's values to Python (scripts/gpu_check.py's list)
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "cpu", "numpy")


@contextlib.contextmanager
def host_reads() -> Iterator[list[str]]:
    """Every host read that code of the ``nas`` package makes meanwhile, as ``file:line``."""
    import sys
    found: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(real):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if Path(caller.co_filename).resolve().parent == PACKAGE:
                found.append(f"{Path(caller.co_filename).name}:{sys._getframe(1).f_lineno}")
            return real(self, *args, **kwargs)
        return read

    for name, real in saved.items():
        setattr(torch.Tensor, name, wrap(real))
    try:
        yield found
    finally:
        for name, real in saved.items():
            setattr(torch.Tensor, name, real)


def setup_of(cifar_root: Path, space: str, search: dict):
    supernet = {"C": 4, "cells_per_stage": 1} if space == "nasbench201" else {"C": 4, "cells": 3}
    cfg = build_config({"space": space, "seed": 3, "device": "cpu", "supernet": supernet,
                        "data": {"root": str(cifar_root), "image_size": 8, "pad": 1, "workers": 0},
                        "search": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 3,
                                   "log_every": 0, **search}})
    return build_search(cfg)


def reads_per_step(setup, tmp_path: Path) -> tuple[float, list[str]]:
    monitor = Monitor(tmp_path / "m", epochs=2, quiet=True, write=False, log_every=0)
    try:
        run_epoch(setup, 0, monitor, None)  # the first epoch copies the edge layouts over
        with host_reads() as found:
            run_epoch(setup, 1, monitor, None)
    finally:
        monitor.close()
    return len(found) / setup.steps, found


CASES = {
    "gdas": ("nasbench201", {}),
    "params-arch-first": ("nasbench201", {"weight_sampling": "params", "order": "arch_first"}),
    "st-gumbel_rao": ("nasbench201", {"mode": "st", "estimator": "gumbel_rao", "samples": 2}),
    "darts-edge-topk": ("darts", {"edge_topk": 2}),
}


@pytest.mark.parametrize("space, search", CASES.values(), ids=CASES.keys())
def test_a_search_step_reads_the_host_once(cifar_root, tmp_path, space, search):
    setup = setup_of(cifar_root, space, search)
    per_step, found = reads_per_step(setup, tmp_path)
    assert per_step == 1.0, found  # the one read: both samples' ops, in supernet.py
    assert all(site.startswith("supernet.py:") for site in found)


def test_drawn_one_by_one_a_step_reads_twice(cifar_root, tmp_path, monkeypatch):
    """The count itself: the steps' two samples read apart (as before) are two reads a step."""
    monkeypatch.setattr(nas.search, "draws_together", lambda *args: False)
    per_step, found = reads_per_step(setup_of(cifar_root, "nasbench201", {}), tmp_path)
    assert per_step == 2.0, found


@pytest.mark.parametrize("order", ["weights_first", "arch_first"])
def test_drawn_together_the_steps_run_the_same_samples_and_end_the_same(cifar_root, tmp_path,
                                                                         monkeypatch, order):
    """Two epochs with the samples drawn together and two drawn one by one: the same ops at
    every forward, the same logits and weights to the last bit."""
    search = {"weight_sampling": "params", "order": order}
    runs = []
    for together in (True, False):
        if not together:
            monkeypatch.setattr(nas.search, "draws_together", lambda *args: False)
        setup = setup_of(cifar_root, "nasbench201", search)
        seen: list[list[int]] = []
        real = nas.Supernet.sample

        def sample(self, real=real, seen=seen):
            out = real(self)
            if self.training and out:  # a forward's (drawing ahead returns nothing)
                seen.append(out["cell"].index)
            return out

        monkeypatch.setattr(nas.Supernet, "sample", sample)
        monitor = Monitor(tmp_path / f"m{together}", epochs=2, quiet=True, write=False, log_every=0)
        for epoch in range(2):
            run_epoch(setup, epoch, monitor, None)
        monitor.close()
        monkeypatch.setattr(nas.Supernet, "sample", real)
        runs.append((seen, setup.model.state_dict()))
    (seen_a, state_a), (seen_b, state_b) = runs
    assert len(seen_a) == len(seen_b) == 2 * 2 * 3  # two epochs of three steps of two forwards
    assert seen_a == seen_b
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) if isinstance(state_a[k], torch.Tensor)
               else state_a[k] == state_b[k] for k in state_a)


def test_a_sample_no_forward_took_is_dropped(cifar_root):
    """Drawn ahead but not taken (a supernet whose forward skipped sample()): forgotten at the
    step's end, so an eval forward never takes a training sample."""
    model = setup_of(cifar_root, "nasbench201", {}).model
    model.train()
    nas.steps.draw_step_samples(model, None, False, False, torch.device("cpu"))
    assert len(model._queued) == 2
    model.drop_drawn()
    model.eval()
    x = torch.zeros(2, 3, 8, 8)
    with torch.no_grad():
        model(x)
    assert model.last_index["cell"].tolist() == model.arch_logits["cell"].argmax(-1).tolist()
